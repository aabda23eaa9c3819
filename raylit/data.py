"""Dataloaders: where they come from, how many batches a run uses, and how batches are iterated."""

import inspect
import math
from itertools import islice
from typing import Any, Iterable, Iterator

from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler

from raylit.ray_data import RayDataLoader, as_loader, is_ray_data  # noqa: F401  (RayDataLoader: public here)
from raylit.utilities.combined_loader import CombinedLoader
from raylit.utilities.exceptions import MisconfigurationException


def has_len(loader: Any) -> bool:
    try:
        return len(loader) is not None
    except (TypeError, NotImplementedError):
        return False


def limit_batches(loader: Any, limit: int | float, name: str) -> int | float:
    """Number of batches of ``loader`` a run uses under ``limit_<stage>_batches`` (``inf`` when unknown)."""
    n = len(loader) if has_len(loader) else math.inf
    if isinstance(limit, int):
        return min(n, limit)
    if n == math.inf:
        if limit == 1.0:
            return math.inf
        if limit == 0.0:
            return 0
        raise MisconfigurationException(
            f"When using an `IterableDataset`, `Trainer(limit_{name}_batches)` must be `1.0` or an int. An int "
            f"specifies `num_{name}_batches` to use.")
    used = int(n * limit)
    if used == 0 and limit > 0.0 and n > 0:
        min_pct = 1.0 / n
        raise MisconfigurationException(
            f"You requested to check {limit} of the `{name}_dataloader` but {limit} * {n} < 1. Please increase "
            f"the `limit_{name}_batches` argument. Try at least `limit_{name}_batches={min_pct}`")
    return used


def as_eval_list(obj: Any) -> list:
    if obj is None:
        return []
    if isinstance(obj, CombinedLoader):  # evaluation runs its loaders one after the other
        return [as_loader(x) for x in obj.flattened]
    if isinstance(obj, dict):
        return [as_loader(x) for x in obj.values()]
    if isinstance(obj, (list, tuple)):
        return [as_loader(x) for x in obj]
    return [as_loader(obj)]


def as_train_loader(obj: Any) -> Any:
    """The training loader(s); a bare ``ray.data.Dataset`` is read through a default ``RayDataLoader``."""
    if isinstance(obj, (list, tuple, dict)):
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        if any(is_ray_data(x) for _, x in items):
            raise MisconfigurationException(
                "Several training loaders including a Ray Dataset are not supported: a CombinedLoader needs "
                "lengths; merge the datasets with ray.data (union/zip) into one RayDataLoader instead")
        return CombinedLoader(obj, "max_size_cycle")
    return as_loader(obj)


def check_train_mode(loader: Any) -> None:
    """Training refuses a sequential CombinedLoader (Lightning raises once the training data is sized)."""
    if isinstance(loader, CombinedLoader) and loader.mode == "sequential":
        raise ValueError('`_FitLoop` does not support the `CombinedLoader(mode="sequential")` mode. The available '
                         "modes are: ['min_size', 'max_size_cycle', 'max_size']")


def train_batches(loader: Any) -> Any:
    """What a training epoch iterates: the batches (a CombinedLoader's, without its index triples)."""
    return loader.batches() if isinstance(loader, CombinedLoader) else loader


def lookahead(iterable: Iterable, limit: int | float, skip: int = 0) -> Iterator[tuple[int, Any, bool]]:
    """Yield (batch_idx, batch, is_last). Knowing the last batch needs one batch of look-ahead, as in
    Lightning, so both fetch batches (and draw RNG for shuffling) at the same moments. ``skip`` drops the
    first batches (a resumed epoch) before anything is yielded; the iterator is created here, eagerly."""
    it = iter(iterable) if limit == math.inf else islice(iterable, int(limit))
    for _ in range(skip):
        next(it, None)
    return _lookahead(it, skip)


def _lookahead(it: Iterator, idx: int) -> Iterator[tuple[int, Any, bool]]:
    try:
        nxt = next(it)
    except StopIteration:
        return
    while True:
        cur = nxt
        try:
            nxt = next(it)
        except StopIteration:
            yield idx, cur, True
            return
        yield idx, cur, False
        idx += 1


def sequential_lookahead(iterators: list[Iterator], limits: list) -> Iterator[tuple[int, int, Any, bool]]:
    """Several eval loaders one after another: (dataloader_idx, batch_idx, batch, is_last_overall)."""

    def chained() -> Iterator[tuple[int, int, Any]]:
        for dl_idx, (make, limit) in enumerate(zip(iterators, limits)):
            if limit == 0:
                continue
            it = make()
            for batch_idx, batch in enumerate(it if limit == math.inf else islice(it, int(limit))):
                yield dl_idx, batch_idx, batch

    for _, (dl_idx, batch_idx, batch), is_last in lookahead(chained(), math.inf):
        yield dl_idx, batch_idx, batch, is_last


_DATALOADER_ARGS = ("batch_size", "num_workers", "collate_fn", "pin_memory", "drop_last", "timeout",
                    "worker_init_fn", "multiprocessing_context", "generator", "prefetch_factor",
                    "persistent_workers", "pin_memory_device", "in_order")


def rebuild_dataloader(loader: DataLoader, sampler: Any) -> DataLoader:
    """A copy of ``loader`` with another sampler (keeps batch size, workers, collate_fn, ...). Subclasses
    of DataLoader are rebuilt when their ``__init__`` takes the arguments needed."""
    if loader.batch_sampler is not None and loader.batch_size is None:
        raise MisconfigurationException(
            f"Cannot replace the sampler of a DataLoader that uses a custom batch_sampler "
            f"({type(loader.batch_sampler).__name__}); pass `use_distributed_sampler=False` and shard the data "
            "yourself")
    kwargs = {k: getattr(loader, k) for k in _DATALOADER_ARGS if hasattr(loader, k)}
    if kwargs.get("num_workers", 0) == 0:
        kwargs.pop("prefetch_factor", None)
        kwargs["persistent_workers"] = False
    kwargs["dataset"] = loader.dataset
    kwargs["sampler"] = sampler
    kwargs["shuffle"] = None
    cls = type(loader)
    params = inspect.signature(cls.__init__).parameters
    if cls is not DataLoader and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    if "shuffle" in kwargs and kwargs["shuffle"] is None:
        del kwargs["shuffle"]
    return cls(**kwargs)


def without_shuffle(loader: Any) -> Any:
    if isinstance(loader, DataLoader) and isinstance(loader.sampler, RandomSampler) and \
            not isinstance(loader.dataset, IterableDataset):
        return rebuild_dataloader(loader, SequentialSampler(loader.dataset))
    return loader


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """Tell every sampler of ``loader`` (a CombinedLoader's too) which epoch starts (DistributedSampler's shuffle)."""
    for dl in (loader.flattened if isinstance(loader, CombinedLoader) else [loader]):
        for obj in (getattr(dl, "sampler", None), getattr(getattr(dl, "batch_sampler", None), "sampler", None)):
            if obj is not None and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
