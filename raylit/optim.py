"""Normalise what ``configure_optimizers`` returns, and the optimizer wrapper users get from
``self.optimizers()``."""

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.optim import Optimizer

from raylit.utilities.exceptions import MisconfigurationException

_SCHED_KEYS = {"scheduler", "name", "interval", "frequency", "reduce_on_plateau", "monitor", "strict"}
_TOP_KEYS = {"optimizer", "lr_scheduler", "monitor"}


@dataclass
class LRSchedulerConfig:
    scheduler: Any
    name: str | None = None
    interval: str = "epoch"
    frequency: int = 1
    reduce_on_plateau: bool = False
    monitor: str | None = None
    strict: bool = True
    opt_idx: int | None = field(default=None, repr=False)


def _is_plateau(s: Any) -> bool:
    return isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau)


def _is_optimizer(o: Any) -> bool:
    return isinstance(o, Optimizer) or (hasattr(o, "step") and hasattr(o, "zero_grad") and hasattr(o, "param_groups"))


def _scheduler_config(item: Any, monitor: str | None, automatic: bool) -> LRSchedulerConfig:
    if isinstance(item, dict):
        if "scheduler" not in item:
            raise MisconfigurationException(
                f'The lr scheduler dict must have the key "scheduler" with its item being an lr scheduler; got {item}')
        unknown = set(item) - _SCHED_KEYS
        if unknown:
            warnings.warn(f"Found unsupported keys in the lr scheduler dict: {sorted(unknown)}. "
                          "These keys will be ignored.", RuntimeWarning, stacklevel=4)
        cfg = {k: v for k, v in item.items() if k in _SCHED_KEYS}
        interval = cfg.get("interval", "epoch")
        if interval not in ("step", "epoch"):
            raise MisconfigurationException(
                f'The "interval" key in lr scheduler dict must be "step" or "epoch" but is "{interval}"')
        cfg.setdefault("reduce_on_plateau", _is_plateau(cfg["scheduler"]))
        if monitor is not None and cfg.get("monitor") is None:
            cfg["monitor"] = monitor
        config = LRSchedulerConfig(**cfg)
    else:
        config = LRSchedulerConfig(scheduler=item, reduce_on_plateau=_is_plateau(item), monitor=monitor)
    if automatic and config.reduce_on_plateau and config.monitor is None:
        raise MisconfigurationException(
            "`configure_optimizers` must include a monitor when a `ReduceLROnPlateau` scheduler is used. For "
            'example: {"optimizer": optimizer, "lr_scheduler": scheduler, "monitor": "metric_to_track"}')
    if not automatic:
        ignored = [k for k in item if k in ("reduce_on_plateau", "monitor", "strict")] if isinstance(item, dict) else []
        if ignored:
            warnings.warn(f"The lr scheduler dict contains the key(s) {ignored}, but the keys will be ignored. You "
                          "need to call `lr_scheduler.step()` manually in manual optimization.", RuntimeWarning,
                          stacklevel=4)
        config.monitor = None  # in manual optimization the user steps schedulers
    if not hasattr(config.scheduler, "state_dict") or not hasattr(config.scheduler, "load_state_dict"):
        raise MisconfigurationException(
            f"The provided lr scheduler `{type(config.scheduler).__name__}` is invalid. It should have `state_dict` "
            "and `load_state_dict` methods defined.")
    return config


def is_torch_scheduler(scheduler: Any) -> bool:
    """A torch LR scheduler (``LRScheduler`` or ``ReduceLROnPlateau``), which the loop knows how to step."""
    return isinstance(scheduler, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau))


def normalize_configure_optimizers(out: Any, automatic: bool) -> tuple[list[Any], list[LRSchedulerConfig]]:
    """Turn every accepted return form into (optimizers, scheduler configs); raise for anything else."""
    if out is None:
        warnings.warn("`LightningModule.configure_optimizers` returned `None`, this fit will run with no "
                      "optimizer", UserWarning, stacklevel=3)
        return [], []
    optimizers: list[Any] = []
    schedulers: list[Any] = []
    monitor = None
    if _is_optimizer(out):
        optimizers = [out]
    elif isinstance(out, (list, tuple)) and len(out) == 2 and isinstance(out[0], list) and \
            all(_is_optimizer(o) for o in out[0]):
        optimizers = list(out[0])
        schedulers = list(out[1]) if isinstance(out[1], (list, tuple)) else [out[1]]
    elif isinstance(out, dict):
        optimizers, schedulers, monitor = _from_dict(out)
    elif isinstance(out, (list, tuple)) and out and all(isinstance(d, dict) for d in out):
        for d in out:
            opts, scheds, mon = _from_dict(d)
            optimizers += opts
            schedulers += [s if isinstance(s, dict) or mon is None else {"scheduler": s, "monitor": mon}
                           for s in scheds]
    elif isinstance(out, (list, tuple)) and out and all(_is_optimizer(o) for o in out):
        optimizers = list(out)
    else:
        raise MisconfigurationException(
            f"Unknown configuration for model optimizers: `configure_optimizers` returned {type(out).__name__} "
            f"{out!r}. Return an optimizer, a list of optimizers, a tuple of (list of optimizers, list of "
            "schedulers), a dict with an 'optimizer' key (and optionally 'lr_scheduler' and 'monitor'), or a "
            "list of such dicts.")
    configs = [_scheduler_config(s, monitor, automatic) for s in schedulers]
    for cfg in configs:
        opt = getattr(cfg.scheduler, "optimizer", None)
        if opt is not None and all(opt is not o for o in optimizers):
            raise MisconfigurationException(
                f"Some schedulers are attached with an optimizer that wasn't returned from `configure_optimizers`"
                f" ({type(cfg.scheduler).__name__}).")
    if automatic and len(optimizers) > 1:
        raise RuntimeError(
            "Training with multiple optimizers is only supported with manual optimization. Remove the extra "
            "optimizers or set `self.automatic_optimization = False` in your LightningModule.")
    return optimizers, configs


def _from_dict(d: dict) -> tuple[list, list, str | None]:
    if "optimizer" not in d:
        raise MisconfigurationException(
            f"`configure_optimizers` returned a dict without an 'optimizer' key: keys {sorted(d)}")
    unknown = set(d) - _TOP_KEYS
    if unknown:
        warnings.warn(f"Found unsupported keys in the optimizer configuration: {sorted(unknown)}",
                      RuntimeWarning, stacklevel=4)
    if not _is_optimizer(d["optimizer"]):
        raise MisconfigurationException(
            f"`configure_optimizers` returned {{'optimizer': {d['optimizer']!r}}}: not a torch optimizer")
    scheds = [d["lr_scheduler"]] if d.get("lr_scheduler") is not None else []
    return [d["optimizer"]], scheds, d.get("monitor")


class LightningOptimizer:
    """Wraps a torch optimizer so that ``step()`` goes through precision handling and hooks and counts
    ``global_step``. Every other attribute is the wrapped optimizer's."""

    def __init__(self, optimizer: Any, engine: Any) -> None:
        self._optimizer = optimizer
        self._engine = engine
        self._on_before_step: Callable[[], None] = lambda: None
        self._on_after_step: Callable[[], None] = lambda: None

    @property
    def optimizer(self) -> Any:
        return self._optimizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._optimizer, name)

    def __repr__(self) -> str:
        return f"LightningOptimizer({self._optimizer!r})"

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        return self._engine.optimizer_step(self, closure, **kwargs)

    def state_dict(self) -> dict:
        return self._optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._optimizer.load_state_dict(state)

    @property
    def param_groups(self) -> list:
        return self._optimizer.param_groups

    @property
    def state(self) -> Any:
        return self._optimizer.state

    @property
    def defaults(self) -> dict:
        return self._optimizer.defaults


def split_training_output(out: Any) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """``training_step``'s return value in automatic optimization: (the loss or None, the other outputs)."""
    if out is None:
        return None, {}
    if isinstance(out, torch.Tensor):
        return out, {}
    if isinstance(out, dict):
        if out.get("loss") is None:
            raise MisconfigurationException("In automatic_optimization, when `training_step` returns a dict, the "
                                            "'loss' key needs to be present")
        return out["loss"], {k: v for k, v in out.items() if k != "loss"}
    raise MisconfigurationException("In automatic optimization, `training_step` must return a Tensor, a dict, or "
                                    f"None (where the step will be skipped); got {type(out).__name__}")


NONE_IN_DDP = ("Skipping the `training_step` by returning None in distributed training is not supported: all "
               "ranks must run backward so gradients can be synchronised.")


def manual_training_output(out: Any) -> dict[str, Any]:
    """``training_step``'s return value in manual optimization: the batch's outputs (a loss detached)."""
    if isinstance(out, dict):
        extra = dict(out)
    elif isinstance(out, torch.Tensor):
        extra = {"loss": out}
    elif out is None:
        extra = {}
    else:
        raise MisconfigurationException(
            "In manual optimization, `training_step` must either return a Tensor or have no return.")
    if "loss" in extra and isinstance(extra["loss"], torch.Tensor):
        extra["loss"] = extra["loss"].detach()
    return extra
