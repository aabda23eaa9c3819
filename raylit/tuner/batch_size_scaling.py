"""Batch-size search: run a few steps at growing batch sizes until one runs out of memory.

``power`` doubles the size after every success and halves it after an out-of-memory error (ending the search
once a size has succeeded); ``binsearch`` doubles until the first failure, then bisects between the last success
and the failure, and finally takes ``margin`` off the result. Sizes never exceed ``max_val`` or the dataset
length. Lightning's algorithm and messages; each trial is an ordinary ``fit``/``validate``/``test``/``predict``
of a copy of the Trainer (see ``_search.py``) limited to ``steps_per_trial`` batches, with the data hooks of the
model or datamodule reading the new size. The model's weights are put back afterwards.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from raylit.callbacks.base import Callback
from raylit.tuner import _search
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.rank_zero import rank_zero_info, rank_zero_warn

log = logging.getLogger(__name__)

_PREFIX = {"fit": "train", "validate": "val", "test": "test", "predict": "predict"}


class _DatasetLength(Callback):
    """Records the length of the dataset the trial reads (None for iterable datasets)."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.length: int | None = None
        self.loaders = 1

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        trainer.callbacks[:] = [cb for cb in trainer.callbacks if cb is self]  # as in Lightning: no other callbacks

    def _measure(self, loaders: Any) -> None:
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        self.loaders = len(loaders)
        lengths = []
        for dl in loaders:
            try:
                lengths.append(len(dl.dataset))
            except (AttributeError, TypeError, NotImplementedError):
                pass
        self.length = max(lengths) if lengths else None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._measure(trainer.train_dataloader)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if self.method == "validate":
            self._measure(trainer.val_dataloaders)

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._measure(trainer.test_dataloaders)

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._measure(trainer.predict_dataloaders)


def check_configuration(model: Any, data: dict[str, Any], batch_arg_name: str) -> None:
    """What Lightning's BatchSizeFinder checks before it starts."""
    if data.get("train_dataloaders") is not None or data.get("dataloaders") is not None:
        raise MisconfigurationException(
            "The Batch size finder cannot be used with dataloaders passed directly to `.fit()`. Please disable the "
            "feature or incorporate the dataloader into your LightningModule or LightningDataModule.")
    datamodule = data.get("datamodule")
    if not _search.has_attr(model, datamodule, batch_arg_name):
        raise MisconfigurationException(
            f"Field {batch_arg_name} not found in `model`, `datamodule`, nor their `hparams` attributes.")
    hparams = getattr(model, "hparams", None)
    if hasattr(model, batch_arg_name) and hparams is not None and batch_arg_name in hparams:
        rank_zero_warn(
            f"Field `model.{batch_arg_name}` and `model.hparams.{batch_arg_name}` are mutually exclusive! "
            f"`model.{batch_arg_name}` will be used as the initial batch size for scaling. If this is not the "
            "intended behavior, please remove either one.")


class _Search:
    def __init__(self, trainer: Any, model: Any, data: dict[str, Any], method: str, steps_per_trial: int,
                 batch_arg_name: str, max_val: int) -> None:
        self.trainer, self.model, self.data, self.method = trainer, model, data, method
        self.steps, self.name, self.max_val = steps_per_trial, batch_arg_name, max_val
        self.datamodule = data.get("datamodule")
        self.dataset_length: int | None = None  # known after the first trial

    def trial(self) -> None:
        """A few steps at the current batch size; an out-of-memory error propagates."""
        probe = _DatasetLength(self.method)
        if self.method == "fit":
            limits = dict(limit_train_batches=1.0, limit_val_batches=self.steps, max_steps=self.steps)
        else:
            limits = {f"limit_{_PREFIX[self.method]}_batches": self.steps}
        search = _search.search_trainer(self.trainer, probe, **limits)
        try:
            _search.run(search, self.method, self.model, self.data)
        finally:
            if probe.length is not None:
                self.dataset_length = probe.length
            del search
        if self.method != "fit" and probe.loaders > 1:
            raise MisconfigurationException(
                f"The Batch size finder cannot be used with multiple {_PREFIX[self.method]} dataloaders.")

    def adjust(self, factor: float = 1.0, value: int | None = None, desc: str | None = None) -> tuple[int, bool]:
        """Set the batch size to ``value`` or ``factor`` times the current one (capped at ``max_val``); keep it when
        it already covers the dataset. Returns the size and whether it changed."""
        size = _search.get_attr(self.model, self.datamodule, self.name)
        if self.dataset_length is not None and size >= self.dataset_length:
            rank_zero_info(f"The batch size {size} is greater or equal than the length of your dataset: "
                           f"{self.dataset_length}.")
            return size, False
        new = value if value is not None else int(size * factor)
        if new > self.max_val:
            if desc:
                rank_zero_info(f"Batch size {new} exceeds max_val limit {self.max_val}, capping at {self.max_val}")
            new = self.max_val
        if desc:
            rank_zero_info(f"Batch size {size} {desc}, trying batch size {new}")
        _search.set_attr(self.model, self.datamodule, self.name, new)
        return new, new != size

    def power(self, size: int, max_trials: int) -> int:
        any_success = False
        for i in range(max_trials):
            if self._at_limit(size):
                break
            if self._try():
                if i + 1 >= max_trials:
                    break
                size, changed = self.adjust(factor=2.0, desc="succeeded")
                if not changed:
                    break
                any_success = True
            else:
                size, _ = self.adjust(factor=0.5, desc="failed")
                if any_success:
                    break
        return size

    def binsearch(self, size: int, max_trials: int, margin: float) -> int:
        low, high, count = 1, None, 0
        while True:
            if self._at_limit(size):
                break
            if self._try():
                count += 1
                if count >= max_trials:
                    break
                low = size
                if high:
                    if high - low <= 1:
                        break
                    size, changed = self.adjust(value=(high + low) // 2, desc="succeeded")
                else:
                    size, changed = self.adjust(factor=2.0, desc="succeeded")
                if not changed:
                    break
            else:
                high = size
                size, _ = self.adjust(value=(high + low) // 2, desc="failed")
                if high - low <= 1:
                    break
        if margin > 0:
            reduced = max(1, int(size * (1 - margin)))
            if reduced != size:
                rank_zero_info(f"Applying margin of {margin:.1%}, reducing batch size from {size} to {reduced}")
                size = reduced
        return size

    def _at_limit(self, size: int) -> bool:
        """Before each trial: free memory, and stop at ``max_val``."""
        _search.free_memory()
        if size >= self.max_val:
            rank_zero_info(f"Reached the maximum batch size limit of {self.max_val}. Stopping search.")
            return True
        return False

    def _try(self) -> bool:
        """One trial: True when it ran, False when it ran out of memory (other errors propagate)."""
        try:
            self.trial()
            return True
        except RuntimeError as err:
            if not _search.is_oom_error(err):
                raise
        _search.free_memory()  # outside the except block: the traceback no longer holds the trial's tensors
        return False


def scale_batch_size(trainer: Any, model: Any, data: dict[str, Any], method: str = "fit", mode: str = "power",
                     steps_per_trial: int = 3, init_val: int = 2, max_trials: int = 25,
                     batch_arg_name: str = "batch_size", margin: float = 0.05, max_val: int = 8192) -> int | None:
    """The largest batch size (up to ``max_val``) that runs ``steps_per_trial`` steps of ``method`` without running
    out of memory; it is also left in the model's (or datamodule's) ``batch_arg_name`` attribute."""
    if mode not in ("power", "binsearch"):
        raise ValueError("`mode` should be either of ('power', 'binsearch')")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"`margin` should be between 0 and 1. Found margin={margin}")
    check_configuration(model, data, batch_arg_name)
    if trainer.fast_dev_run:
        rank_zero_warn("Skipping batch size scaler since `fast_dev_run` is enabled.")
        return None
    search = _Search(trainer, model, data, method, steps_per_trial, batch_arg_name, max_val)
    device = next(iter(model.parameters()), torch.empty(0)).device
    with _search.KeepModel(model, data.get("datamodule"), device):
        size, _ = search.adjust(value=init_val)
        if mode == "power":
            size = search.power(size, max_trials)
        else:
            size = search.binsearch(size, max_trials, margin)
        _search.set_attr(model, data.get("datamodule"), batch_arg_name, size)
        _search.free_memory()
    rank_zero_info(f"Finished batch size finder, will continue with full run using batch size {size}")
    return size
