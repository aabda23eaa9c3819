"""What the learning-rate and batch-size searches share.

Both run the user's own model through ordinary ``fit``/``validate``/... calls of a *search Trainer*: a copy of
the user's Trainer (same constructor arguments: devices, precision, accumulation, clipping, ...) with the search's
limits, no logger, no checkpointing, no progress bar and only the search's callback. The user's Trainer is never
run, so its counters, callbacks and loggers are untouched; the model's weights (values, dtype and device, with
parameter identity kept, so optimizers that hold them stay valid), train/eval modes and Trainer reference, and
the datamodule's, are put back afterwards. Everything happens in this process: several Ray workers cannot
share the search's state, so a multi-worker Trainer is refused with a hint.
"""

from __future__ import annotations

import gc
import itertools
from typing import Any

import torch

from raylit.utilities.exceptions import MisconfigurationException

_METHODS = ("fit", "validate", "test", "predict")


def _ray_workers(trainer: Any) -> tuple[int, bool]:
    """How many Ray workers the Trainer's runs use, and whether a ScalingConfig was given (read from the
    Trainer's settings, ``trainer.config`` or the older attributes; else devices x nodes)."""
    config = getattr(trainer, "config", None)
    workers = getattr(config, "num_workers", None) or getattr(trainer, "_num_workers", None) or \
        trainer.num_devices * trainer.num_nodes
    scaling = getattr(config, "scaling_config", None) or getattr(trainer, "_scaling_config", None)
    return int(workers), scaling is not None


def check_in_process(trainer: Any, what: str) -> None:
    """Refuse a Trainer whose runs go to Ray workers (several devices or nodes, or a ``scaling_config``)."""
    workers, scaling = _ray_workers(trainer)
    if workers > 1 or scaling:
        raise MisconfigurationException(
            f"{what} runs in-process, on one device, but this Trainer runs on {workers} Ray worker(s) "
            f"(devices={trainer.num_devices}, num_nodes={trainer.num_nodes}{', scaling_config' if scaling else ''}). "
            "Tune with a one-device Trainer first, e.g. `Tuner(Trainer(devices=1, ...)).lr_find(model)`, and "
            "pass what it found (model.lr, model.batch_size, ...) to the multi-worker Trainer. On a multi-GPU "
            "machine the one-device search finds the per-device batch size.")


def check_method(method: str, train_dataloaders: Any, val_dataloaders: Any, dataloaders: Any) -> None:
    if method not in _METHODS:
        raise ValueError(f"method {method!r} is invalid. Should be one of {_METHODS}.")
    if method == "fit" and dataloaders is not None:
        raise MisconfigurationException(
            f"In tuner with method={method!r}, `dataloaders` argument should be None, please consider setting "
            "`train_dataloaders` and `val_dataloaders` instead.")
    if method != "fit" and (train_dataloaders is not None or val_dataloaders is not None):
        raise MisconfigurationException(
            f"In tuner with `method`={method!r}, `train_dataloaders` and `val_dataloaders` arguments should be "
            "None, please consider setting `dataloaders` instead.")


def search_trainer(trainer: Any, callback: Any, **limits: Any) -> Any:
    """A copy of ``trainer`` for one search run: the same configuration, quiet, with ``callback`` only."""
    overrides = dict(callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, profiler=None, num_sanity_val_steps=0, max_time=None,
                     max_epochs=trainer.max_epochs, default_root_dir=trainer.default_root_dir)
    overrides.update(limits)
    return trainer._clone(**overrides)


def run(search: Any, method: str, model: Any, data: dict[str, Any]) -> None:
    """``search.<method>(model, ...)`` with the user's data arguments."""
    dm = data.get("datamodule")
    if method == "fit":
        search.fit(model, train_dataloaders=data.get("train_dataloaders"),
                   val_dataloaders=data.get("val_dataloaders"), datamodule=dm)
    elif method == "predict":
        search.predict(model, dataloaders=data.get("dataloaders"), datamodule=dm, return_predictions=False)
    else:
        getattr(search, method)(model, dataloaders=data.get("dataloaders"), datamodule=dm, verbose=False)


class KeepModel:
    """``with KeepModel(model, datamodule):`` puts back, on exit, the model's parameter and buffer values (dtype and
    device included; the tensors stay the same objects), its modules' train/eval modes and the model's and
    datamodule's Trainer references."""

    def __init__(self, model: Any, datamodule: Any = None, device: Any = None) -> None:
        self.model, self.datamodule = model, datamodule
        self.device = device

    def __enter__(self) -> KeepModel:
        model = self.model
        self._tensors = {name: t.detach().clone() for name, t in _named_tensors(model)}
        self._modes = {m: m.training for m in model.modules()}
        self._trainer = model.__dict__.get("_trainer")
        self._dm_trainer = getattr(self.datamodule, "trainer", None)
        return self

    def __exit__(self, *exc: Any) -> None:
        model = self.model
        with torch.no_grad():
            for name, t in _named_tensors(model):
                saved = self._tensors.get(name)
                if saved is not None:
                    t.data = saved
                elif self.device is not None:  # made during the search (configure_model/setup): follow the model
                    t.data = t.data.to(self.device)
        for m, training in self._modes.items():
            m.training = training
        model.trainer = self._trainer
        if self.datamodule is not None:
            self.datamodule.trainer = self._dm_trainer
        self._tensors = {}


def _named_tensors(model: Any) -> Any:
    return itertools.chain(model.named_parameters(), model.named_buffers())


# --- attributes Lightning looks up in the model, its hparams, the datamodule and its hparams ----------------
def attr_holders(model: Any, datamodule: Any, name: str) -> list[Any]:
    holders: list[Any] = []
    for obj in (model, datamodule):
        if obj is None:
            continue
        if hasattr(obj, name):
            holders.append(obj)
        hparams = getattr(obj, "hparams", None)
        if hparams is not None and name in hparams:
            holders.append(hparams)
    return holders


def has_attr(model: Any, datamodule: Any, name: str) -> bool:
    return bool(attr_holders(model, datamodule, name))


def get_attr(model: Any, datamodule: Any, name: str) -> Any:
    holders = attr_holders(model, datamodule, name)
    if not holders:
        raise AttributeError(f"{name} is neither stored in the model namespace nor the `hparams` namespace/dict, nor "
                             "the datamodule.")
    holder = holders[-1]  # the last one, as Lightning reads it
    return holder[name] if isinstance(holder, dict) else getattr(holder, name)


def set_attr(model: Any, datamodule: Any, name: str, value: Any) -> None:
    holders = attr_holders(model, datamodule, name)
    if not holders:
        raise AttributeError(f"{name} is neither stored in the model namespace nor the `hparams` namespace/dict, nor "
                             "the datamodule.")
    for holder in holders:
        if isinstance(holder, dict):
            holder[name] = value
        else:
            setattr(holder, name, value)


# --- out of memory ---------------------------------------------------------------------------------------------
def is_oom_error(exc: BaseException) -> bool:
    """CUDA (or other accelerator) out of memory, cuDNN's out-of-memory in disguise, or the CPU allocator failing:
    a ``RuntimeError`` whose message says so (``torch.OutOfMemoryError`` is one)."""
    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    if not isinstance(exc, RuntimeError) or len(exc.args) != 1 or not isinstance(exc.args[0], str):
        return False
    msg = exc.args[0]
    return "out of memory" in msg or "DefaultCPUAllocator: can't allocate memory" in msg or \
        "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED." in msg


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        try:
            torch.cuda.empty_cache()
        except RuntimeError as err:  # emptying the cache can itself run out of memory
            if not is_oom_error(err):
                raise
