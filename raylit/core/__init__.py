"""``lightning.pytorch.core`` paths: ``raylit.core.module``, ``.datamodule``, ``.hooks``, ``.optimizer``, ``.saving``,
``.mixins``. They re-export raylit's own objects (the same classes as ``raylit.LightningModule`` etc.)."""

from raylit.core.datamodule import LightningDataModule
from raylit.core.module import LightningModule

__all__ = ["LightningDataModule", "LightningModule"]
