"""ProgressBar: the base of progress-bar callbacks (what to count and which metrics to show)."""

import time
from typing import Any

from raylit.callbacks.base import Callback
from raylit.utilities.rank_zero import rank_zero_warn

_clock = time.monotonic  # (tests replace it)


class ProgressBar(Callback):
    """Base class for progress bars. Subclasses draw; this class answers "how many batches" and "which
    metrics", like Lightning's, so that a custom bar written for Lightning works unchanged.

    The Trainer uses at most one progress bar. Only global rank 0 draws: :meth:`setup` disables the bar on
    every other rank.

    During an epoch the built-in bars take the metrics (:meth:`get_metrics`) at most every
    ``METRICS_REFRESH_S`` seconds, and at the epoch's last batch, while the batch count redraws at the bar's own
    rate: reading ``trainer.progress_bar_metrics`` turns the logged tensors into numbers, which on a GPU waits for
    the device to finish the queued work.
    """

    METRICS_REFRESH_S = 0.5

    def __init__(self) -> None:
        self._trainer: Any = None
        self._current_eval_dataloader_idx: int | None = None
        self._metrics_taken_at = -float("inf")

    def _metrics_due(self, last: bool = False) -> bool:
        """Whether to take the metrics now (see the class docstring); ``last``: the epoch's last batch."""
        now = _clock()
        if last or now - getattr(self, "_metrics_taken_at", -float("inf")) >= self.METRICS_REFRESH_S:
            self._metrics_taken_at = now
            return True
        return False

    @property
    def trainer(self):
        if self._trainer is None:
            raise TypeError(f"The `{self.__class__.__name__}._trainer` reference has not been set yet.")
        return self._trainer

    @property
    def sanity_check_description(self) -> str:
        return "Sanity Checking"

    @property
    def train_description(self) -> str:
        return "Training"

    @property
    def validation_description(self) -> str:
        return "Validation"

    @property
    def test_description(self) -> str:
        return "Testing"

    @property
    def predict_description(self) -> str:
        return "Predicting"

    @property
    def total_train_batches(self) -> int | float:
        """Batches in this training epoch (``inf`` for an endless loader); with ``max_epochs=-1`` and
        ``max_steps`` set, no more than the steps left."""
        trainer = self.trainer
        if trainer.max_epochs == -1 and trainer.max_steps is not None and trainer.max_steps > 0:
            return min(trainer.num_training_batches, trainer.max_steps - trainer.global_step)
        return trainer.num_training_batches

    @property
    def total_val_batches_current_dataloader(self) -> int | float:
        trainer = self.trainer
        batches = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        return self._for_current_dataloader(batches)

    @property
    def total_test_batches_current_dataloader(self) -> int | float:
        return self._for_current_dataloader(self.trainer.num_test_batches)

    @property
    def total_predict_batches_current_dataloader(self) -> int | float:
        return self._for_current_dataloader(self.trainer.num_predict_batches)

    def _for_current_dataloader(self, batches: Any) -> int | float:
        if isinstance(batches, (list, tuple)):
            assert self._current_eval_dataloader_idx is not None
            return batches[self._current_eval_dataloader_idx]
        return batches

    @property
    def total_val_batches(self) -> int | float:
        """Validation batches over all val loaders in this epoch; 0 when this epoch does not validate."""
        trainer = self.trainer
        every = trainer.check_val_every_n_epoch
        if every is not None and (trainer.current_epoch + 1) % every != 0:
            return 0
        batches = trainer.num_val_batches
        return sum(batches) if isinstance(batches, (list, tuple)) else batches

    def has_dataloader_changed(self, dataloader_idx: int) -> bool:
        previous, self._current_eval_dataloader_idx = self._current_eval_dataloader_idx, dataloader_idx
        return previous != dataloader_idx

    def reset_dataloader_idx_tracker(self) -> None:
        self._current_eval_dataloader_idx = None

    def disable(self) -> None:
        """Stop drawing (the Trainer calls it on ranks other than 0)."""
        raise NotImplementedError

    def enable(self) -> None:
        raise NotImplementedError

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print without breaking the bar."""
        print(*args, **kwargs)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer
        if not trainer.is_global_zero:
            self.disable()

    def get_metrics(self, trainer, pl_module) -> dict[str, int | str | float | dict[str, float]]:
        """What the bar shows: ``v_num`` (the logger version) and every ``self.log(..., prog_bar=True)`` value.
        Override to change it, e.g. ``items = super().get_metrics(trainer, pl_module); items.pop("v_num", None)``."""
        standard = get_standard_metrics(trainer)
        logged = trainer.progress_bar_metrics
        duplicates = [k for k in standard if k in logged]
        if duplicates:
            rank_zero_warn(
                f"The progress bar already tracks a metric with the name(s) '{', '.join(duplicates)}' and"
                f" `self.log('{duplicates[0]}', ..., prog_bar=True)` will overwrite this value. "
                " If this is undesired, change the name or override `get_metrics()` in the progress bar callback.",
            )
        return {**standard, **logged}


def get_standard_metrics(trainer) -> dict[str, int | str]:
    """``{"v_num": version}`` when there is a logger: its version, or the loggers' distinct versions joined with
    "_"; a string version is cut to its last 4 characters."""
    loggers = trainer.loggers
    if not loggers:
        return {}
    if len(loggers) == 1:
        version = loggers[0].version
    else:
        version = "_".join(dict.fromkeys(str(logger.version) for logger in loggers))
    if version in ("", None):
        return {}
    return {"v_num": version[-4:] if isinstance(version, str) else version}
