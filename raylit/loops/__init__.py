"""``lightning.pytorch.loops``: Lightning's loop classes (``_FitLoop``, ``_TrainingEpochLoop``,
``_EvaluationLoop``, ...) are private objects reached through ``trainer.fit_loop`` and friends. raylit has one
plain loop instead: ``raylit.loop.Loop`` (fit, training epoch and batch, evaluation and prediction, in one file),
exported here as ``Loop``. It is internal too; user code should not need it."""

from typing import Any

__all__ = ["Loop", "_EvaluationLoop"]


def __getattr__(name: str) -> Any:
    if name == "Loop":  # resolved on use, so that this module stays importable while the loop changes shape
        from raylit import loop

        return loop.Loop
    if name == "_EvaluationLoop":
        from raylit.loops.evaluation_loop import _EvaluationLoop

        return _EvaluationLoop
    raise AttributeError(f"module 'raylit.loops' has no attribute {name!r}")
