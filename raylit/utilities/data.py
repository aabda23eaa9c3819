"""Dataloader helpers users import from ``lightning.pytorch.utilities.data``.

``has_len_all_ranks`` is what a run asks of every dataloader it loads (each one of a ``CombinedLoader``): does
it have a length, on every rank. It warns, as Lightning does, when the total length is zero and when an
``IterableDataset`` also defines ``__len__``. With several workers the lengths are summed across ranks, so
every rank must call it (a run does, when it loads its data); in one process it is a plain ``len``.
"""

from typing import Any

import torch
from torch.utils.data import IterableDataset

from raylit.utilities.apply_func import extract_batch_size
from raylit.utilities.rank_zero import rank_zero_warn

__all__ = ["extract_batch_size", "has_iterable_dataset", "has_len", "has_len_all_ranks", "sized_len"]


def sized_len(dataloader: object) -> int | None:
    """``len(dataloader)``, or None when it has no length (``TypeError``/``NotImplementedError``)."""
    try:
        return len(dataloader)  # type: ignore[arg-type]
    except (TypeError, NotImplementedError):
        return None


def has_iterable_dataset(dataloader: object) -> bool:
    """Whether ``dataloader`` reads an ``IterableDataset``."""
    return isinstance(getattr(dataloader, "dataset", None), IterableDataset)


def _warn_iterable_with_len() -> None:
    rank_zero_warn("Your `IterableDataset` has `__len__` defined. In combination with multi-process data loading "
                   "(when num_workers > 1), `__len__` could be inaccurate if each worker is not configured "
                   "independently to avoid having duplicate data.")


def has_len(dataloader: object) -> bool:
    """Whether ``dataloader`` has a length (warns about a zero length and an ``IterableDataset`` with one)."""
    length = sized_len(dataloader)
    if length == 0:
        rank_zero_warn(f"`{type(dataloader).__name__}` returned 0 length. Please make sure this was your intention.")
    if length is not None and has_iterable_dataset(dataloader):
        _warn_iterable_with_len()
    return length is not None


def has_len_all_ranks(dataloader: object, strategy: Any,
                      allow_zero_length_dataloader_with_multiple_devices: bool = False) -> bool:
    """Whether ``dataloader`` has a length; ``strategy`` (``trainer.strategy``) sums it across ranks, and a rank
    whose loader is empty while others' are not is an error unless
    ``allow_zero_length_dataloader_with_multiple_devices``."""
    local_length = sized_len(dataloader)
    if local_length is None:
        return False
    name = type(dataloader).__name__
    total = int(strategy.reduce(torch.tensor(local_length, device=strategy.root_device), reduce_op="sum"))
    if total == 0:
        rank_zero_warn(f"Total length of `{name}` across ranks is zero. Please make sure this was your intention.")
    if total > 0 and local_length == 0:
        if not allow_zero_length_dataloader_with_multiple_devices:
            raise RuntimeError(f"`{name}` within local rank has zero length. Please make sure that it returns at "
                               "least 1 batch.")
        rank_zero_warn(f"Total length of `{name}` across ranks is zero, but local rank has zero length. Please be "
                       "cautious of uneven batch length.")
    if has_iterable_dataset(dataloader):
        _warn_iterable_with_len()
    return True
