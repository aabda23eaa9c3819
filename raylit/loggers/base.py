"""The Logger interface the Trainer drives (the same one Lightning's loggers implement).

The Trainer calls, on global rank 0 only:
- ``log_hyperparams(params)`` once at run start, then ``save()``;
- ``log_metrics(metrics: dict[str, float], step: int)`` at each flush, then ``save()``;
- ``after_save_checkpoint(checkpoint_callback)`` after every checkpoint a ModelCheckpoint writes;
- ``finalize("success" | "failed")`` at the end of a run.
"""

import functools
import os
from abc import ABC, abstractmethod
from argparse import Namespace
from collections.abc import Callable
from typing import Any

from raylit.loggers._utils import _next_version
from raylit.utilities.rank_zero import rank_zero_only


class _DummyExperiment:
    """What ``logger.experiment`` returns on ranks other than 0: every attribute is a no-op method."""

    def nop(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # keep pickle/copy protocols honest
        return self.nop

    def __getitem__(self, idx: Any) -> "_DummyExperiment":
        return self

    def __setitem__(self, *args: Any, **kwargs: Any) -> None:
        pass


DummyExperiment = _DummyExperiment


def rank_zero_experiment(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Decorate a logger's ``experiment`` getter: the real object on global rank 0, a no-op elsewhere."""

    @functools.wraps(fn)
    def experiment(self: Any) -> Any:
        if rank_zero_only.rank > 0:
            return _DummyExperiment()
        return fn(self)

    return experiment


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

    def log_graph(self, model: Any, input_array: Any = None) -> None:  # noqa: B027 - optional, no-op by default
        pass

    def save(self) -> None:  # noqa: B027 - optional, no-op by default
        pass

    def finalize(self, status: str) -> None:
        self.save()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:  # noqa: B027 - optional, no-op by default
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

    def __getitem__(self, idx: int) -> "DummyLogger":
        return self

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # keep pickle/copy protocols honest
        return lambda *args, **kwargs: None


__all__ = ["DummyExperiment", "DummyLogger", "Logger", "rank_zero_experiment", "rank_zero_only"]


class _VersionedLogger(Logger):
    """Loggers that write to ``save_dir/name/version_N`` (CSV, TensorBoard): the shared naming rules.
    Subclasses set ``_name``, ``_save_dir`` and ``_version`` (None: decided on first access)."""

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int | str:
        """The version given, or (decided on first access) one more than the largest ``version_N`` on disk."""
        if self._version is None:
            self._version = _next_version(self.root_dir)
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        """``save_dir/name``: the folder holding the version folders (checkpoints go to ``log_dir``)."""
        return os.path.join(self.save_dir, self.name)
