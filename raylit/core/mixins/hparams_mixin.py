"""``lightning.pytorch.core.mixins.hparams_mixin``: ``HyperparametersMixin`` (defined in ``raylit/hparams.py``)."""

from raylit.hparams import HyperparametersMixin

__all__ = ["HyperparametersMixin"]
