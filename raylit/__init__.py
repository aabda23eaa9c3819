"""raylit: the PyTorch Lightning programming model, executed by Ray.

Change ``import lightning.pytorch as pl`` (or ``pytorch_lightning``) to ``import raylit as pl``. Importing
raylit does not import Ray; Ray is loaded only when a run uses more than one worker.
"""

from raylit import callbacks, loggers, utilities
from raylit.callbacks.base import Callback
from raylit.datamodule import LightningDataModule
from raylit.module import LightningModule
from raylit.trainer import Trainer
from raylit.utilities.seed import seed_everything

__version__ = "0.1.0"

__all__ = ["Callback", "LightningDataModule", "LightningModule", "Trainer", "callbacks", "loggers",
           "seed_everything", "utilities"]


def __getattr__(name: str) -> object:
    # pl.core, pl.loops, pl.tuner as in Lightning, imported on first use (``import raylit`` stays cheap)
    if name in ("core", "loops", "profilers", "tuner"):
        import importlib

        return importlib.import_module(f"raylit.{name}")
    raise AttributeError(f"module 'raylit' has no attribute {name!r}")
