"""``LearningRateFinder``: the learning-rate range test as a callback (``lightning.pytorch.callbacks``).

At ``on_fit_start`` (override it, or call ``lr_find`` from another hook, to search at other times) the search
trains a copy of the Trainer in-process (see ``raylit/tuner/_search.py``): the model's own hooks run again
there (``setup``, ``configure_optimizers``, the training hooks), then its weights are put back and the suggested
learning rate is written to the model's attribute and the running optimizer's param groups.
"""

from __future__ import annotations

from typing import Any

from raylit.callbacks.base import Callback


class LearningRateFinder(Callback):
    SUPPORTED_MODES = ("linear", "exponential")

    def __init__(self, min_lr: float = 1e-8, max_lr: float = 1, num_training_steps: int = 100,
                 mode: str = "exponential", early_stop_threshold: float | None = 4.0, update_attr: bool = True,
                 attr_name: str = "") -> None:
        mode = mode.lower()
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"`mode` should be either of {self.SUPPORTED_MODES}")
        self._min_lr, self._max_lr = min_lr, max_lr
        self._num_training_steps = num_training_steps
        self._mode = mode
        self._early_stop_threshold = early_stop_threshold
        self._update_attr = update_attr
        self._attr_name = attr_name
        self.optimal_lr: Any = None

    def lr_find(self, trainer: Any, pl_module: Any) -> None:
        """Run the search now, with the data of the ongoing run; ``optimal_lr`` holds the result."""
        from raylit.tuner import _search
        from raylit.tuner.lr_finder import lr_find

        _search.check_in_process(trainer, "The learning rate finder")
        data = _current_fit_data(trainer, pl_module)
        self.optimal_lr = lr_find(trainer, pl_module, data, min_lr=self._min_lr, max_lr=self._max_lr,
                                  num_training=self._num_training_steps, mode=self._mode,
                                  early_stop_threshold=self._early_stop_threshold, update_attr=self._update_attr,
                                  attr_name=self._attr_name, optimizers=trainer.optimizers)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.lr_find(trainer, pl_module)


def _current_fit_data(trainer: Any, pl_module: Any) -> dict[str, Any]:
    """The training data of the ongoing run, as ``fit`` arguments for the search: the datamodule, the module's
    own data hooks, or else the dataloaders passed to ``fit`` (loaded through ``estimated_stepping_batches``,
    which loads them as Lightning does)."""
    from raylit.utilities.model_helpers import is_overridden

    if trainer.datamodule is not None:
        return {"datamodule": trainer.datamodule}
    if is_overridden("train_dataloader", pl_module):
        return {}
    if trainer.train_dataloader is None:
        _ = trainer.estimated_stepping_batches
    return {"train_dataloaders": trainer.train_dataloader, "val_dataloaders": trainer.val_dataloaders}
