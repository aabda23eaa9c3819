"""Lightning-format checkpoints: build the dict, restore from it, and build modules from it.

The layout is Lightning 2.6's (epoch, global_step, pytorch-lightning_version, state_dict, loops, callbacks,
optimizer_states, lr_schedulers, MixedPrecision, hparams, datamodule state, user keys), so Lightning can
load and resume raylit checkpoints and vice versa. raylit adds one key, ``raylit``, with what exact
resumption needs beyond Lightning's counters (RNG streams, the position inside the epoch); Lightning
ignores it.
"""

import io
import os
import pickle
import warnings
from typing import Any

import torch

from raylit import fs
from raylit.state import raylit_section
from raylit.utilities.exceptions import MisconfigurationException

LIGHTNING_VERSION_TAG = "2.6.0"


class CheckpointLoadError(ValueError):
    """The file is missing, truncated, not a checkpoint, or needs ``weights_only=False``."""


def load_checkpoint_file(path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` unless the caller explicitly passes ``False`` (checkpoints are
    untrusted input: a pickle can run arbitrary code). Errors name the file and what went wrong."""
    path = str(path)
    if not fs.exists(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    weights_only = True if weights_only is None else weights_only
    data = fs.read_bytes(path)
    if map_location is None:
        map_location = _cpu_if_unavailable
    try:
        ckpt = torch.load(io.BytesIO(data), map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as e:
        if weights_only and "Weights only load failed" in str(e):
            raise CheckpointLoadError(
                f"{path} holds Python objects that a safe load (weights_only=True) refuses: {str(e).splitlines()[0]}"
                " If you trust this file, load it with `weights_only=False`.") from e
        raise CheckpointLoadError(f"{path} is not a valid checkpoint (unpickling failed: {e})") from e
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        # a text file or another foreign format fails deep inside the unpickler with any of these
        raise CheckpointLoadError(f"{path} is not a valid checkpoint or is truncated/corrupt: "
                                  f"{type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointLoadError(f"{path} is not a Lightning/raylit checkpoint (no 'state_dict' key)")
    return ckpt


def _cpu_if_unavailable(storage: Any, location: str) -> Any:
    if location.startswith("cuda") and not torch.cuda.is_available():
        return storage.cpu()
    return storage


# --- dump --------------------------------------------------------------------------------------------
def _progress(n: int, started: bool = True, processed: bool = True) -> dict[str, int]:
    d = {"ready": n}
    if started:
        d["started"] = n
    if processed:
        d["processed"] = n
    d["completed"] = n
    return d


def loops_state(run: Any) -> dict[str, Any]:
    """Lightning's ``loops`` entry, filled from raylit's counters so Lightning resumes at the same point."""
    st = run.state
    epoch_done = st.epoch_finished
    batch = {"total": _progress(st.total_batches), "current": _progress(st.epoch_batches),
             "is_last_batch": epoch_done}
    started = st.current_epoch + int(st.in_epoch)
    epoch = {"ready": started, "started": started, "processed": st.current_epoch + int(epoch_done),
             "completed": st.current_epoch}
    epoch_progress = {"total": dict(epoch), "current": dict(epoch)}
    auto = run.module.automatic_optimization
    steps = st.global_step
    opt_prog = {"optimizer": {"step": {"total": _progress(steps if auto else 0, False, False),
                                       "current": _progress(steps if auto else 0, False, False)},
                              "zero_grad": {"total": _progress(steps if auto else 0, True, False),
                                            "current": _progress(steps if auto else 0, True, False)}}}
    manual = {"total": _progress(0 if auto else steps, False, False),
              "current": _progress(0 if auto else steps, False, False)}
    empty_eval = {"total": _progress(0), "current": _progress(0), "is_last_batch": False}
    return {
        "fit_loop": {
            "state_dict": {},
            "epoch_loop.state_dict": {"_batches_that_stepped": st.batches_that_stepped},
            "epoch_loop.batch_progress": batch,
            "epoch_loop.scheduler_progress": {"total": _progress(st.scheduler_steps, False, False),
                                              "current": _progress(st.scheduler_steps, False, False)},
            "epoch_loop.automatic_optimization.state_dict": {},
            "epoch_loop.automatic_optimization.optim_progress": opt_prog,
            "epoch_loop.manual_optimization.state_dict": {},
            "epoch_loop.manual_optimization.optim_step_progress": manual,
            "epoch_loop.val_loop.state_dict": {},
            "epoch_loop.val_loop.batch_progress": dict(empty_eval),
            "epoch_progress": epoch_progress,
        },
        "validate_loop": {"state_dict": {}, "batch_progress": dict(empty_eval)},
        "test_loop": {"state_dict": {}, "batch_progress": dict(empty_eval)},
        "predict_loop": {"state_dict": {}, "batch_progress": {"total": _progress(0), "current": _progress(0)}},
    }


def dump_checkpoint(run: Any, weights_only: bool = False) -> dict[str, Any]:
    """The checkpoint dict of a run (call on every rank: gathering RNG streams and sharded state is collective)."""
    module, runtime = run.module, run.runtime
    st = run.state
    ckpt: dict[str, Any] = {
        "epoch": st.current_epoch,
        "global_step": st.global_step,
        "pytorch-lightning_version": LIGHTNING_VERSION_TAG,
        "state_dict": runtime.model_state_dict(module),
        "loops": loops_state(run),
    }
    if not weights_only:
        ckpt["callbacks"] = {}
        for cb in run.trainer.callbacks:
            state = cb.state_dict()
            if state:
                ckpt["callbacks"][cb.state_key] = state
        ckpt["optimizer_states"] = [runtime.optimizer_state_dict(module, opt) for opt in run.optimizers]
        ckpt["lr_schedulers"] = [cfg.scheduler.state_dict() for cfg in run.lr_scheduler_configs]
        if run.precision.scaler is not None:
            ckpt["MixedPrecision"] = run.precision.state_dict()
        raylit_section(ckpt, create=True).update(run.resume_state())
    _put_hparams(ckpt, module, module.CHECKPOINT_HYPER_PARAMS_NAME, module.CHECKPOINT_HYPER_PARAMS_KEY,
                 module.CHECKPOINT_HYPER_PARAMS_TYPE)
    dm = run.datamodule
    if dm is not None:
        _put_hparams(ckpt, dm, dm.CHECKPOINT_HYPER_PARAMS_NAME, dm.CHECKPOINT_HYPER_PARAMS_KEY,
                     dm.CHECKPOINT_HYPER_PARAMS_TYPE)
        dm_state = run.hooks.datamodule_hook("state_dict") or {}  # a hook call: profiled as in Lightning
        if dm_state:
            ckpt[type(dm).__qualname__] = dm_state
    if not weights_only:
        run.hooks.callbacks_hook("on_save_checkpoint", ckpt)
    run.hooks.module_hook("on_save_checkpoint", ckpt)
    return ckpt


def _put_hparams(ckpt: dict, obj: Any, name_key: str, key: str, type_key: str) -> None:
    hp = getattr(obj, "_hparams", None)
    if not hp:
        return
    if getattr(obj, "_hparams_name", None):
        ckpt[name_key] = obj._hparams_name
    if type(hp).__name__ in ("DictConfig", "ListConfig"):
        ckpt[type_key] = type(hp)
        ckpt[key] = hp
    else:
        ckpt[key] = dict(hp)


# --- restore -----------------------------------------------------------------------------------------
def restore_model_and_callbacks(run: Any, ckpt: dict[str, Any]) -> None:
    module = run.module
    hooks = run.hooks
    hooks.module_hook("on_load_checkpoint", ckpt)
    module.load_state_dict(ckpt["state_dict"], strict=module.strict_loading)
    dm = run.datamodule
    if dm is not None and type(dm).__qualname__ in ckpt:
        hooks.datamodule_hook("load_state_dict", ckpt[type(dm).__qualname__])
    hooks.callbacks_hook("on_load_checkpoint", ckpt)
    states = ckpt.get("callbacks") or {}
    for cb in run.trainer.callbacks:
        state = states.get(cb.state_key, states.get(type(cb).__qualname__) if cb.state_key != type(cb).__qualname__
                           else None)
        if state is not None:
            cb.load_state_dict(state)


def restore_training_state(run: Any, ckpt: dict[str, Any]) -> None:
    """Optimizers, schedulers, the gradient scaler and loop counters (fit only)."""
    if "optimizer_states" not in ckpt:
        raise KeyError("Trying to restore optimizer state but checkpoint contains only the model. This is "
                       "probably due to `ModelCheckpoint.save_weights_only` being set to `True`.")
    runtime = run.runtime
    for opt, state in zip(run.optimizers, ckpt["optimizer_states"]):
        runtime.load_optimizer_state_dict(run.module, opt, state)
    for cfg, state in zip(run.lr_scheduler_configs, ckpt.get("lr_schedulers", [])):
        cfg.scheduler.load_state_dict(state)
    scaler_state = ckpt.get("MixedPrecision", ckpt.get("native_amp_scaling_state"))
    if scaler_state:
        run.precision.load_state_dict(scaler_state)
    run.state.restore(ckpt, runtime.global_rank, runtime.world_size)
    if runtime.elastic is not None:  # the position in the epoch, in this world size's micro-batches
        runtime.elastic.rescale_position(run.state, raylit_section(ckpt) or {})


def resolve_ckpt_path(trainer: Any, ckpt_path: Any, fn: str, model_given: bool) -> str | None:
    """Lightning's meaning of ``ckpt_path``: a path, "last", "best", or None."""
    if ckpt_path is None:
        if fn in ("validate", "test", "predict") and not model_given:
            cb = trainer.checkpoint_callback
            if cb is not None and getattr(cb, "best_model_path", ""):
                warnings.warn(f"`.{fn}(ckpt_path=None)` was called without a model. The best model of the "
                              f"previous `trainer.fit` call will be used: {cb.best_model_path}", UserWarning,
                              stacklevel=4)
                return cb.best_model_path
            raise MisconfigurationException(
                f"`.{fn}()` was called without a model and no checkpoint to use: pass `model=` or `ckpt_path=`")
        return None
    if ckpt_path == "best":
        if trainer.fast_dev_run:
            raise ValueError(f'You cannot execute `.{fn}(ckpt_path="best")` with `fast_dev_run=True`. Please pass '
                             "an exact checkpoint path to `.{fn}(ckpt_path=...)`")
        cb = trainer.checkpoint_callback
        if cb is None:
            raise ValueError(f'`.{fn}(ckpt_path="best")` is set but `ModelCheckpoint` is not configured.')
        if not getattr(cb, "best_model_path", ""):
            raise ValueError(f'`.{fn}(ckpt_path="best")` is set but `ModelCheckpoint` has not saved a best '
                             "checkpoint yet.")
        return cb.best_model_path
    if ckpt_path == "last":
        # every callback that writes checkpoints says which of its files count as "last" (ModelCheckpoint's
        # last.ckpt, OnExceptionCheckpoint's file, ResumeCheckpoint's newest); the newest of them wins
        candidates = [path for cb in trainer.callbacks if hasattr(cb, "last_checkpoint_candidates")
                      for path in cb.last_checkpoint_candidates(trainer)]
        candidates = [c for c in candidates if fs.is_remote(c) or os.path.exists(c)]
        if not candidates:
            warnings.warn(f'.{fn}(ckpt_path="last") is set, but there is no last checkpoint available. No '
                          "checkpoint will be loaded.", UserWarning, stacklevel=4)
            return None
        return max(candidates, key=lambda p: os.path.getmtime(p) if not fs.is_remote(p) else 0)
    if not isinstance(ckpt_path, (str, os.PathLike)):
        raise ValueError(f"ckpt_path={ckpt_path!r} is invalid: pass a file path, 'last', 'best' or None")
    return str(ckpt_path)

