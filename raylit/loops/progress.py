"""``trainer.fit_loop`` / ``validate_loop`` / ``test_loop`` / ``predict_loop``: read-only progress views.

Lightning's loops are objects with progress trackers that user callbacks read (``trainer.fit_loop.epoch_loop.
batch_progress.total.completed``, ``fit_loop.total_batch_idx``, ``fit_loop.max_epochs`` ...). raylit's loop is
plain functions over one ``TrainState``; these views compute Lightning's counters from it (and from the run's
evaluation counters), so they stay true in-process and, after a Ray run, on the driver. Limits and step counts
(``max_epochs``, ``epoch_loop.max_steps``, ...) are the Trainer's settings: assigning them changes the setting.
Nothing here imports the rest of raylit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["EvalCounter", "Tracker", "Progress", "LoopViews"]


class EvalCounter:
    """Batches an evaluation loop completed: over the trainer's lifetime (``total``) and in its last run."""

    __slots__ = ("total", "current")

    def __init__(self) -> None:
        self.total = 0
        self.current = 0

    def begin(self) -> "EvalCounter":
        """A new evaluation run: ``current`` counts from zero again."""
        self.current = 0
        return self

    def add(self) -> None:
        self.total += 1
        self.current += 1


@dataclass(frozen=True)
class Tracker:
    """Lightning's ``_ProcessedTracker``: how many items were ready, started, processed, completed."""

    ready: int = 0
    started: int = 0
    processed: int = 0
    completed: int = 0


@dataclass(frozen=True)
class Progress:
    """Lightning's ``_Progress``/``_BatchProgress``: ``total`` over the run, ``current`` since the last reset."""

    total: Tracker = Tracker()
    current: Tracker = Tracker()
    is_last_batch: bool = False


def _done(n: int) -> Tracker:
    return Tracker(n, n, n, n)


def _state(trainer: Any) -> Any:
    run = trainer._run
    return None if run is None else run.state


def _counter(trainer: Any, fn: str) -> EvalCounter | None:
    run = trainer._run
    return None if run is None else run.eval_batches.get(fn)


class _Limit:
    """A loop attribute that is a Trainer setting (``max_steps``, ``max_epochs``, ...), read and assignable."""

    def __init__(self, setting: str) -> None:
        self.setting = setting

    def __get__(self, view: Any, owner: type) -> Any:
        return self if view is None else getattr(view._trainer, self.setting)

    def __set__(self, view: Any, value: Any) -> None:
        setattr(view._trainer, self.setting, value)


class _EvalLoopView:
    def __init__(self, trainer: Any, fn: str) -> None:
        self._trainer, self._fn = trainer, fn

    def setup_data(self) -> None:
        """Load this stage's dataloaders into the attached run (``trainer.strategy.connect(model)`` first)."""
        self._trainer._setup_data(self._fn)

    @property
    def batch_progress(self) -> Progress:
        c = _counter(self._trainer, self._fn)
        return Progress() if c is None else Progress(_done(c.total), _done(c.current))

    @property
    def verbose(self) -> bool:
        run = self._trainer._run
        return bool(run is not None and getattr(run.spec, "verbose", False))


class _TrainingEpochLoopView:
    max_steps = _Limit("max_steps")
    min_steps = _Limit("min_steps")

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer
        self.val_loop = _EvalLoopView(trainer, "fit")

    def _counts(self, n: int) -> Tracker:
        """Lightning marks a batch ready before ``on_train_batch_start`` and completed after
        ``on_train_batch_end``; raylit counts it once the step is done (``batch_pending`` until its end phase)."""
        st, run = _state(self._trainer), self._trainer._run
        in_batch = bool(run is not None and run.metrics.in_batch and run.status.stage == "train")
        if st is None:
            return Tracker()
        if in_batch and st.batch_pending is None:  # before or inside the step
            return Tracker(n + 1, n + 1, n, n)
        if in_batch:  # on_train_batch_end
            return Tracker(n, n, n, n - 1)
        return _done(n)

    @property
    def batch_progress(self) -> Progress:
        st = _state(self._trainer)
        if st is None:
            return Progress()
        run = self._trainer._run
        # as in Lightning, the epoch's count reads the last epoch's until the next epoch's first batch starts
        current = st.epoch_batches if st.epoch_batches or run.metrics.in_batch else run.last_epoch_batches
        return Progress(self._counts(st.total_batches), self._counts(current), st.is_last_batch)

    @property
    def total_batch_idx(self) -> int:
        return self.batch_progress.total.ready - 1

    @property
    def batch_idx(self) -> int:
        return self.batch_progress.current.ready - 1

    @property
    def global_step(self) -> int:
        return self._trainer.global_step

    @property
    def _batches_that_stepped(self) -> int:
        st = _state(self._trainer)
        return 0 if st is None else st.batches_that_stepped


class _FitLoopView:
    max_epochs = _Limit("max_epochs")
    min_epochs = _Limit("min_epochs")
    max_steps = _Limit("max_steps")
    min_steps = _Limit("min_steps")

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer
        self.epoch_loop = _TrainingEpochLoopView(trainer)

    def setup_data(self) -> None:
        """Load the training (and validation) dataloaders into the attached run."""
        self._trainer._setup_data("fit")

    @property
    def epoch_progress(self) -> Progress:
        st = _state(self._trainer)
        if st is None:
            return Progress()
        n, started = st.current_epoch, int(st.in_epoch)
        t = Tracker(n + started, n + started, n + int(st.in_epoch and st.epoch_finished), n)
        return Progress(t, t)

    @property
    def total_batch_idx(self) -> int:
        return self.epoch_loop.total_batch_idx

    @property
    def batch_idx(self) -> int:
        return self.epoch_loop.batch_idx


class LoopViews:
    """Installed on the Trainer as ``fit_loop``/``validate_loop``/``test_loop``/``predict_loop``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, trainer: Any, owner: type) -> Any:
        if trainer is None:
            return self
        views = trainer.__dict__.get("_loop_views")
        if views is None:
            views = trainer.__dict__["_loop_views"] = {
                "fit_loop": _FitLoopView(trainer), "validate_loop": _EvalLoopView(trainer, "validate"),
                "test_loop": _EvalLoopView(trainer, "test"), "predict_loop": _EvalLoopView(trainer, "predict")}
        return views[self.name]
