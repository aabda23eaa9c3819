"""Timer: measure time spent per stage and stop training when a time budget is spent."""

import re
import time
from datetime import timedelta
from enum import Enum
from typing import Any

from raylit.callbacks.base import Callback
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.rank_zero import rank_zero_info


class Interval(str, Enum):
    step = "step"
    epoch = "epoch"


class _Stage(str, Enum):
    """Lightning's RunningStage values, which Timer accepts as ``stage`` and uses as state keys."""

    TRAINING = "train"
    SANITY_CHECKING = "sanity_check"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"


def parse_duration(duration: str | timedelta | dict[str, int] | None) -> timedelta | None:
    """``"DD:HH:MM:SS"``, a timedelta, or timedelta keyword arguments as a dict."""
    if isinstance(duration, str):
        match = re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", duration.strip())
        if not match:
            raise MisconfigurationException(
                f"`Timer(duration={duration!r})` is not a valid duration. Expected a string in the format DD:HH:MM:SS."
            )
        days, hours, minutes, seconds = (int(g) for g in match.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if isinstance(duration, dict):
        return timedelta(**duration)
    return duration


class Timer(Callback):
    """Track the time spent in training, validation and testing, and set ``trainer.should_stop`` once training
    has used ``duration`` (checked after every batch with ``interval="step"``, every epoch with ``"epoch"``, and
    at fit start). The elapsed training time is checkpointed, so a resumed run keeps counting from it.

    Args:
        duration: ``"DD:HH:MM:SS"``, a :class:`datetime.timedelta`, or a dict of timedelta keyword arguments.
            None only measures.
        interval: ``"step"`` or ``"epoch"``.
        verbose: log when the limit is reached.
    """

    def __init__(
        self,
        duration: str | timedelta | dict[str, int] | None = None,
        interval: str = Interval.step,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        duration = parse_duration(duration)
        if interval not in {i.value for i in Interval}:
            raise MisconfigurationException(
                f"Unsupported parameter value `Timer(interval={interval})`. Possible choices are: step, epoch"
            )
        self._duration = duration.total_seconds() if duration is not None else None
        self._interval = Interval(interval)
        self._verbose = verbose
        self._start_time: dict[_Stage, float | None] = dict.fromkeys(_Stage)
        self._end_time: dict[_Stage, float | None] = dict.fromkeys(_Stage)
        self._offset = 0.0  # training time spent before a resume

    def start_time(self, stage: str = "train") -> float | None:
        """When ``stage`` started (``time.monotonic()`` seconds), or None."""
        return self._start_time[_Stage(stage)]

    def end_time(self, stage: str = "train") -> float | None:
        return self._end_time[_Stage(stage)]

    def time_elapsed(self, stage: str = "train") -> float:
        """Seconds spent in ``stage`` ("train", "validate", "test"...), so far if it is still running."""
        stage = _Stage(stage)
        start, end = self._start_time[stage], self._end_time[stage]
        offset = self._offset if stage is _Stage.TRAINING else 0
        if start is None:
            return offset
        return (time.monotonic() if end is None else end) - start + offset

    def time_remaining(self, stage: str = "train") -> float | None:
        return None if self._duration is None else self._duration - self.time_elapsed(stage)

    def _start(self, stage: _Stage) -> None:
        self._start_time[stage] = time.monotonic()

    def _end(self, stage: _Stage) -> None:
        self._end_time[stage] = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        self._start(_Stage.TRAINING)

    def on_train_end(self, trainer, pl_module) -> None:
        self._end(_Stage.TRAINING)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._start(_Stage.VALIDATING)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._end(_Stage.VALIDATING)

    def on_test_start(self, trainer, pl_module) -> None:
        self._start(_Stage.TESTING)

    def on_test_end(self, trainer, pl_module) -> None:
        self._end(_Stage.TESTING)

    def on_fit_start(self, trainer, *args: Any, **kwargs: Any) -> None:
        if self._duration is not None:
            self._check_time_remaining(trainer)

    def on_train_batch_end(self, trainer, *args: Any, **kwargs: Any) -> None:
        if self._interval is Interval.step and self._duration is not None:
            self._check_time_remaining(trainer)

    def on_train_epoch_end(self, trainer, *args: Any, **kwargs: Any) -> None:
        if self._interval is Interval.epoch and self._duration is not None:
            self._check_time_remaining(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {stage.value: self.time_elapsed(stage) for stage in _Stage}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._offset = state_dict.get("time_elapsed", {}).get(_Stage.TRAINING.value, 0)

    def _check_time_remaining(self, trainer) -> None:
        # Rank 0's clock decides, so all ranks stop at the same batch.
        should_stop = trainer.strategy.broadcast(self.time_elapsed() >= self._duration)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop and self._verbose:
            elapsed = timedelta(seconds=int(self.time_elapsed()))
            rank_zero_info(f"Time limit reached. Elapsed time is {elapsed}. Signaling Trainer to stop.")
