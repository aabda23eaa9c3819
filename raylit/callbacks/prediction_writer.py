"""BasePredictionWriter: write predictions as they are made instead of returning them."""

from collections.abc import Sequence
from enum import Enum
from typing import Any, Literal

import torch

from raylit.callbacks.base import Callback
from raylit.utilities.exceptions import MisconfigurationException


class WriteInterval(str, Enum):
    BATCH = "batch"
    EPOCH = "epoch"
    BATCH_AND_EPOCH = "batch_and_epoch"

    @property
    def on_batch(self) -> bool:
        return self in (WriteInterval.BATCH, WriteInterval.BATCH_AND_EPOCH)

    @property
    def on_epoch(self) -> bool:
        return self in (WriteInterval.EPOCH, WriteInterval.BATCH_AND_EPOCH)


class BasePredictionWriter(Callback):
    """Subclass it and implement ``write_on_batch_end`` and/or ``write_on_epoch_end``; each rank writes its own
    share of the predictions (use ``trainer.global_rank`` in file names). Use with
    ``trainer.predict(..., return_predictions=False)`` to keep memory flat.

    Args:
        write_interval: "batch" (after every predict batch), "epoch" (once, with every prediction), or
            "batch_and_epoch".

    ``batch_indices`` are the dataset indices of each batch: Lightning's ``trainer.predict_loop`` values when the
    Trainer has one, else computed from each predict loader whose order is fixed (sequential, or a
    non-shuffling DistributedSampler); empty lists for other loaders.
    """

    def __init__(self, write_interval: Literal["batch", "epoch", "batch_and_epoch"] = "batch") -> None:
        if write_interval not in {i.value for i in WriteInterval}:
            raise MisconfigurationException(f"`write_interval` should be one of {[i.value for i in WriteInterval]}.")
        self.interval = WriteInterval(write_interval)
        self._predictions: dict[int, list[Any]] = {}
        self._indices: list[list[list[int]]] = []

    def write_on_batch_end(
        self,
        trainer,
        pl_module,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Override with the logic to write a single batch."""
        raise NotImplementedError()

    def write_on_epoch_end(self, trainer, pl_module, predictions: Sequence[Any], batch_indices: Sequence[Any]) -> None:
        """Override with the logic to write all batches."""
        raise NotImplementedError()

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._predictions = {}
        self._indices = [] if _lightning_predict_loop(trainer) is not None else _batch_indices(trainer)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        loop = _lightning_predict_loop(trainer)
        if self.interval.on_epoch and loop is None:
            # The Trainer does not keep predictions for us: keep our own copy (on CPU, like Lightning).
            self._predictions.setdefault(dataloader_idx, []).append(_to_cpu(outputs))
        if self.interval.on_batch:
            if loop is not None:
                indices = loop.current_batch_indices
            else:
                per_loader = self._indices[dataloader_idx] if dataloader_idx < len(self._indices) else []
                indices = per_loader[batch_idx] if batch_idx < len(per_loader) else []
            self.write_on_batch_end(trainer, pl_module, outputs, indices, batch, batch_idx, dataloader_idx)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        if not self.interval.on_epoch:
            return
        loop = _lightning_predict_loop(trainer)
        if loop is not None:
            predictions, indices = loop.predictions, loop.epoch_batch_indices
        else:
            per_loader = [self._predictions[i] for i in sorted(self._predictions)]
            predictions = per_loader[0] if len(per_loader) == 1 else per_loader
            indices = [
                self._indices[i][: len(self._predictions[i])] if i < len(self._indices) else []
                for i in sorted(self._predictions)
            ]
        self.write_on_epoch_end(trainer, pl_module, predictions, indices)
        self._predictions = {}


def _lightning_predict_loop(trainer) -> Any:
    """Lightning's prediction loop, which keeps predictions and batch indices itself (this callback also runs
    under a Lightning Trainer); raylit's ``trainer.predict_loop`` is a progress view without them."""
    loop = getattr(trainer, "predict_loop", None)
    return loop if hasattr(loop, "current_batch_indices") else None


def _batch_indices(trainer) -> list[list[list[int]]]:
    """Dataset indices of every batch of every predict loader (loaders x batches x samples), known in advance
    when the order is fixed: a sequential sampler, or a DistributedSampler without shuffling. Other loaders
    get an empty list, as Lightning reports for loaders whose indices it cannot track."""
    from torch.utils.data import DistributedSampler, SequentialSampler

    loaders = getattr(trainer, "predict_dataloaders", None) or []
    if not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    result = []
    for loader in loaders:
        batch_sampler = getattr(loader, "batch_sampler", None)
        sampler = getattr(batch_sampler, "sampler", None)
        fixed = isinstance(sampler, SequentialSampler) or (
            isinstance(sampler, DistributedSampler) and not sampler.shuffle
        )
        result.append([list(batch) for batch in batch_sampler] if fixed else [])
    return result


def _to_cpu(data: Any) -> Any:
    if isinstance(data, torch.Tensor):
        return data.cpu()
    if isinstance(data, dict):
        return type(data)((k, _to_cpu(v)) for k, v in data.items())
    if isinstance(data, (list, tuple)) and not hasattr(data, "_fields"):
        return type(data)(_to_cpu(v) for v in data)
    return data
