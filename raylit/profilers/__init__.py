"""Profilers, importable as in ``lightning.pytorch.profilers``: ``Trainer(profiler="simple" | "advanced" |
"pytorch" | Profiler())``. Hook calls are recorded under Lightning's action names
(``[LightningModule]MyModel.on_train_start``, ``[Callback]{state_key}.on_train_batch_end``,
``[LightningDataModule]MyData.setup``, ``[Strategy]SingleDeviceStrategy.training_step``, ``run_training_epoch``,
``run_training_batch``)."""

from typing import Any

from raylit.profilers.advanced import AdvancedProfiler
from raylit.profilers.base import PassThroughProfiler
from raylit.profilers.profiler import Profiler
from raylit.profilers.pytorch import PyTorchProfiler
from raylit.profilers.simple import SimpleProfiler

__all__ = ["AdvancedProfiler", "PassThroughProfiler", "Profiler", "PyTorchProfiler", "SimpleProfiler"]

_BY_NAME = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}


def select_profiler(profiler: Any) -> Profiler:
    """What ``Trainer(profiler=...)`` becomes: a name, a ``Profiler``, or None (a ``PassThroughProfiler``)."""
    if isinstance(profiler, str):
        name = profiler.lower()
        if name == "xla":
            from raylit.utilities.exceptions import MisconfigurationException

            raise MisconfigurationException("`Trainer(profiler='xla')`: raylit does not support XLA/TPU. Use "
                                            "'simple', 'advanced' or 'pytorch'.")
        if name not in _BY_NAME:
            from raylit.utilities.exceptions import MisconfigurationException

            raise MisconfigurationException(
                "When passing string value for the `profiler` parameter of `Trainer`, it can only be one of "
                f"{[*_BY_NAME, 'xla']}")
        return _BY_NAME[name]()
    if not profiler:
        return PassThroughProfiler()
    if not isinstance(profiler, Profiler):
        raise TypeError(f"`Trainer(profiler={profiler!r})`: expected one of 'simple', 'advanced', 'pytorch', a "
                        "`raylit.profilers.Profiler` instance or None")
    return profiler
