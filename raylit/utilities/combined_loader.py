"""CombinedLoader: several dataloaders, possibly nested in lists and dicts, iterated as one.

Modes, as in Lightning:

- ``"max_size_cycle"`` (the default for several training loaders): until the longest loader is exhausted; shorter
  ones start over. Each batch has the structure of the collection.
- ``"min_size"``: until the shortest loader is exhausted.
- ``"max_size"``: until the longest is exhausted; an exhausted loader contributes ``None``.
- ``"sequential"``: one loader after the other, each batch on its own (the mode of evaluation loops).

Iterating a ``CombinedLoader`` yields ``(batch, batch_idx, dataloader_idx)`` as Lightning's does;
``dataloader_idx`` is 0 except in sequential mode. Training loops use :meth:`batches`.
"""

from typing import Any, Callable, Iterator

_MODES = ("min_size", "max_size_cycle", "max_size", "sequential")


class CombinedLoader:
    def __init__(self, iterables: Any, mode: str = "min_size") -> None:
        if mode not in _MODES:
            raise ValueError(f"Unsupported mode {mode!r}, please select one of: {list(_MODES)}.")
        self._iterables, self._mode = iterables, mode
        self._flattened: list[Any] = []
        self._structure = _flatten(iterables, self._flattened)

    @property
    def iterables(self) -> Any:
        """The collection the loader was built from."""
        return self._iterables

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def flattened(self) -> list[Any]:
        """The loaders, in the collection's order (depth first)."""
        return list(self._flattened)

    def map(self, fn: Callable[[Any], Any]) -> "CombinedLoader":
        """The same collection with ``fn`` applied to every loader (distributed samplers, no shuffling)."""
        return CombinedLoader(_rebuild(self._structure, iter([fn(x) for x in self._flattened])), self._mode)

    def shard(self, runtime: Any, stage: str, shuffle: bool | None) -> "CombinedLoader":
        return self.map(lambda loader: runtime.setup_dataloader(loader, stage, shuffle=shuffle))

    def __len__(self) -> int:
        lengths = [len(x) for x in self._flattened]
        if not lengths:
            return 0
        if self._mode == "sequential":
            return sum(lengths)
        return min(lengths) if self._mode == "min_size" else max(lengths)

    def __iter__(self) -> Iterator[tuple[Any, int, int]]:
        if self._mode == "sequential":
            for dl_idx, loader in enumerate(self._flattened):
                for batch_idx, batch in enumerate(loader):
                    yield batch, batch_idx, dl_idx
            return
        for batch_idx, batch in enumerate(self.batches()):
            yield batch, batch_idx, 0

    def batches(self) -> Iterator[Any]:
        """The batches alone, each with the collection's structure (not for sequential mode)."""
        if self._mode == "sequential":
            raise ValueError("`FitLoop` does not support the `sequential` mode: use 'max_size_cycle', 'max_size' or "
                             "'min_size' for training")
        n = len(self)
        if self._mode == "max_size_cycle":
            iters = [_cycled(x) for x in self._flattened]
        else:
            iters = [iter(x) for x in self._flattened]
        for _ in range(n):
            yield _rebuild(self._structure, iter([next(it, None) for it in iters]))


def _cycled(loader: Any) -> Iterator[Any]:
    """``loader`` over and over, with a fresh iterator each pass (a shuffling loader reshuffles)."""
    while True:
        empty = True
        for item in loader:
            empty = False
            yield item
        if empty:
            return


class _Leaf:
    pass


def _flatten(obj: Any, out: list) -> Any:
    if isinstance(obj, dict):
        return {k: _flatten(v, out) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_flatten(v, out) for v in obj)
    out.append(obj)
    return _Leaf


def _rebuild(structure: Any, values: Iterator) -> Any:
    if structure is _Leaf:
        return next(values)
    if isinstance(structure, dict):
        return {k: _rebuild(v, values) for k, v in structure.items()}
    return type(structure)(_rebuild(v, values) for v in structure)
