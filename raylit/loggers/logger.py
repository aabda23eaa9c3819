"""Mirror of ``lightning.pytorch.loggers.logger`` (custom loggers import their base class from here)."""

from raylit.loggers.base import DummyExperiment, DummyLogger, Logger, rank_zero_experiment
from raylit.utilities.rank_zero import rank_zero_only

__all__ = ["DummyExperiment", "DummyLogger", "Logger", "rank_zero_experiment", "rank_zero_only"]
