"""Which samples each rank of a ``DistributedRuntime`` reads: the user's DataLoader is rebuilt with the same
arguments and a sampler that gives this rank its share (``shard_loader``).

Sampling policy, as Lightning does unless noted:

* train: ``DistributedSampler`` (shuffled unless ``shuffle=False``, seeded from ``PL_GLOBAL_SEED``; the loop
  calls ``set_epoch``). Each rank gets ``ceil(n / world_size)`` samples; the last few indices are repeated to
  even the shards out, so every rank takes the same number of optimizer steps.
* val / test: **every sample exactly once** when that still gives every rank the same number of batches
  (ranks take indices ``rank, rank + W, ...``). Equal batch counts matter: a ``self.log(..., sync_dist=True,
  on_step=True)`` in ``validation_step`` is a collective per batch, and a rank with one batch more would wait
  forever. When the counts would differ, we fall back to Lightning's behaviour (a non-shuffled
  ``DistributedSampler`` that pads with repeated samples) and warn that the metric counts a few samples twice.
* predict: every sample exactly once, in contiguous chunks (rank 0 gets the first chunk, ...), so
  concatenating the ranks' predictions in rank order restores the dataset order. Predict steps are not
  collectives, so uneven chunk lengths are fine.
* a custom batch sampler decides the batches: whole batches are dealt out to the ranks.
* left as they are: loaders that are not DataLoaders, iterable datasets (they shard themselves, e.g. via
  ``get_worker_info`` / the rank) and loaders the user already gave a ``DistributedSampler``.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.rank_zero import rank_zero_warn


def shard_loader(loader: Any, stage: str, shuffle: bool | None, world_size: int, rank: int) -> Any:
    """``loader`` for ``rank`` of ``world_size`` at ``stage`` ("train", "val", "test" or "predict");
    ``shuffle=False`` forces sequential order (overfit_batches), ``None`` keeps the stage's default."""
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader  # an iterable dataset shards itself (e.g. via get_worker_info / the rank)
    if isinstance(loader.sampler, DistributedSampler) or isinstance(
        getattr(loader.batch_sampler, "sampler", None), DistributedSampler
    ):
        return loader  # the user already sharded it
    return _shard(loader, stage, shuffle, world_size, rank)


def _shard(loader: DataLoader, stage: str, shuffle: bool | None, W: int, r: int) -> DataLoader:
    seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
    batch_sampler = loader.batch_sampler
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        # A custom batch sampler decides the batches; deal whole batches out to the ranks.
        mode = "pad" if stage in ("train", "val", "test") else "contiguous"
        return _rebuild_loader(loader, batch_sampler=_ShardedSampler(batch_sampler, W, r, mode))
    base = batch_sampler.sampler if batch_sampler is not None else loader.sampler
    batch_size = batch_sampler.batch_size if batch_sampler is not None else 1
    drop_last = batch_sampler.drop_last if batch_sampler is not None else False
    plain = type(base) in (RandomSampler, SequentialSampler)
    n = len(loader.dataset) if plain else len(base)  # type: ignore[arg-type]

    if stage == "train":
        if plain:
            do_shuffle = True if shuffle is None else shuffle
            sampler: Sampler = DistributedSampler(loader.dataset, W, r, shuffle=do_shuffle, seed=seed)
        else:
            sampler = _ShardedSampler(base, W, r, "pad")
    elif stage == "predict":
        sampler = _ShardedSampler(n if plain else base, W, r, "contiguous")
    elif _equal_batch_counts(n, W, batch_size, drop_last):
        sampler = _ShardedSampler(n if plain else base, W, r, "interleave")
    else:
        rank_zero_warn(
            f"The {stage} set has {n} samples, which cannot be split over {W} processes with the same "
            f"number of batches (batch_size={batch_size}) on each. Like Lightning, raylit pads the shards "
            f"with {-n % W} repeated sample(s), so epoch-level {stage} metrics count them twice. Use a "
            f"dataset size that gives equal batch counts per process to evaluate each sample once."
        )
        sampler = _ShardedSampler(n if plain else base, W, r, "pad")
    if batch_sampler is None:
        return _rebuild_loader(loader, sampler=sampler, batch_size=None)
    return _rebuild_loader(loader, sampler=sampler, batch_size=batch_size, drop_last=drop_last)


def _equal_batch_counts(n: int, world_size: int, batch_size: int, drop_last: bool) -> bool:
    counts = {n // world_size + (1 if r < n % world_size else 0) for r in range(world_size)}
    batches = {c // batch_size if drop_last else math.ceil(c / batch_size) for c in counts}
    return len(batches) == 1


class _ShardedSampler(Sampler):
    """This rank's share of ``source`` (a length, meaning ``range(n)``, or any sampler / batch sampler, whose
    output is materialised each epoch, identically on every rank).

    modes: "pad" (interleaved, tail repeated so all ranks have ``ceil(n / W)`` items), "interleave" (items
    ``rank, rank + W, ...``; exactly once) and "contiguous" (one contiguous chunk per rank; exactly once).
    """

    def __init__(self, source: int | Sampler | Sequence, num_replicas: int, rank: int, mode: str) -> None:
        assert mode in ("pad", "interleave", "contiguous")
        self.source, self.num_replicas, self.rank, self.mode = source, num_replicas, rank, mode
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)  # type: ignore[union-attr]

    def _total(self) -> int:
        return self.source if isinstance(self.source, int) else len(self.source)  # type: ignore[arg-type]

    def _bounds(self, n: int) -> tuple[int, int]:
        per, extra = divmod(n, self.num_replicas)
        start = self.rank * per + min(self.rank, extra)
        return start, start + per + (1 if self.rank < extra else 0)

    def __len__(self) -> int:
        n, W = self._total(), self.num_replicas
        if self.mode == "pad":
            return math.ceil(n / W)
        start, end = self._bounds(n)
        return end - start

    def __iter__(self) -> Iterator[Any]:
        items = list(range(self.source)) if isinstance(self.source, int) else list(self.source)
        n, W = len(items), self.num_replicas
        if self.mode == "contiguous":
            start, end = self._bounds(n)
            return iter(items[start:end])
        if self.mode == "pad" and n % W:
            pad = W - n % W
            items = items + (items * math.ceil(pad / max(n, 1)))[:pad]
        return iter(items[self.rank :: W])


# --- DataLoader rebuilding ------------------------------------------------------------------------------------
_LOADER_ARGS = (
    "dataset",
    "batch_size",
    "num_workers",
    "collate_fn",
    "pin_memory",
    "drop_last",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "generator",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)


def _rebuild_loader(loader: DataLoader, **overrides: Any) -> DataLoader:
    """A new loader of the same class with the same arguments, except ``overrides`` (sampler / batch_sampler
    and the batching arguments that go with them)."""
    kwargs: dict[str, Any] = {k: getattr(loader, k) for k in _LOADER_ARGS if hasattr(loader, k)}
    if kwargs.get("num_workers", 0) == 0:
        kwargs.pop("prefetch_factor", None)  # DataLoader rejects it without worker processes
    if "batch_sampler" in overrides:
        for k in ("batch_size", "drop_last"):
            kwargs.pop(k, None)
    kwargs.update(overrides)
    kwargs.setdefault("shuffle", None)
    cls = type(loader)
    if cls is DataLoader:
        return DataLoader(**kwargs)

    # A subclass: call its constructor with every parameter it declares, read from the instance when it is
    # not one we override. Without that attribute we cannot rebuild it faithfully, so say how to proceed.
    params = inspect.signature(cls.__init__).parameters
    call_kwargs: dict[str, Any] = {}
    accepts_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for pname, p in list(params.items())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if pname in kwargs:
            call_kwargs[pname] = kwargs[pname]
        elif hasattr(loader, pname):
            call_kwargs[pname] = getattr(loader, pname)
        elif p.default is p.empty:
            raise MisconfigurationException(
                f"raylit needs to rebuild your {cls.__name__} with a distributed sampler, but its __init__ "
                f"argument {pname!r} is not stored as an attribute of the same name. Store it as "
                f"`self.{pname}`, or pass a DistributedSampler yourself, or set "
                f"Trainer(use_distributed_sampler=False)."
            )
    if accepts_kwargs:
        for k, v in kwargs.items():
            call_kwargs.setdefault(k, v)
    return cls(**call_kwargs)
