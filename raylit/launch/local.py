"""In-process execution: a ``RunSpec`` becomes a ``Run`` on this process's device (no Ray involved)."""

from typing import Any

from raylit.launch.spec import RunSpec
from raylit.run import Run
from raylit.runtime import Runtime


def build_run(spec: RunSpec, trainer: Any) -> Run:
    """The ``Run`` of ``spec`` in this process; ``Trainer`` calls ``.execute()`` on it. A validate/test/predict
    after a fit continues from the previous run (its counters and what it knew about the training data)."""
    return Run(spec, Runtime(spec.config.device), trainer, previous=trainer._run)
