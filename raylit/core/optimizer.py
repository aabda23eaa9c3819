"""``lightning.pytorch.core.optimizer``: ``LightningOptimizer`` (what ``self.optimizers()`` returns) and the
``LRSchedulerConfig`` entries of ``trainer.lr_scheduler_configs`` (defined in ``raylit/optim.py``)."""

from raylit.optim import LightningOptimizer, LRSchedulerConfig

__all__ = ["LRSchedulerConfig", "LightningOptimizer"]
