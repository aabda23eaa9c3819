"""``lightning.pytorch.core.datamodule``: the ``LightningDataModule`` (defined in ``raylit/datamodule.py``)."""

from raylit.datamodule import LightningDataModule

__all__ = ["LightningDataModule"]
