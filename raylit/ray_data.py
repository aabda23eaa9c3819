"""Ray Data datasets as training/evaluation data: ``RayDataLoader`` and how it is sharded over Ray workers.

A ``*_dataloader()`` hook (of the datamodule or the module), or ``fit(train_dataloaders=...)``, may return a
``ray.data.Dataset`` wrapped in a ``RayDataLoader`` that carries the batch settings (or a bare ``Dataset``, read
with ``RayDataLoader``'s defaults: 256 rows a batch, Ray's own default). Batches are ``{column: tensor}`` dicts
from ``iter_torch_batches``, on the CPU; they go through the same transfer hooks as DataLoader batches
(``on_before_batch_transfer`` -> ``transfer_batch_to_device`` -> ``on_after_batch_transfer``).

Where the Dataset is split (the design choice). Ray Train's own route is ``TorchTrainer(datasets=...)`` plus
``ray.train.get_dataset_shard`` on the workers, which needs the Dataset objects on the driver *before* the
workers exist, i.e. before ``prepare_data``/``setup`` have run. Lightning users create datasets in ``setup()``.
So raylit keeps Lightning's order and does on the workers what Ray Train's ``DataConfig`` does on its side:
every rank calls the hook as usual; rank 0 calls ``streaming_split(world_size, equal=..., locality_hints=the
workers' nodes)`` on *its* Dataset and broadcasts the split iterators (small, picklable handles to one
``SplitCoordinator`` actor) over the torch.distributed group that already exists; each rank iterates its own.

* train / val / test: ``equal=True``, so every rank gets the same number of rows, hence the same number of
  batches (a DDP all-reduce or a ``sync_dist`` log per batch would otherwise wait forever). Up to
  ``world_size - 1`` rows per epoch are left out when the row count does not divide (as in Ray Train).
* predict: ``equal=False`` (every row once; predictions come back in rank order, not dataset order).
* ``shuffle=True`` is a global ``random_shuffle`` reseeded at every pass (``RandomSeedConfig(seed,
  reseed_after_execution=True)``): each epoch has a new order, reproducible when a seed is known (``seed=``,
  else ``PL_GLOBAL_SEED`` from ``seed_everything``). ``local_shuffle_buffer_size`` is the cheaper local one.
* No ``__len__``: an epoch ends when the iterator is exhausted, as with an ``IterableDataset``
  (``num_training_batches`` is ``inf``; ``limit_*_batches`` must be an int or 1.0, ``val_check_interval`` an int
  or 1.0; the progress bar shows no total).
* ``use_distributed_sampler=False`` means "do not shard", as for DataLoaders: every rank reads the whole Dataset.

CPUs. Ray Data's read/map tasks need whole free CPUs (1 each by default) beyond the training workers. On a
2-CPU node, 2 workers x 1 CPU leave none and the first read waits forever. The launcher therefore sizes the
workers when it can see Ray Data on the driver (``raylit.launch.resources.data_cpus_needed``), raylit's private
local Ray always has one logical CPU to spare, and rank 0 checks the real placement before splitting
(``raylit.launch.ray_data.cpu_problem``).

This module is the user-facing type and never imports Ray; what calls Ray (connecting, shuffling, splitting)
is in ``raylit.launch.ray_data``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

DEFAULT_BATCH_SIZE = 256  # ray.data.DataIterator.iter_torch_batches' default


def is_ray_dataset(obj: Any) -> bool:
    """A ``ray.data.Dataset`` (also ``MaterializedDataset``), recognised without importing Ray."""
    return type(obj).__module__.startswith("ray.data") and hasattr(obj, "streaming_split")


def is_ray_data(obj: Any) -> bool:
    return isinstance(obj, (RayDataLoader, _RayDataShard)) or is_ray_dataset(obj)


def as_loader(obj: Any) -> Any:
    """A bare ``ray.data.Dataset`` becomes a ``RayDataLoader`` with the default settings; anything else is
    returned as is."""
    return RayDataLoader(obj) if is_ray_dataset(obj) else obj


class RayDataLoader:
    """Iterate a ``ray.data.Dataset`` as torch batches, with DataLoader-like settings.

    Args:
        dataset: the ``ray.data.Dataset`` (e.g. ``ray.data.read_parquet(path)``).
        batch_size: rows per batch *per worker* (like a DataLoader's); ``None`` yields whole blocks.
        shuffle: global shuffle, a new order every epoch (see the module docstring).
        seed: base seed of that shuffle; defaults to ``PL_GLOBAL_SEED`` (``seed_everything``), else random.
        drop_last: drop each epoch's last incomplete batch.
        collate_fn: passed to ``iter_torch_batches`` (gets a dict of numpy arrays; excludes ``dtypes``).
        dtypes: torch dtype(s) for the columns (one dtype or ``{column: dtype}``).
        prefetch_batches: batches Ray fetches ahead.
        local_shuffle_buffer_size: rows in a local shuffle buffer (cheaper than ``shuffle``; seeded per epoch).
        data_cpus: whole CPUs Ray Data needs free beyond the training workers (1: a read/map task's default).
            The launcher leaves at least this much free; set 0 if your tasks ask for no CPU.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int | None = DEFAULT_BATCH_SIZE,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
        collate_fn: Any = None,
        dtypes: Any = None,
        prefetch_batches: int = 1,
        local_shuffle_buffer_size: int | None = None,
        data_cpus: float = 1.0,
    ) -> None:
        if not is_ray_dataset(dataset):
            raise TypeError(f"RayDataLoader needs a ray.data.Dataset, got {type(dataset).__name__}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"RayDataLoader(batch_size={batch_size!r}): a positive int or None")
        if collate_fn is not None and dtypes is not None:
            raise ValueError("RayDataLoader: pass either collate_fn or dtypes (Ray applies dtypes only without one)")
        if data_cpus < 0:
            raise ValueError(f"RayDataLoader(data_cpus={data_cpus}) must be >= 0")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.collate_fn = collate_fn
        self.dtypes = dtypes
        self.prefetch_batches = prefetch_batches
        self.local_shuffle_buffer_size = local_shuffle_buffer_size
        self.data_cpus = float(data_cpus)
        self._source: Any = None  # the (shuffled) Dataset this process iterates; built at the first epoch
        self._epoch = 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_source": None, "_epoch": 0}

    # --- in one process ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        from raylit.launch.ray_data import ensure_connected

        ensure_connected()  # in-process: the launcher's way, not Ray Data's implicit ray.init()
        if self._source is None:
            self._source = self.source(self.shuffle)
        self._epoch += 1
        return iter(_torch_batches(self._source, self, self._epoch))

    def _shuffle_seed(self) -> int | None:
        if self.seed is not None:
            return int(self.seed)
        env = os.environ.get("PL_GLOBAL_SEED")
        return int(env) if env is not None else None

    def source(self, shuffle: bool) -> Any:
        """The Dataset to read: with ``shuffle``, a global shuffle that takes a new order at every pass."""
        if not shuffle:
            return self.dataset
        from raylit.launch.ray_data import reshuffled_every_pass

        return reshuffled_every_pass(self.dataset, self._shuffle_seed())

    # --- over the workers of a DistributedRuntime ---------------------------------------------------------
    def shard(self, runtime: Any, stage: str, shuffle: bool | None = None) -> _RayDataShard:
        """This rank's part of the Dataset. A collective: every rank calls it at the same point (the loop
        loads dataloaders on all ranks together). Raises on every rank when Ray Data could not get a CPU."""
        from raylit.launch.ray_data import split_for_ranks

        do_shuffle = self.shuffle if shuffle is None else shuffle
        iterator = split_for_ranks(
            runtime, lambda: self.source(do_shuffle), equal=stage != "predict", data_cpus=self.data_cpus
        )
        return _RayDataShard(iterator, self)


class _RayDataShard:
    """One rank's split of a ``RayDataLoader``: each ``iter()`` is one epoch of ``DataIterator`` batches. All
    ranks must start their epochs together (the split coordinator waits for every rank), which the loop does.
    Rank 0's copy holds the coordinator's owner handle: the coordinator lives as long as rank 0's worker."""

    def __init__(self, iterator: Any, settings: RayDataLoader) -> None:
        self.iterator = iterator
        self.settings = settings
        self.batch_size = settings.batch_size
        self._epoch = 0

    def __iter__(self) -> Iterator[Any]:
        self._epoch += 1
        return iter(_torch_batches(self.iterator, self.settings, self._epoch))


def _torch_batches(source: Any, s: RayDataLoader, epoch: int) -> Any:
    local_seed = None
    if s.local_shuffle_buffer_size is not None:
        base = s._shuffle_seed()
        local_seed = None if base is None else base + epoch
    return source.iter_torch_batches(
        batch_size=s.batch_size,
        dtypes=s.dtypes,
        device="cpu",  # raylit's transfer_batch_to_device hook moves batches, as for DataLoaders
        collate_fn=s.collate_fn,
        drop_last=s.drop_last,
        prefetch_batches=s.prefetch_batches,
        local_shuffle_buffer_size=s.local_shuffle_buffer_size,
        local_shuffle_seed=local_seed,
    )
