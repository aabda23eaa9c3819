"""One Tune trial: build the module from the trial's config, run ``Trainer.fit``, report to Tune.

Runs inside the Tune trial actor (the thread Tune gives a function trainable)::

    split config -> trainer overrides ("trainer.<arg>") + the build function's config
    -> build(config) -> module (+ datamodule / loaders)
    -> trainer = the sweep's Trainer, cloned with the overrides, default_root_dir = the trial dir,
       plus a TuneReportCallback
    -> fit(ckpt_path = the Tune checkpoint to restore, if any: a PBT donor's, or this trial's own after a
       failure or Tuner.restore)
    -> after a scheduler's stop: the run has already ended normally (teardown ran); leave with SystemExit(0)

Single-worker Trainers train right here, in the trial actor (no Ray Train worker group: its start-up costs
~20 s per trial). Multi-worker Trainers go through raylit's Ray launcher from here; rank 0 forwards each report
to this process through a small bridge actor, and a pump thread hands it to Tune.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import sys
import threading
from typing import Any

from raylit.tune._report import CHECKPOINT_NAME, TuneReportCallback, local_checkpoint_copy
from raylit.tune._spec import (
    TRAINER_PREFIX,
    TRIAL_META,
    FirstReportCheck,
    TrialSpec,  # also at this path: raylit_tuner.pkl files saved before it moved to _spec pickle it here
    _jsonable,
    trial_trainer,
    tune_report,
)

RESTORE_LOG = "raylit_restores.jsonl"  # in the trial dir: one line per restore from a Tune checkpoint
# Trainer arguments a trial cannot change: they decide resources, where files go, or hold live objects
NOT_SEARCHABLE = (
    "accelerator",
    "strategy",
    "devices",
    "num_nodes",
    "scaling_config",
    "run_config",
    "callbacks",
    "logger",
    "default_root_dir",
    "plugins",
    "profiler",
)


# --------------------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------------------
def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(build config, Trainer overrides)``: keys ``"trainer.<arg>"`` (or a ``"trainer"`` sub-dict) are
    Trainer arguments; everything else goes to the build function."""
    user, overrides = {}, {}
    for k, v in config.items():
        if k.startswith(TRAINER_PREFIX):
            overrides[k[len(TRAINER_PREFIX) :]] = v
        elif k == "trainer" and isinstance(v, dict):
            overrides.update(v)
        else:
            user[k] = v
    return user, overrides


class TrackedConfig(dict):
    """The config handed to the build function; remembers which keys were read.

    Iterating (``**config``, ``.items()``, ``dict(config)``, ``save_hyperparameters(config)``) counts as reading
    every key. Pickles and deep-copies as a plain ``dict``, so checkpoints and hparams never contain this
    class."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(data)
        self.read: set[Any] = set()

    def _all(self) -> None:
        self.read.update(dict.keys(self))

    def __getitem__(self, key: Any) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: Any) -> bool:
        self.read.add(key)
        return super().__contains__(key)

    def pop(self, key: Any, *default: Any) -> Any:
        self.read.add(key)
        return super().pop(key, *default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self.read.add(key)
        return super().setdefault(key, default)

    def __iter__(self):
        self._all()
        return super().__iter__()

    def keys(self):
        self._all()
        return super().keys()

    def items(self):
        self._all()
        return super().items()

    def values(self):
        self._all()
        return super().values()

    def copy(self) -> dict[str, Any]:
        self._all()
        return dict(super().items())

    def __reduce__(self) -> Any:
        self._all()
        return dict, (dict(super().items()),)

    def __deepcopy__(self, memo: dict) -> dict[str, Any]:
        self._all()
        return copy.deepcopy(dict(super().items()), memo)

    def unused(self) -> list[str]:
        return sorted(str(k) for k in dict.keys(self) if k not in self.read)


def fit_arguments(built: Any) -> tuple[Any, dict[str, Any]]:
    """What ``build(config)`` returned -> ``(model, fit kwargs)``.

    Accepted: a module; ``(module, datamodule)``; ``(module, train_dataloaders)``;
    ``(module, train_dataloaders, val_dataloaders)``; or a dict with ``model`` and any of ``datamodule``,
    ``train_dataloaders``, ``val_dataloaders``."""
    from raylit.datamodule import LightningDataModule
    from raylit.module import LightningModule

    if isinstance(built, dict):
        extra = set(built) - {"model", "datamodule", "train_dataloaders", "val_dataloaders"}
        if "model" not in built or extra:
            raise TypeError(
                f"build(config) returned a dict with keys {sorted(built)}: expected 'model' plus any of "
                "'datamodule', 'train_dataloaders', 'val_dataloaders'"
            )
        kwargs = dict(built)
        model = kwargs.pop("model")
    elif isinstance(built, (tuple, list)) and 1 <= len(built) <= 3:
        model, rest = built[0], list(built[1:])
        if len(rest) == 1 and isinstance(rest[0], LightningDataModule):
            kwargs = {"datamodule": rest[0]}
        else:
            kwargs = dict(zip(("train_dataloaders", "val_dataloaders"), rest))
    else:
        model, kwargs = built, {}
    if not isinstance(model, LightningModule):
        raise TypeError(
            f"build(config) must return a raylit.LightningModule (optionally with a datamodule or "
            f"dataloaders), got {type(model).__qualname__}"
        )
    return model, kwargs


# --------------------------------------------------------------------------------------------------------------
# the trial
# --------------------------------------------------------------------------------------------------------------
# Trials whose thread is still running in this process; the trainable's cleanup waits for them so that a
# stopped trial's teardown (loggers, teardown hooks) finishes before Tune ends the actor.
_RUNNING: list[threading.Event] = []


def wait_for_running_trials(timeout_s: float) -> None:
    for done in list(_RUNNING):
        done.wait(timeout_s)
        if done in _RUNNING and done.is_set():
            _RUNNING.remove(done)


def run_trial(spec: TrialSpec, config: dict[str, Any]) -> None:
    """The Tune function trainable."""
    done = threading.Event()
    _RUNNING.append(done)
    try:
        _run(spec, config)
    finally:
        done.set()


def _run(spec: TrialSpec, config: dict[str, Any]) -> None:
    from ray import tune

    # Tune's storage layer logs one INFO line per checkpoint ("Checkpoint successfully created at ...")
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    if spec.seed is not None:
        from raylit.utilities.seed import seed_everything

        seed_everything(int(spec.seed), workers=spec.seed_workers == "1", verbose=False)
    user_config, overrides = split_config(config)
    tracked = TrackedConfig(user_config)
    model, fit_kwargs = fit_arguments(spec.build(tracked))
    # nobody kept the config: whatever was not read during build is never read
    escaped = sys.getrefcount(tracked) > 2
    check = FirstReportCheck(spec.metrics, tracked if spec.check_unused_keys else None)
    if not escaped:
        check.check_unused()
    multi_worker = spec.trainer.config.uses_ray
    if multi_worker and escaped:
        check.tracked = None  # reads happen on the workers' copies; we cannot see them

    restore_dir = ckpt_file = None
    refresh = False
    tune_ckpt = tune.get_checkpoint()
    trial_dir = trial_directory()
    if tune_ckpt is not None:
        # Ray Train workers read the file themselves: keep it in the trial dir (storage every node sees, as Tune
        # requires on a multi-node cluster) rather than in this node's /tmp
        copy_to = trial_dir if multi_worker else None
        restore_dir, ckpt_file, refresh = _fetch_checkpoint(tune_ckpt, config, trial_dir, copy_to)
    try:
        if multi_worker:
            from raylit.tune._workers import fit_multi_worker

            stopped = fit_multi_worker(spec, overrides, model, fit_kwargs, ckpt_file, refresh, check, config, trial_dir)
        else:
            sink = InProcessSink(check, config)
            callback = TuneReportCallback(sink, spec.checkpoint_frequency, refresh_hparams=refresh)
            trainer = trial_trainer(spec.trainer, overrides, trial_dir, callback)
            trainer.fit(model, ckpt_path=ckpt_file, **fit_kwargs)
            stopped = callback.stopped
    finally:
        if restore_dir is not None:
            shutil.rmtree(restore_dir, ignore_errors=True)
    if stopped:
        # Tune is waiting for this thread to end (the trial was stopped or paused); returning normally would
        # make Tune's wrapper report once more and block forever.
        raise SystemExit(0)


def _fetch_checkpoint(
    tune_ckpt: Any, config: dict[str, Any], trial_dir: str, copy_to: str | None
) -> tuple[str, str, bool]:
    """Copy the checkpoint to restore into a local temp dir; also say whether it was written under another
    config (a PBT exploit), in which case the new hyperparameters must replace the restored ones. Each restore
    is recorded in the trial dir (``raylit_restores.jsonl``: which checkpoint, from which trial, which config)."""
    with tune_ckpt.as_directory() as d:
        tmp, dst = local_checkpoint_copy(os.path.join(d, CHECKPOINT_NAME), copy_to)
        meta_file = os.path.join(d, TRIAL_META)
        meta: dict[str, Any] = {}
        if os.path.exists(meta_file):
            with open(meta_file) as f:
                meta = json.load(f)
    saved = meta.get("config")
    changed = saved is not None and saved != _jsonable(config)
    record = {
        "checkpoint": tune_ckpt.path,
        "from_trial": meta.get("trial_id"),
        "from_config": saved,
        "config": _jsonable(config),
        "hyperparameters_changed": changed,
    }
    try:
        with open(os.path.join(trial_dir, RESTORE_LOG), "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError:
        pass
    return tmp, dst, changed


def trial_directory() -> str:
    """Where the trial's logs go: the trial's directory in the sweep's storage when that is a local path
    (files land there directly), else the trial's working directory (synced with ``SyncConfig``)."""
    from ray import tune

    try:
        from pyarrow.fs import LocalFileSystem

        storage = tune.get_context().get_storage()
        if isinstance(storage.storage_filesystem, LocalFileSystem):
            os.makedirs(storage.trial_fs_path, exist_ok=True)
            return storage.trial_fs_path
    except Exception:  # noqa: BLE001 - a DeveloperAPI; fall back to the working dir Tune chdir'd us into
        pass
    return os.getcwd()


# --------------------------------------------------------------------------------------------------------------
# single worker: the run happens in this thread
# --------------------------------------------------------------------------------------------------------------
class InProcessSink:
    def __init__(self, check: FirstReportCheck, config: dict[str, Any]) -> None:
        self.check, self.config = check, config

    def report(self, trainer: Any, metrics: dict[str, float], ckpt_file: str | None) -> bool:
        return tune_report(self.check, self.config, metrics, ckpt_file)
