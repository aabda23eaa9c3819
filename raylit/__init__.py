"""raylit: the PyTorch Lightning programming model, executed by Ray.

Change ``import lightning.pytorch as pl`` (or ``pytorch_lightning``) to ``import raylit as pl``. Importing
raylit does not import Ray; Ray is loaded only when a run uses more than one worker.

The names below are loaded on first use, so that importing a submodule alone stays cheap: Ray workers import
``raylit.launch.session`` as their ``worker_process_setup_hook`` in *every* worker process of a job (Train's
controller, its helper actors), and an eager ``raylit/__init__`` made each of them import torch (~1-1.5 s of CPU
apiece, on the critical path of a run's start).
"""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["Callback", "LightningDataModule", "LightningModule", "Trainer", "callbacks", "loggers",
           "seed_everything", "utilities"]

_NAMES = {
    "Callback": "raylit.callbacks.base",
    "LightningDataModule": "raylit.datamodule",
    "LightningModule": "raylit.module",
    "Trainer": "raylit.trainer",
    "seed_everything": "raylit.utilities.seed",
}

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from raylit import callbacks, loggers, utilities
    from raylit.callbacks.base import Callback
    from raylit.datamodule import LightningDataModule
    from raylit.module import LightningModule
    from raylit.trainer import Trainer
    from raylit.utilities.seed import seed_everything


def __getattr__(name: str) -> object:
    # pl.Trainer, pl.callbacks, ... and Lightning's pl.core, pl.loops, pl.tuner, imported on first use
    import importlib.util

    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"raylit.{name}") is not None:
        value = importlib.import_module(f"raylit.{name}")
    else:
        raise AttributeError(f"module 'raylit' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | {"core", "loops", "profilers", "tuner"})
