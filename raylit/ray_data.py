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
workers when it can see Ray Data on the driver (see ``data_cpus_needed``), raylit's private local Ray always has
one logical CPU to spare, and rank 0 checks the real placement before splitting: ``cpu_problem``.

Nothing here imports Ray at module import time (``import raylit`` must not).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from raylit.utilities.exceptions import MisconfigurationException

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
        _ensure_ray()
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
        from ray.data import RandomSeedConfig

        seed = RandomSeedConfig(seed=self._shuffle_seed(), reseed_after_execution=True)
        return self.dataset.random_shuffle(seed=seed)

    # --- over the workers of a DistributedRuntime ---------------------------------------------------------
    def shard(self, runtime: Any, stage: str, shuffle: bool | None = None) -> _RayDataShard:
        """This rank's part of the Dataset. A collective: every rank calls it at the same point (the loop
        loads dataloaders on all ranks together). Raises on every rank when Ray Data could not get a CPU."""
        import ray

        do_shuffle = self.shuffle if shuffle is None else shuffle
        me = (ray.get_runtime_context().get_node_id(), _assigned_cpus())
        everyone = runtime.all_gather_object(me)
        payload: Any = None
        if runtime.global_rank == 0:
            problem = cpu_problem(_node_cpus(), everyone, self.data_cpus)
            if problem is not None:
                payload = ("error", problem)
            else:
                ds = self.source(do_shuffle)
                ds = ds.copy(ds)  # our own context: no progress bars from the coordinator (rank 0 has one)
                ds.context.enable_progress_bars = False
                splits = ds.streaming_split(
                    runtime.world_size, equal=stage != "predict", locality_hints=[node for node, _ in everyone]
                )
                payload = ("ok", splits)
        kind, value = runtime.broadcast(payload)
        if kind == "error":
            raise MisconfigurationException(value)
        return _RayDataShard(value[runtime.global_rank], self)


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


def _ensure_ray() -> None:
    """In-process runs: connect the way the launcher does (RAY_ADDRESS, else a private local instance) rather
    than letting Ray Data's implicit ``ray.init()`` join whatever cluster ``ray start`` last recorded."""
    import ray

    if not ray.is_initialized():
        from raylit.launch.session import connect

        connect(0, 0)


def _assigned_cpus() -> float:
    import ray

    try:
        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0))
    except Exception:
        return 0.0


def _node_cpus() -> dict[str, float]:
    import ray

    return {n["NodeID"]: float(n.get("Resources", {}).get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")}


# --------------------------------------------------------------------------------------------------------------
# CPU budget
# --------------------------------------------------------------------------------------------------------------
def cpu_problem(node_cpus: dict[str, float], workers: list[tuple[str, float]], data_cpus: float) -> str | None:
    """Why Ray Data cannot run next to these training workers, or None. ``node_cpus``: CPUs of each alive node;
    ``workers``: (node id, CPUs held) of every training worker. A Ray Data task needs ``data_cpus`` free CPUs
    on one node (other jobs on a shared cluster are not counted: this catches configurations that can never
    work, which would otherwise wait forever)."""
    if data_cpus <= 0:
        return None
    free = dict(node_cpus)
    for node, cpus in workers:
        free[node] = free.get(node, 0.0) - cpus
    best = max(free.values(), default=0.0)
    if best + 1e-9 >= data_cpus:
        return None
    held = sum(c for _, c in workers)
    return (
        f"Ray Data needs {data_cpus:g} free CPU(s) on some node beyond the training workers, but the "
        f"{len(workers)} workers hold {held:g} of the cluster's {sum(node_cpus.values()):g} CPUs and leave at most "
        f"{max(best, 0.0):g} free on any node: its read/map tasks would wait forever. Give the workers fewer "
        f"CPUs (e.g. Trainer(scaling_config=ray.train.ScalingConfig(num_workers={len(workers)}, "
        f"resources_per_worker={{'CPU': 0.5}}))), use fewer devices, or a bigger cluster. (raylit sizes the "
        "workers itself when the Dataset is visible on the driver: passed to fit() or held by the datamodule/"
        "module when fit() is called.)"
    )
