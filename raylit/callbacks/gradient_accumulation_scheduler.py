"""GradientAccumulationScheduler: change ``accumulate_grad_batches`` by epoch."""

from typing import Any

from raylit.callbacks.base import Callback
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.rank_zero import rank_zero_warn


class GradientAccumulationScheduler(Callback):
    """Set ``trainer.accumulate_grad_batches`` at the start of each epoch from ``scheduling``, a dict
    ``{first_epoch: factor}`` with 0-based epochs; e.g. ``{0: 8, 4: 4, 8: 1}``. Epochs before the smallest key
    use 1. Needs automatic optimization and ``Trainer(accumulate_grad_batches=1)``."""

    def __init__(self, scheduling: dict[int, int]) -> None:
        super().__init__()
        if not scheduling:
            raise TypeError("Empty dict cannot be interpreted correct")
        if any(not isinstance(epoch, int) or epoch < 0 for epoch in scheduling):
            raise MisconfigurationException(
                f"Epoch should be an int greater than or equal to 0. Got {list(scheduling.keys())}."
            )
        if any(not isinstance(factor, int) or factor < 1 for factor in scheduling.values()):
            raise MisconfigurationException(
                f"Accumulation factor should be an int greater than 0. Got {list(scheduling.values())}."
            )
        if min(scheduling) != 0:
            scheduling.update({0: 1})  # Lightning fills in epoch 0 in the caller's dict too
        self.scheduling = scheduling
        self.epochs = sorted(scheduling)

    def going_to_accumulate_grad_batches(self) -> bool:
        return any(factor > 1 for factor in self.scheduling.values())

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        started = [e for e in self.epochs if e <= epoch]
        return self.scheduling[started[-1]] if started else 1

    def on_train_start(self, trainer, pl_module) -> None:
        if not pl_module.automatic_optimization:
            raise RuntimeError(
                "Automatic gradient accumulation and the `GradientAccumulationScheduler` is not supported for"
                " manual optimization. Please remove the callback or switch to automatic optimization."
            )
        from raylit.module import LightningModule

        overridden = any(
            getattr(type(pl_module), name, None) is not getattr(LightningModule, name, None)
            for name in ("optimizer_step", "optimizer_zero_grad")
        )
        if overridden and self.going_to_accumulate_grad_batches():
            rank_zero_warn(
                "When using `Trainer(accumulate_grad_batches != 1)` and overriding"
                " `LightningModule.optimizer_{step,zero_grad}`, the hooks will not be called on every batch"
                " (rather, they are called on every optimization step)."
            )
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                "You have set `accumulate_grad_batches` and are using the `GradientAccumulationScheduler`"
                " callback. Either remove `accumulate_grad_batches` from the Trainer or remove the callback."
            )

    def on_train_epoch_start(self, trainer, *_: Any) -> None:
        trainer.accumulate_grad_batches = self.get_accumulate_grad_batches(trainer.current_epoch)
