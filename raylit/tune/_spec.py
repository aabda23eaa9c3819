"""What a trial runs with and reports through, shared by the in-process trial (``_trial``) and the multi-worker one
(``_workers``): the ``TrialSpec``, the trial's Trainer, the first-report checks and ``tune_report``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from raylit.utilities.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from raylit.tune._trial import TrackedConfig

TRAINER_PREFIX = "trainer."
SPEC_FILE = "raylit_tuner.pkl"  # next to Tune's experiment state: what Tuner.restore(path) needs
TRIAL_META = "raylit_trial.json"  # written next to checkpoint.ckpt: the config (and trial) that produced it
# filled in by Tune itself; never "missing" from what the module logs
TUNE_AUTOFILLED = ("training_iteration", "time_total_s", "time_this_iter_s", "timestamp", "epoch", "step")


class TuneConfigError(MisconfigurationException):
    """The sweep is set up wrong (a metric the module never logs, a config key nothing reads, ...)."""


@dataclass
class TrialSpec:
    """Everything a trial needs; pickled once with the trainable (and saved next to the experiment so that
    ``Tuner.restore(path)`` can rebuild the trainable)."""

    build: Callable[[dict[str, Any]], Any]
    trainer: Any  # the sweep's raylit.Trainer; every trial clones it
    checkpoint_frequency: int = 1
    metrics: tuple[str, ...] = ()  # what the schedulers / search algorithm read
    check_unused_keys: bool = True
    seed: str | None = None
    seed_workers: str | None = None
    teardown_timeout_s: float = 120.0
    extra: dict[str, Any] = field(default_factory=dict)


def trial_trainer(trainer: Any, overrides: dict[str, Any], trial_dir: str, callback: Any, **more: Any) -> Any:
    """The sweep's Trainer for one trial: its constructor arguments, the trial's overrides, the trial dir, and
    the report callback. Console output that would interleave across trials is off unless asked for; the
    default ModelCheckpoint gives way to Tune's checkpoints unless the user configured checkpointing."""
    from raylit.callbacks.checkpoint import Checkpoint

    init = trainer.config.kwargs
    user_callbacks = init.get("callbacks")
    if user_callbacks is None:
        user_callbacks = []
    elif not isinstance(user_callbacks, (list, tuple)):
        user_callbacks = [user_callbacks]
    user_callbacks = copy.deepcopy(list(user_callbacks))  # trials sharing an actor must not share state
    kw: dict[str, Any] = {"callbacks": [*user_callbacks, callback], "default_root_dir": trial_dir}
    if init.get("logger") not in (None, True, False):
        kw["logger"] = copy.deepcopy(init["logger"])
    for flag in ("enable_progress_bar", "enable_model_summary"):
        if init.get(flag) is None:
            kw[flag] = False
    if init.get("enable_checkpointing") is None and not any(isinstance(cb, Checkpoint) for cb in user_callbacks):
        kw["enable_checkpointing"] = False
    return trainer._clone(**{**kw, **overrides, **more})


class FirstReportCheck:
    def __init__(self, metrics: tuple[str, ...], tracked: TrackedConfig | None) -> None:
        self.metrics, self.tracked = metrics, tracked
        self.done = False

    def check_unused(self) -> None:
        if self.tracked is None:
            return
        tracked, self.tracked = self.tracked, None
        unused = tracked.unused()
        if unused:
            read = sorted(str(k) for k in dict.keys(tracked) if k in tracked.read)
            raise TuneConfigError(
                f"param_space key(s) {unused} are never read by the build function or the module, so searching "
                f"them changes nothing (keys read: {read}). Use them in build(config), remove them from "
                f"param_space, or, for Trainer arguments, prefix them with {TRAINER_PREFIX!r} "
                "(e.g. 'trainer.precision')."
            )

    def __call__(self, metrics: dict[str, float]) -> None:
        if self.done:
            return
        self.done = True
        missing = [m for m in self.metrics if m not in metrics and m not in TUNE_AUTOFILLED]
        if missing:
            logged = sorted(k for k in metrics if k not in ("epoch", "step"))
            raise TuneConfigError(
                f"Tune is set to act on the metric {missing[0]!r}, but the module never logged it (checked at the "
                f"first report, after the first validation). Logged metrics: {logged}. Log it with "
                f"`self.log({missing[0]!r}, value)` (e.g. in validation_step), or set TuneConfig(metric=...) to one "
                "of the logged names."
            )
        self.check_unused()


def tune_report(
    check: FirstReportCheck, config: dict[str, Any], metrics: dict[str, float], ckpt_file: str | None
) -> bool:
    """``ray.tune.report`` with a checkpoint dir holding ``checkpoint.ckpt`` and the config that made it;
    False when Tune ended the trial (it raises SystemExit(0) in the reporting thread for that)."""
    from ray import tune

    check(metrics)
    checkpoint = None
    if ckpt_file is not None:
        d = os.path.dirname(ckpt_file)
        with open(os.path.join(d, TRIAL_META), "w") as f:
            json.dump({"config": _jsonable(config), "trial_id": tune.get_context().get_trial_id()}, f)
        checkpoint = tune.Checkpoint.from_directory(d)
    try:
        tune.report(metrics, checkpoint=checkpoint)
    except SystemExit:
        return False
    return True


def _jsonable(config: dict[str, Any]) -> Any:
    return json.loads(json.dumps(config, sort_keys=True, default=repr))


# --------------------------------------------------------------------------------------------------------------
# the spec saved with the experiment
# --------------------------------------------------------------------------------------------------------------
def save_spec(experiment_path: str, spec: TrialSpec, filesystem: Any = None) -> None:
    from ray import cloudpickle

    try:
        data = cloudpickle.dumps(spec)
    except Exception as err:
        culprit = "build function" if _unpicklable(spec.build) else "Trainer" if _unpicklable(spec.trainer) else "sweep"
        raise TypeError(
            f"raylit sends the {culprit} to every trial by pickling it, and pickling failed: {err}. Create "
            "unpicklable objects (open files, locks, clients) inside build(config) or the module's setup()."
        ) from err
    fs, path = _fs(experiment_path, filesystem)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{SPEC_FILE}") as f:
        f.write(data)


def _unpicklable(obj: Any) -> bool:
    from ray import cloudpickle

    try:
        cloudpickle.dumps(obj)
        return False
    except Exception:  # noqa: BLE001
        return True


def load_spec(experiment_path: str, filesystem: Any = None) -> TrialSpec | None:
    from ray import cloudpickle

    fs, path = _fs(experiment_path, filesystem)
    from pyarrow.fs import FileType

    if fs.get_file_info(f"{path}/{SPEC_FILE}").type != FileType.File:
        return None
    with fs.open_input_stream(f"{path}/{SPEC_FILE}") as f:
        return cloudpickle.loads(f.read())


def _fs(path: str, filesystem: Any) -> tuple[Any, str]:
    from pyarrow import fs as pafs

    if filesystem is not None:
        return filesystem, path
    if "://" in str(path):
        return pafs.FileSystem.from_uri(str(path))
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
