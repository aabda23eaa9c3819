"""The Logger interface the Trainer drives (the same one Lightning's loggers implement).

The Trainer calls, on global rank 0 only:
- ``log_hyperparams(params)`` once at run start, then ``save()``;
- ``log_metrics(metrics: dict[str, float], step: int)`` at each flush, then ``save()``;
- ``after_save_checkpoint(checkpoint_callback)`` after every checkpoint a ModelCheckpoint writes;
- ``finalize("success" | "failed")`` at the end of a run.
"""

from abc import ABC, abstractmethod
from argparse import Namespace
from typing import Any

from raylit.utilities.rank_zero import rank_zero_only


class Logger(ABC):
    @property
    @abstractmethod
    def name(self) -> str | None: ...

    @property
    @abstractmethod
    def version(self) -> int | str | None: ...

    @property
    def root_dir(self) -> str | None:
        return None

    @property
    def log_dir(self) -> str | None:
        return None

    @property
    def save_dir(self) -> str | None:
        return None

    @property
    def group_separator(self) -> str:
        return "/"

    @abstractmethod
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    @abstractmethod
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None: ...

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        pass

    def save(self) -> None:
        pass

    def finalize(self, status: str) -> None:
        self.save()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        pass


class DummyLogger(Logger):
    """Accepts every call and records nothing (used by fast_dev_run)."""

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def experiment(self) -> "DummyLogger":
        return self

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


__all__ = ["DummyLogger", "Logger", "rank_zero_only"]
