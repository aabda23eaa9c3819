"""``lightning.pytorch.core.module``: the ``LightningModule`` (defined in ``raylit/module.py``)."""

from raylit.module import LightningModule

__all__ = ["LightningModule"]
