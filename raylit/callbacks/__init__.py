"""Built-in callbacks, importable as in ``lightning.pytorch.callbacks``."""

from raylit.callbacks.base import Callback
from raylit.callbacks.batch_size_finder import BatchSizeFinder
from raylit.callbacks.checkpoint import Checkpoint
from raylit.callbacks.early_stopping import EarlyStopping, EarlyStoppingReason
from raylit.callbacks.gradient_accumulation_scheduler import GradientAccumulationScheduler
from raylit.callbacks.lambda_function import LambdaCallback
from raylit.callbacks.lr_finder import LearningRateFinder
from raylit.callbacks.lr_monitor import LearningRateMonitor
from raylit.callbacks.model_checkpoint import ModelCheckpoint
from raylit.callbacks.model_summary import ModelSummary, RichModelSummary
from raylit.callbacks.on_exception_checkpoint import OnExceptionCheckpoint
from raylit.callbacks.prediction_writer import BasePredictionWriter
from raylit.callbacks.progress import ProgressBar, RichProgressBar, TQDMProgressBar
from raylit.callbacks.timer import Timer

__all__ = [
    "BasePredictionWriter",
    "BatchSizeFinder",
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "EarlyStoppingReason",
    "GradientAccumulationScheduler",
    "LambdaCallback",
    "LearningRateFinder",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ModelSummary",
    "OnExceptionCheckpoint",
    "ProgressBar",
    "RichModelSummary",
    "RichProgressBar",
    "TQDMProgressBar",
    "Timer",
]
