"""ResultStore: the values ``self.log`` recorded in one loop (training, or one validation/test run), their
step values and epoch reductions (batch-size-weighted means, sums, extrema, cross-rank syncs), and the
(callback, logged, progress bar) views built from them. ``raylit/metrics.py`` routes ``self.log`` calls here."""

from typing import Any

import torch
from torch import Tensor

from raylit.utilities.apply_func import extract_batch_size
from raylit.utilities.exceptions import MisconfigurationException


class _Entry:
    __slots__ = (
        "name",
        "dl_idx",
        "prog_bar",
        "logger",
        "on_step",
        "on_epoch",
        "reduce",
        "sync",
        "meta",
        "step_value",
        "total",
        "weight",
        "metric",
        "computed",
        "active",
        "origin",
    )

    def __init__(self, name: str, dl_idx: int | None, meta: tuple) -> None:
        self.name = name
        self.dl_idx = dl_idx
        self.meta = meta
        self.prog_bar, self.logger, self.on_step, self.on_epoch, self.reduce, self.sync, _ = meta
        self.metric: Any = None
        self.step_value: Tensor | None = None
        self.total: Tensor | None = None
        self.weight: Any = 0
        self.computed: Tensor | None = None
        self.active = False
        self.origin: int | None = None  # the dataloader that logged it (also with add_dataloader_idx=False)

    def reset(self) -> None:
        self.step_value = self.total = self.computed = None
        self.weight = 0
        self.active = False
        if self.metric is not None:
            self.metric.reset()

    def forked(self, on_step: bool) -> str:
        if self.on_step and self.on_epoch:
            return f"{self.name}_{'step' if on_step else 'epoch'}"
        return self.name


class ResultStore:
    """The values logged during one loop (the training epochs, or one evaluation run)."""

    def __init__(self, training: bool, runtime: Any) -> None:
        self.training = training
        self.runtime = runtime
        self.entries: dict[tuple, _Entry] = {}
        self.batch: Any = None
        self.batch_size: int | None = None
        self.dataloader_idx: int | None = None
        self.version = 0  # bumped on every change, so views are recomputed only when needed

    def reset(self) -> None:
        for e in self.entries.values():
            e.reset()
        self.version += 1

    def state_dict(self) -> dict[str, Any]:
        """The running sums behind this loop's ``on_epoch`` values so far (on the CPU), which a run restored in
        the middle of an epoch continues. torchmetrics objects keep their own state and are not included."""
        sums = []
        for (fx, name, dl_idx), e in self.entries.items():
            if e.active and e.on_epoch and e.metric is None and e.total is not None:
                weight = e.weight.detach().cpu() if isinstance(e.weight, Tensor) else e.weight
                sums.append((str(fx), name, dl_idx, tuple(e.meta), e.total.detach().cpu(), weight))
        return {"epoch_sums": sums}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put the sums of ``state_dict()`` back (on this store's device), as if they had been logged here."""
        device = self.runtime.device
        for fx, name, dl_idx, meta, total, weight in state.get("epoch_sums", []):
            entry = _Entry(name, dl_idx, tuple(meta))
            entry.total = total.to(device)
            entry.weight = weight.to(device) if isinstance(weight, Tensor) else weight
            entry.active = True
            self.entries[(fx, name, dl_idx)] = entry
        self.version += 1

    def log(
        self,
        fx: str,
        name: str,
        value: Any,
        prog_bar: bool,
        logger: bool,
        on_step: bool,
        on_epoch: bool,
        reduce: str,
        sync: bool,
        add_dataloader_idx: bool,
        batch_size: int | None,
        enable_graph: bool,
    ) -> None:
        dl_idx = self.dataloader_idx if add_dataloader_idx else None
        key = (fx, name, dl_idx)
        meta = (prog_bar, logger, on_step, on_epoch, reduce, sync, add_dataloader_idx)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = _Entry(name, dl_idx, meta)
        elif entry.meta != meta:
            raise MisconfigurationException(
                f"You called `self.log({name}, ...)` twice in `{fx}` with different arguments. This is not allowed"
            )
        self.version += 1
        entry.active = True
        entry.origin = self.dataloader_idx
        entry.computed = None
        if _is_metric(value):
            entry.metric = value
            return
        if not isinstance(value, Tensor):
            value = torch.tensor(value, dtype=torch.get_default_dtype())
        elif not enable_graph:
            value = value.detach()
        if value.dtype not in (torch.float32, torch.float64):
            value = value.to(torch.get_default_dtype())
        if value.dim():  # one element (checked by self.log): stored as a scalar, as Lightning does
            value = value.squeeze()
        if on_step:
            step_value = value
            if sync:
                step_value = self.runtime.reduce(value.clone(), reduce)
            entry.step_value = step_value
            if not on_epoch:
                return
        if reduce == "mean":
            if batch_size is None:
                if self.batch_size is None:
                    self.batch_size = extract_batch_size(self.batch) if self.batch is not None else 1
                batch_size = self.batch_size
            entry.total = value * batch_size if entry.total is None else entry.total + value * batch_size
            entry.weight = entry.weight + batch_size
        elif reduce == "sum":
            entry.total = value if entry.total is None else entry.total + value
        elif reduce == "max":
            entry.total = value if entry.total is None else torch.maximum(entry.total, value)
        else:
            entry.total = value if entry.total is None else torch.minimum(entry.total, value)

    def _epoch_value(self, e: _Entry, allow_sync: bool = True) -> Tensor | None:
        if e.computed is not None:
            return e.computed
        if not allow_sync and (e.sync or (e.metric is not None and self.runtime.distributed)):
            # reducing across ranks is a collective: it happens only where every rank computes (see
            # MetricsConnector.sync_epoch_values), never because one rank happened to read a view
            return None
        if e.metric is not None:
            value = e.metric.compute()
        elif e.total is None:
            return None
        elif e.reduce == "mean":
            total, weight = e.total, torch.as_tensor(e.weight, dtype=e.total.dtype, device=e.total.device)
            if e.sync:
                total, weight = self.runtime.reduce(total.clone(), "sum"), self.runtime.reduce(weight, "sum")
            value = total / weight
        else:
            value = self.runtime.reduce(e.total.clone(), e.reduce) if e.sync else e.total
        e.computed = value
        return value

    def compute_synced(self) -> None:
        """Compute every cross-rank epoch value of the current dataloader now: call on all ranks together."""
        for e in self.entries.values():
            collective = e.sync or (e.metric is not None and self.runtime.distributed)  # Metric.compute syncs
            if e.active and collective and e.on_epoch and e.dl_idx == self.dataloader_idx:
                self._epoch_value(e)

    def views(self, on_step: bool, allow_sync: bool = False) -> tuple[dict, dict, dict]:
        """(callback, log, progress bar) metrics: step values during a batch, epoch values after the loop.
        Cross-rank values not computed yet are left out unless ``allow_sync`` (all ranks are here)."""
        callback: dict[str, Tensor] = {}
        log: dict[str, Tensor] = {}
        pbar: dict[str, Tensor] = {}  # numbers once read (MetricsConnector.progress_bar_numbers)
        for e in self.entries.values():
            # a value belongs to the dataloader it names, or (add_dataloader_idx=False) to the one that logged it
            if not e.active or (e.dl_idx if e.dl_idx is not None else e.origin) != self.dataloader_idx:
                continue
            if on_step:
                if not e.on_step:
                    continue
                value = e.metric._forward_cache if e.metric is not None else e.step_value
            else:
                if not e.on_epoch:
                    continue
                value = self._epoch_value(e, allow_sync)
            if not isinstance(value, Tensor):
                continue
            name, forked = e.name, e.forked(on_step)
            if e.dl_idx is not None:
                suffix = f"/dataloader_idx_{e.dl_idx}"
                name, forked = name + suffix, forked + suffix
            if e.logger:
                log[forked] = value
            if self.training or (e.on_epoch and not on_step):
                callback[name] = value
                callback[forked] = value
            if e.prog_bar:
                pbar[forked] = value
        return callback, log, pbar



def _is_metric(value: Any) -> bool:
    if isinstance(value, Tensor):  # the common case, answered without three failing attribute lookups
        return False
    return hasattr(value, "compute") and hasattr(value, "_forward_cache") and hasattr(value, "reset")


def merge_epoch_sums(per_rank: list[dict[str, Any]], world_size: int) -> dict[str, Any]:
    """Every old rank's ``state_dict()`` combined into the state of one rank of ``world_size`` (an elastic run
    restored at another size): additive sums (mean, sum) are split evenly over the new ranks, max/min combined.
    A synced epoch value then equals the uninterrupted run's, and every rank's own mean is the old global one."""
    merged: dict[tuple, list] = {}
    for state in per_rank:
        for fx, name, dl_idx, meta, total, weight in state.get("epoch_sums", []):
            key = (fx, name, dl_idx)
            if key not in merged:
                merged[key] = [fx, name, dl_idx, meta, total.clone(), weight]
                continue
            entry, reduce = merged[key], meta[4]
            if reduce in ("max", "min"):
                entry[4] = torch.maximum(entry[4], total) if reduce == "max" else torch.minimum(entry[4], total)
            else:
                entry[4], entry[5] = entry[4] + total, entry[5] + weight
    for entry in merged.values():
        if entry[3][4] not in ("max", "min"):
            entry[4], entry[5] = entry[4] / world_size, entry[5] / world_size
    return {"epoch_sums": [tuple(e) for e in merged.values()]}

