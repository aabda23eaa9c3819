"""Loggers (mirror of ``lightning.pytorch.loggers``).

Importing this package imports no logging backend: tensorboardX (and mlflow/wandb, when available) are
imported the first time a logger needs them.
"""

from raylit.loggers.base import DummyLogger, Logger
from raylit.loggers.csv_logs import CSVLogger
from raylit.loggers.mlflow import MLFlowLogger
from raylit.loggers.tensorboard import TensorBoardLogger
from raylit.loggers.wandb import WandbLogger

__all__ = ["CSVLogger", "DummyLogger", "Logger", "MLFlowLogger", "TensorBoardLogger", "WandbLogger"]
