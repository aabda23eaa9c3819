"""``Tuner(trainer)``: ``lr_find`` and ``scale_batch_size``, as in ``lightning.pytorch.tuner.tuning``.

Both run in this process on a copy of ``trainer`` (the Trainer itself is not run: its counters, callbacks and
loggers stay as they were) and put the model's weights back when they are done. A Trainer that would run on
several Ray workers is refused: tune with a one-device Trainer, then train with the multi-worker one.
"""

from __future__ import annotations

from typing import Any, Literal

from raylit.tuner import _search
from raylit.tuner.lr_finder import _LRFinder


class Tuner:
    """Tuner class to tune your model: ``Tuner(trainer).lr_find(model)``, ``.scale_batch_size(model)``."""

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer

    def scale_batch_size(
        self,
        model: Any,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: Any = None,
        method: Literal["fit", "validate", "test", "predict"] = "fit",
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        margin: float = 0.05,
        max_val: int = 8192,
    ) -> int | None:
        """The largest batch size that runs ``steps_per_trial`` steps of ``method`` without running out of memory
        (``mode="power"``: doubling; ``"binsearch"``: doubling, then bisection, minus ``margin``), at most
        ``max_val``. ``batch_arg_name`` is read from and written to the model, ``model.hparams``, the datamodule or
        its ``hparams``; its data hooks must read it (dataloaders passed directly cannot change size)."""
        from raylit.callbacks.batch_size_finder import BatchSizeFinder
        from raylit.tuner.batch_size_scaling import scale_batch_size

        train_dataloaders, datamodule = _split_datamodule(train_dataloaders, datamodule)
        _search.check_method(method, train_dataloaders, val_dataloaders, dataloaders)
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"`margin` should be between 0 and 1. Found margin={margin}")
        _search.check_in_process(self._trainer, "Tuning the batch size")
        if any(isinstance(cb, BatchSizeFinder) for cb in self._trainer.callbacks):
            raise ValueError("Trainer is already configured with a `BatchSizeFinder` callback.Please remove it if you "
                             "want to use the Tuner.")
        data = dict(train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders, dataloaders=dataloaders,
                    datamodule=datamodule)
        return scale_batch_size(self._trainer, model, data, method=method, mode=mode, steps_per_trial=steps_per_trial,
                                init_val=init_val, max_trials=max_trials, batch_arg_name=batch_arg_name,
                                margin=margin, max_val=max_val)

    def lr_find(
        self,
        model: Any,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: Any = None,
        method: Literal["fit", "validate", "test", "predict"] = "fit",
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> _LRFinder | None:
        """Learning-rate range test: ``num_training`` optimizer steps with the learning rate rising from ``min_lr``
        to ``max_lr`` (``mode`` "exponential" or "linear"), stopping early when the smoothed loss exceeds
        ``early_stop_threshold`` times the best. Returns the finder (``results``, ``suggestion()``, ``plot()``);
        with ``update_attr`` the suggestion is written to ``model.lr`` / ``model.learning_rate`` (or ``attr_name``;
        in the model, its ``hparams``, or the datamodule)."""
        from raylit.callbacks.lr_finder import LearningRateFinder
        from raylit.tuner.lr_finder import lr_find
        from raylit.utilities.exceptions import MisconfigurationException

        if method != "fit":
            raise MisconfigurationException("method='fit' is the only valid configuration to run lr finder.")
        train_dataloaders, datamodule = _split_datamodule(train_dataloaders, datamodule)
        _search.check_method(method, train_dataloaders, val_dataloaders, dataloaders)
        if mode not in ("linear", "exponential"):
            raise ValueError("`mode` should be either of ('linear', 'exponential')")
        _search.check_in_process(self._trainer, "The learning rate finder")
        if any(isinstance(cb, LearningRateFinder) for cb in self._trainer.callbacks):
            raise ValueError("Trainer is already configured with a `LearningRateFinder` callback.Please remove it if "
                             "you want to use the Tuner.")
        data = dict(train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders, datamodule=datamodule)
        return lr_find(self._trainer, model, data, min_lr=min_lr, max_lr=max_lr, num_training=num_training, mode=mode,
                       early_stop_threshold=early_stop_threshold, update_attr=update_attr, attr_name=attr_name,
                       optimizers=self._trainer.optimizers)


def _split_datamodule(train_dataloaders: Any, datamodule: Any) -> tuple[Any, Any]:
    """``fit(model, dm)`` style: a datamodule passed as ``train_dataloaders``."""
    from raylit.datamodule import LightningDataModule
    from raylit.utilities.exceptions import MisconfigurationException

    if isinstance(train_dataloaders, LightningDataModule):
        if datamodule is not None:
            raise MisconfigurationException("You passed a LightningDataModule twice (train_dataloaders and datamodule)")
        return None, train_dataloaders
    return train_dataloaders, datamodule
