"""``BatchSizeFinder``: the batch-size search as a callback (``lightning.pytorch.callbacks``).

The search runs trials on copies of the Trainer in-process (see ``raylit/tuner/_search.py``), with the model's or
datamodule's data hooks reading the batch-size attribute, and leaves the size it found in that attribute. It
must run before the ongoing run loads its dataloaders, so that they are made with the new size: at
``on_fit_start`` for ``fit``, and in ``setup`` for ``validate``/``test``/``predict`` (Lightning searches in
``on_validation_start``/``on_test_start``/``on_predict_start`` and reloads its loaders; raylit has loaded them by
then). Calling ``scale_batch_size`` from a later hook updates the attribute for the next time the data is loaded
(e.g. with ``reload_dataloaders_every_n_epochs``).
"""

from __future__ import annotations

from typing import Any

from raylit.callbacks.base import Callback
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.model_helpers import is_overridden


class BatchSizeFinder(Callback):
    SUPPORTED_MODES = ("power", "binsearch")

    def __init__(self, mode: str = "power", steps_per_trial: int = 3, init_val: int = 2, max_trials: int = 25,
                 batch_arg_name: str = "batch_size", margin: float = 0.05, max_val: int = 8192) -> None:
        mode = mode.lower()
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"`mode` should be either of {self.SUPPORTED_MODES}")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"`margin` should be between 0 and 1. Found margin={margin}")
        self.optimal_batch_size: int | None = init_val
        self._mode = mode
        self._steps_per_trial = steps_per_trial
        self._init_val = init_val
        self._max_trials = max_trials
        self._batch_arg_name = batch_arg_name
        self._margin = margin
        self._max_val = max_val

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        from raylit.tuner import _search

        if trainer.num_devices * trainer.num_nodes > 1 or trainer.world_size > 1:
            raise MisconfigurationException("The Batch size finder is not supported with distributed strategies.")
        hook = {"fit": "train_dataloader", "validate": "val_dataloader", "test": "test_dataloader",
                "predict": "predict_dataloader"}[str(getattr(stage, "value", stage))]
        dm = trainer.datamodule
        # loaders passed to fit()/test()/... win over the hooks (the run's spec keeps them)
        run = trainer._run
        given = run.spec.data.get("train" if hook == "train_dataloader" else str(getattr(stage, "value", stage)))
        if given is not None or not (is_overridden(hook, dm) or is_overridden(hook, pl_module)):
            raise MisconfigurationException(
                "The Batch size finder cannot be used with dataloaders passed directly to `.fit()`. Please disable the "
                "feature or incorporate the dataloader into your LightningModule or LightningDataModule.")
        if not _search.has_attr(pl_module, dm, self._batch_arg_name):
            raise MisconfigurationException(
                f"Field {self._batch_arg_name} not found in `model`, `datamodule`, nor their `hparams` attributes.")
        if stage != "fit":
            self.scale_batch_size(trainer, pl_module, method=str(getattr(stage, "value", stage)))

    def scale_batch_size(self, trainer: Any, pl_module: Any, method: str = "fit") -> None:
        """Run the search now; ``optimal_batch_size`` holds the result."""
        from raylit.tuner import _search
        from raylit.tuner.batch_size_scaling import scale_batch_size

        _search.check_in_process(trainer, "Tuning the batch size")
        data = {"datamodule": trainer.datamodule}
        self.optimal_batch_size = scale_batch_size(
            trainer, pl_module, data, method=method, mode=self._mode, steps_per_trial=self._steps_per_trial,
            init_val=self._init_val, max_trials=self._max_trials, batch_arg_name=self._batch_arg_name,
            margin=self._margin, max_val=self._max_val)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.scale_batch_size(trainer, pl_module)
