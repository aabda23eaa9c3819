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

from raylit.result_store import ResultStore, _is_metric
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


def _metric_attribute(connector: "MetricsConnector", module: Any, name: str, metric: Any) -> str:
    """The attribute of ``module`` that holds the logged torchmetrics ``metric`` (its state is saved with the
    module's); as in Lightning, the module's metrics are looked up once (per run here: the ids mean nothing
    in another process) and a metric that is not one of them is an error."""
    cached = connector._metric_attributes
    if cached is not None and cached[0] is module:
        found = cached[1]
    else:
        found = {id(m): n for n, m in module.named_modules() if _is_metric(m)}
        connector._metric_attributes = (module, found)
        if not found:
            raise MisconfigurationException(
                "Could not find the `LightningModule` attribute for the `torchmetrics.Metric` logged. You can fix "
                "this by setting an attribute for the metric in your `LightningModule`.")
    attribute = found.get(id(metric))
    if attribute is None:
        raise MisconfigurationException(
            "Could not find the `LightningModule` attribute for the `torchmetrics.Metric` logged. You can fix this by "
            f"calling `self.log({name}, ..., metric_attribute=name)` where `name` is one of {list(found.values())}")
    return attribute


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
        self._metric_attributes: tuple[Any, dict[int, str]] | None = None  # (module, {id(metric): attribute})

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
        metric_attribute: str | None = None,
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
        is_metric = _is_metric(value)
        if not is_metric and not isinstance(value, (Tensor, numbers.Number)):
            raise ValueError(
                f"`self.log({name}, {value})` was called, but `{type(value).__name__}` values cannot be logged"
            )
        if add_dataloader_idx and "/dataloader_idx_" in name:
            raise MisconfigurationException(
                f"You called `self.log` with the key `{name}` but it should not contain information about "
                "`dataloader_idx` when `add_dataloader_idx=True`"
            )
        if metric_attribute is None and is_metric:
            _metric_attribute(self, trainer.lightning_module, name, value)
        reduce = _REDUCTIONS.get(reduce_fx) or _REDUCTIONS.get(reduce_fx.lower()) if isinstance(reduce_fx, str) else \
            _TORCH_REDUCTIONS.get(reduce_fx)
        if reduce is None:
            raise MisconfigurationException(
                "Only `self.log(..., reduce_fx={min,max,mean,sum})` are supported. If you need a custom reduction, "
                f"please log a `torchmetrics.Metric` instance instead. Found: {reduce_fx}"
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
        if (sync or (is_metric and trainer._runtime.distributed)) and fx in _EPOCH_ONLY_HOOKS:
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
        if not store.entries:  # nothing logged yet this stage
            store.batch = store.batch_size = None
            return {}
        callback, log, pbar = store.views(True)
        if callback:
            self.callback_metrics.update(callback)
        if log:
            self.logged_metrics.update(log)
        if pbar:
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
