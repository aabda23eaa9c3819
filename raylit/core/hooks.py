"""``lightning.pytorch.core.hooks``: raylit has ``DataHooks`` (the data hooks shared by ``LightningModule`` and
``LightningDataModule``). Lightning's ``ModelHooks`` and ``CheckpointHooks`` mixins have no raylit counterpart:
raylit's ``LightningModule`` defines those hooks itself (``raylit/hooks.py`` lists them in firing order)."""

from raylit.module import DataHooks

__all__ = ["DataHooks"]
