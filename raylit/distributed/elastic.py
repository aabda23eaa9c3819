"""Elastic training that keeps the math: the same global batches whatever the number of workers.

``Trainer(elastic=(min_workers, max_workers))`` (or ``ScalingConfig(num_workers=(min, max))``) lets Ray run the
worker group with any ``W`` in the range. The user's ``batch_size`` is per worker *at max_workers*, so the
global batch is fixed at ``batch_size x max_workers x accumulate_grad_batches`` and every optimizer step
trains on the same samples at any ``W``:

* **Sampling is global.** Each epoch has one seeded permutation of the dataset (``seed + epoch``, the same on
  every rank and at every ``W``), cut into global batches, each cut into ``max_workers x accumulate``
  micro-batch *slots*: slot ``(a, v)`` is what virtual rank ``v`` trains in accumulation micro-step ``a`` of a
  full-size run.
* **Ranks take whole virtual ranks.** Rank ``r`` of ``W`` trains virtual ranks ``r*k .. r*k+k-1`` with
  ``k = ceil(max_workers / W)``, one after the other, accumulating gradients: ``k x accumulate`` micro-batches
  per optimizer step. When ``W`` does not divide ``max_workers``, some ranks have fewer virtual ranks than
  ``k``; they train padding micro-batches (a copy of a real one) with loss weight 0, so that every rank takes
  the same number of DDP backward passes. The gradients stay exact; the padding costs compute (warned).
* **The loss is the mean over the global batch.** A micro-batch's loss (a mean over its samples) is weighted
  by ``n_slot x W / N`` (``N``: samples in this global batch); DDP then averages over the ``W`` ranks, so the
  gradient is ``sum(n_slot x grad(mean_slot)) / N`` whatever ``W`` is, uneven last batches included (a last
  global batch smaller than ``max_workers x accumulate`` samples leaves empty slots: those are padding).
* **The position in an epoch carries across a resize.** A checkpoint records this rank's micro-batches per
  optimizer step; a restore at another ``W`` converts the epoch position (``epoch_batches``) to optimizer steps
  and back into the new unit (``rescale_position``).

What cannot be identical: the float summation order of the gradient (DDP sums ``W`` rank gradients, each rank
sums its ``k`` micro-batch gradients), and anything drawn from a per-rank RNG stream (dropout, random
augmentation), since virtual ranks share a process at ``W < max``. BatchNorm running statistics (updated per
micro-batch, broadcast from rank 0) also depend on ``W``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, Sampler, SequentialSampler

from raylit.utilities.exceptions import MisconfigurationException


@dataclass
class ElasticPlan:
    """What this rank does in one optimizer step at world size ``world_size`` (built on every (re)start)."""

    max_workers: int
    world_size: int
    rank: int
    accumulate: int = 1  # the user's accumulate_grad_batches (at max_workers)
    sampler: "GlobalBatchSampler | None" = field(default=None, repr=False)  # set when the train loader is built

    def __post_init__(self) -> None:
        if not 1 <= self.world_size <= self.max_workers:
            raise ValueError(f"elastic: world size {self.world_size} outside 1..max_workers={self.max_workers}")

    @property
    def virtual_per_rank(self) -> int:
        """``k``: the virtual ranks (full-size workers) this rank stands in for."""
        return math.ceil(self.max_workers / self.world_size)

    @property
    def micro_steps(self) -> int:
        """This rank's micro-batches (loader batches) per optimizer step."""
        return self.virtual_per_rank * self.accumulate

    @property
    def padded(self) -> bool:
        return self.max_workers % self.world_size != 0

    def virtual_ranks(self, rank: int | None = None) -> list[int | None]:
        """The virtual ranks of ``rank`` in training order; None marks a padding slot."""
        rank = self.rank if rank is None else rank
        k = self.virtual_per_rank
        return [v if v < self.max_workers else None for v in range(rank * k, rank * k + k)]

    def describe(self) -> str:
        text = (
            f"raylit: elastic run on {self.world_size} of max {self.max_workers} workers: each worker trains "
            f"{self.micro_steps} micro-batch(es) per optimizer step; the global batch is unchanged"
        )
        if self.padded:
            waste = self.virtual_per_rank * self.world_size - self.max_workers
            text += (
                f" ({self.world_size} does not divide {self.max_workers}: {waste} of "
                f"{self.virtual_per_rank * self.world_size} micro-batches per accumulation step are "
                "weight-0 padding; a world size dividing max_workers wastes no compute)"
            )
        return text

    def loss_weight(self, batch_idx: int) -> float:
        """The factor for the loss of this rank's ``batch_idx``-th micro-batch of the epoch (see the module
        docstring); DDP's mean over the ranks then gives the mean over the global batch."""
        assert self.sampler is not None, "the elastic train loader is not built yet"
        n_slot, n_global = self.sampler.slot_sizes(batch_idx)
        return n_slot * self.world_size / n_global if n_global else 0.0

    # --- checkpoints ---------------------------------------------------------------------------------------
    def checkpoint_info(self) -> dict[str, int]:
        return {"micro_steps": self.micro_steps, "world_size": self.world_size, "max_workers": self.max_workers}

    def rescale_position(self, state: Any, saved: dict[str, Any]) -> None:
        """Convert a restored ``TrainState``'s batch counters from the checkpoint's micro-batches per optimizer
        step to this plan's. A checkpoint written inside an accumulation window goes back to the window's start
        (its gradients are not in the checkpoint at any world size)."""
        info = saved.get("elastic") or {}
        old = int(info.get("micro_steps", self.micro_steps))
        if info and int(info.get("max_workers", self.max_workers)) != self.max_workers:
            raise MisconfigurationException(
                f"Trainer(elastic=(..., {self.max_workers})) cannot resume a checkpoint of an elastic run with "
                f"max_workers={info['max_workers']}: the global batch would change. Keep max_workers."
            )
        new = self.micro_steps
        if old == new:
            return
        state.epoch_batches = state.epoch_batches // old * new
        state.total_batches = state.total_batches // old * new
        pending = state.pending_resume
        if pending is not None and pending.get("batch_pending") is not None:
            batch_idx, is_last, accumulating = pending["batch_pending"]
            pending["batch_pending"] = None if accumulating else ((batch_idx + 1) // old * new - 1, is_last, False)


class GlobalBatchSampler(Sampler):
    """This rank's micro-batches (lists of dataset indices) for one epoch: see the module docstring.

    ``n`` samples, ``batch_size`` per slot at full size, ``drop_last`` drops a last partial global batch.
    Every rank and every world size compute the same global batches; only the slots each rank takes differ.
    """

    def __init__(
        self, n: int, batch_size: int, plan: ElasticPlan, shuffle: bool, seed: int, drop_last: bool = False
    ) -> None:
        self.n, self.batch_size, self.plan, self.shuffle, self.seed = n, batch_size, plan, shuffle, seed
        self.drop_last = drop_last
        self.epoch = 0
        self.global_batch = batch_size * plan.max_workers * plan.accumulate
        self.slots_per_step = plan.max_workers * plan.accumulate

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_steps(self) -> int:
        """Optimizer steps per epoch (at any world size)."""
        return self.n // self.global_batch if self.drop_last else math.ceil(self.n / self.global_batch)

    def __len__(self) -> int:
        return self.num_steps * self.plan.micro_steps

    def order(self) -> list[int]:
        """The epoch's permutation of the dataset."""
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def _bounds(self, step: int) -> list[tuple[int, int]]:
        """Start/end (in the epoch order) of every slot of global batch ``step``, slot ``a * max + v``."""
        start = step * self.global_batch
        m = min(self.global_batch, self.n - start)
        per, extra = divmod(m, self.slots_per_step)  # even split; equal to batch_size for a full global batch
        out, pos = [], start
        for s in range(self.slots_per_step):
            size = per + (1 if s < extra else 0)
            out.append((pos, pos + size))
            pos += size
        return out

    def _my_slots(self, step: int) -> Iterator[tuple[int, int] | None]:
        """This rank's slots of global batch ``step`` in training order: (start, end), or None for padding."""
        bounds, plan = self._bounds(step), self.plan
        for a in range(plan.accumulate):
            for v in plan.virtual_ranks():
                if v is None:
                    yield None
                    continue
                lo, hi = bounds[a * plan.max_workers + v]
                yield (lo, hi) if hi > lo else None

    def slot_sizes(self, batch_idx: int) -> tuple[int, int]:
        """(samples in this rank's ``batch_idx``-th micro-batch, samples in its global batch); 0 for padding."""
        step, i = divmod(batch_idx, self.plan.micro_steps)
        slot = list(self._my_slots(step))[i]
        n_global = min(self.global_batch, self.n - step * self.global_batch)
        return (0 if slot is None else slot[1] - slot[0]), n_global

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        for step in range(self.num_steps):
            first = next(((lo, hi) for lo, hi in self._bounds(step) if hi > lo))
            for slot in self._my_slots(step):
                lo, hi = slot if slot is not None else first  # padding: a copy of a real micro-batch, weight 0
                yield order[lo:hi]


def elastic_train_loader(loader: Any, plan: ElasticPlan, shuffle: bool | None = None) -> DataLoader:
    """``loader`` rebuilt with this rank's ``GlobalBatchSampler``; binds it to ``plan`` (for the loss weights).
    Only map-style datasets in a DataLoader with a plain sampler can be cut into global batches."""
    from raylit.distributed.samplers import _rebuild_loader

    what = None
    if not isinstance(loader, DataLoader):
        what = f"a {type(loader).__name__} (not a torch DataLoader)"
    elif isinstance(loader.dataset, IterableDataset):
        what = "an IterableDataset (no indices to permute)"
    elif loader.batch_sampler is None:
        what = "a DataLoader with batch_size=None"
    elif type(loader.batch_sampler) is not BatchSampler:
        what = f"a custom batch_sampler ({type(loader.batch_sampler).__name__})"
    elif type(loader.batch_sampler.sampler) not in (RandomSampler, SequentialSampler):
        what = f"a custom sampler ({type(loader.batch_sampler.sampler).__name__})"
    if what is not None:
        raise MisconfigurationException(
            f"Trainer(elastic=...) needs the training data as a map-style dataset in a torch DataLoader "
            f"(batch_size=..., shuffle=True/False), so that raylit can cut each epoch into the same global "
            f"batches at any number of workers; got {what}. Use such a DataLoader, or run without elastic=."
        )
    batch_sampler = loader.batch_sampler
    do_shuffle = isinstance(batch_sampler.sampler, RandomSampler) if shuffle is None else shuffle
    sampler = GlobalBatchSampler(
        len(loader.dataset),
        batch_sampler.batch_size,
        plan,
        do_shuffle,
        int(os.environ.get("PL_GLOBAL_SEED", "0")),
        batch_sampler.drop_last,
    )
    plan.sampler = sampler
    return _rebuild_loader(loader, batch_sampler=sampler)
