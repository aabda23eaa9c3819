"""``lightning.pytorch.core.mixins``: ``HyperparametersMixin`` (``save_hyperparameters``, ``hparams``; defined in
``raylit/hparams.py``)."""

from raylit.hparams import HyperparametersMixin

__all__ = ["HyperparametersMixin"]
