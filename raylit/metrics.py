"""What ``self.log`` does: per-hook defaults and permissions, step values, epoch reductions, and the three
views the Trainer exposes (``callback_metrics``, ``logged_metrics``, ``progress_bar_metrics``).

Nothing here reads a tensor's value on the host during a step (on a GPU such a read waits for the device):
``progress_bar_metrics`` holds the logged tensors and turns them into Python numbers only when it is read
(a progress bar redraw, user code), and the loggers read their values at logging steps only."""

import numbers
import warnings
from typing import Any

import torch
from torch import Tensor

from raylit.utilities.apply_func import extract_batch_size
from raylit.utilities.exceptions import MisconfigurationException

_TRAIN_STEP_HOOKS = frozenset(
    "training_step on_train_batch_start on_train_batch_end on_before_backward backward on_after_backward "
    "on_before_optimizer_step optimizer_step configure_gradient_clipping clip_gradients on_before_zero_grad "
    "optimizer_zero_grad".split()
)
_EVAL_STEP_HOOKS = frozenset(
    "validation_step test_step on_validation_batch_start on_validation_batch_end on_test_batch_start "
    "on_test_batch_end".split()
)
_EPOCH_ONLY_HOOKS = frozenset(
    "on_train_start on_train_epoch_start on_train_epoch_end on_validation_start on_validation_epoch_start "
    "on_validation_epoch_end on_test_start on_test_epoch_start on_test_epoch_end".split()
)

_REDUCTIONS = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min"}
_TORCH_REDUCTIONS = {
    torch.mean: "mean",
    torch.sum: "sum",
    sum: "sum",
    torch.max: "max",
    max: "max",
    torch.min: "min",
    min: "min",
}


def _resolve_flags(fx: str | None, name: str, on_step: bool | None, on_epoch: bool | None) -> tuple[bool, bool]:
    if fx is None:
        raise MisconfigurationException(
            f"You are trying to `self.log({name!r}, ...)` but it is not managed by the `Trainer` control flow"
        )
    if fx in _TRAIN_STEP_HOOKS:
        defaults = (True, False)
    elif fx in _EVAL_STEP_HOOKS:
        defaults = (False, True)
    elif fx in _EPOCH_ONLY_HOOKS:
        if on_step:
            raise MisconfigurationException(
                f"You can't `self.log({name!r}, ..., on_step=True)` in `{fx}`: only on_step=False is allowed there"
            )
        if on_epoch is False:
            raise MisconfigurationException(
                f"You can't `self.log({name!r}, ..., on_epoch=False)` in `{fx}`: only on_epoch=True is allowed there"
            )
        defaults = (False, True)
    else:
        raise MisconfigurationException(
            f"You can't `self.log({name!r}, ...)` inside `{fx}`. Logging is allowed in the training/validation/"
            "test steps and the batch/epoch hooks of training, validation and test."
        )
    return (defaults[0] if on_step is None else on_step), (defaults[1] if on_epoch is None else on_epoch)


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


class _Views:
    """What ``MetricsConnector.views()`` returns: indexable and unpackable like the tuple (callback, logged,
    progress bar); the progress-bar view is converted to numbers only when it is taken."""

    __slots__ = ("_connector",)

    def __init__(self, connector: "MetricsConnector") -> None:
        self._connector = connector

    def __getitem__(self, i: int) -> dict:
        i = range(3)[i]  # IndexError and negative indices as a tuple's
        c = self._connector
        return c.progress_bar_numbers() if i == 2 else (c.callback_metrics, c.logged_metrics)[i]

    def __len__(self) -> int:
        return 3

    def __iter__(self):
        return iter((self[0], self[1], self[2]))


def _is_metric(value: Any) -> bool:
    return hasattr(value, "compute") and hasattr(value, "_forward_cache") and hasattr(value, "reset")


class MetricsConnector:
    """Owns the Trainer's metric views and routes ``self.log`` calls to the active loop's store."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.callback_metrics: dict[str, Tensor] = {}
        self.logged_metrics: dict[str, Tensor] = {}
        self.progress_bar_metrics: dict[str, float] = {}
        self.store: ResultStore | None = None
        self.in_batch = False  # step views while a batch runs, epoch views otherwise
        self._merged_version: tuple | None = None

    def reset_views(self) -> None:
        self.callback_metrics, self.logged_metrics, self.progress_bar_metrics = {}, {}, {}
        self._merged_version = None

    def log(
        self,
        fx: str | None,
        name: str,
        value: Any,
        *,
        prog_bar: bool,
        logger: bool | None,
        on_step: bool | None,
        on_epoch: bool | None,
        reduce_fx: Any,
        enable_graph: bool,
        sync_dist: bool,
        add_dataloader_idx: bool,
        batch_size: int | None,
        rank_zero_only: bool,
    ) -> None:
        trainer = self.trainer
        if trainer.predicting or self.store is None:
            raise MisconfigurationException(
                f"You can't `self.log({name!r}, ...)` inside `{fx}`: "
                "logging is not supported during predict or outside the loops"
            )
        if getattr(trainer, "barebones", False):
            warnings.warn("`self.log` does nothing with `Trainer(barebones=True)`", UserWarning, stacklevel=3)
            return
        on_step, on_epoch = _resolve_flags(fx, name, on_step, on_epoch)
        if not on_step and not on_epoch:
            raise MisconfigurationException("`self.log(on_step=False, on_epoch=False)` is not useful.")
        # Lightning's wording for values it cannot log: `self.log(name, value)`
        if isinstance(value, dict):
            raise ValueError(f"`self.log({name}, {value})` was called, but nested dictionaries cannot be logged")
        if isinstance(value, Tensor) and value.numel() != 1:
            raise ValueError(
                f"`self.log({name}, {value})` was called, but the tensor must have a single element. "
                f"You can try doing `self.log({name}, {value}.mean())`"
            )
        if not isinstance(value, (Tensor, numbers.Number)) and not _is_metric(value):
            raise ValueError(
                f"`self.log({name}, {value})` was called, but `{type(value).__name__}` values cannot be logged"
            )
        if add_dataloader_idx and "/dataloader_idx_" in name:
            raise MisconfigurationException(
                f"You called `self.log` with the key `{name}` but it should not contain information about "
                "`dataloader_idx`"
            )
        reduce = _REDUCTIONS.get(reduce_fx.lower()) if isinstance(reduce_fx, str) else _TORCH_REDUCTIONS.get(reduce_fx)
        if reduce is None:
            raise MisconfigurationException(
                f"`self.log({name!r}, ..., reduce_fx={reduce_fx!r})`: reduce_fx must "
                "be one of 'mean', 'avg', 'sum', 'max', 'min' (or torch.mean/sum/max/min)"
            )
        sync = sync_dist and not rank_zero_only and trainer._runtime.distributed
        self.store.log(
            fx,
            name,
            value,
            prog_bar,
            True if logger is None else logger,
            on_step,
            on_epoch,
            reduce,
            sync,
            add_dataloader_idx,
            batch_size,
            enable_graph,
        )
        if (sync or (_is_metric(value) and trainer._runtime.distributed)) and fx in _EPOCH_ONLY_HOOKS:
            # every rank runs this hook: reduce now, so monitors and rank-0 readers see the synced value
            self.store.compute_synced()

    # --- views ----------------------------------------------------------------------------------------
    def _merge_live(self) -> None:
        store = self.store
        if store is None:
            return
        version = (id(store), store.version, self.in_batch, store.dataloader_idx)
        if version == self._merged_version:
            return
        callback, log, pbar = store.views(self.in_batch)
        self.callback_metrics.update(callback)
        self.logged_metrics.update(log)
        self.progress_bar_metrics.update(pbar)
        self._merged_version = version

    def views(self) -> "_Views":
        """(callback, logged, progress bar) metrics. Only taking the progress-bar view (``[2]``) reads values
        from the device; see ``progress_bar_numbers``."""
        self._merge_live()
        return _Views(self)

    def progress_bar_numbers(self) -> dict[str, Any]:
        """``progress_bar_metrics`` with every tensor turned into a Python number (or list), in place: the
        tensors of the latest step are read here, when someone looks, not at every step."""
        pbar = self.progress_bar_metrics
        for k, v in pbar.items():
            if isinstance(v, Tensor):
                pbar[k] = v.item() if v.numel() == 1 else v.tolist()
        return pbar

    def begin_batch(self, batch: Any, dataloader_idx: int | None = None) -> None:
        store = self.store
        store.batch, store.batch_size, store.dataloader_idx = batch, None, dataloader_idx
        self.in_batch = True

    def end_batch(self) -> dict[str, Tensor]:
        """Merge the batch's step values into the views; returns the ones for the loggers."""
        store = self.store
        callback, log, pbar = store.views(True)
        self.callback_metrics.update(callback)
        self.logged_metrics.update(log)
        self.progress_bar_metrics.update(pbar)
        self._merged_version = (id(store), store.version, True, store.dataloader_idx)
        store.batch = store.batch_size = None
        return log

    def end_epoch(self) -> None:
        """Switch to epoch views (before the epoch-end hooks, so monitors see epoch values). All ranks call
        this together, so cross-rank reductions of what the steps logged happen here."""
        self.in_batch = False
        if self.store is not None:
            self.store.compute_synced()

    def epoch_log_metrics(self) -> dict[str, Tensor]:
        """Merge the epoch values into the views; returns the ones for the loggers."""
        self.in_batch = False
        callback, log, pbar = self.store.views(False, allow_sync=True)
        self.callback_metrics.update(callback)
        self.logged_metrics.update(log)
        self.progress_bar_metrics.update(pbar)
        return log

    def send_to_loggers(
        self, metrics: dict[str, Any], step: int | None = None, default_step: int | None = None
    ) -> None:
        """Hand ``metrics`` to every logger (rank 0). Without ``step``, a logged "step" value is the step, else
        ``default_step``, else the loggers' step axis (``batches_that_stepped``); "epoch" is added then."""
        trainer = self.trainer
        if not trainer.loggers or not metrics:
            return
        self.logged_metrics.update(metrics)
        scalars = {k: (v.item() if isinstance(v, Tensor) and v.numel() == 1 else v) for k, v in metrics.items()}
        if step is None:
            step_metric = scalars.pop("step", None)
            if step_metric is not None:
                step = int(step_metric)
            else:
                scalars.setdefault("epoch", trainer.current_epoch)
                step = trainer._logger_step if default_step is None else default_step
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.log_metrics(metrics=scalars, step=step)
                lg.save()
