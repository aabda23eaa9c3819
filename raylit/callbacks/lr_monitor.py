"""LearningRateMonitor: log each optimizer's learning rate (and optionally momentum and weight decay)."""

from collections import Counter
from typing import Any, Literal

import torch

from raylit.callbacks.base import Callback
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.rank_zero import rank_zero_warn


class LearningRateMonitor(Callback):
    r"""Log learning rates to every logger, named as in Lightning:

    - ``lr-<OptimizerClass>``; a second unnamed optimizer of the same class gets ``-1``, a third ``-2``...;
    - several param groups: ``/pg1``, ``/pg2``... or ``/<name>`` when the group has a ``"name"``;
    - a scheduler config ``name`` replaces ``lr-<OptimizerClass>``;
    - ``-momentum`` (``betas[0]`` for Adam-like optimizers) and ``-weight_decay`` suffixes for the extra stats.

    ``logging_interval=None`` logs each scheduler's optimizer on that scheduler's ``interval`` (optimizers
    without a scheduler on every logged step); ``"step"`` or ``"epoch"`` logs all of them at that interval.
    Step values are logged in ``on_train_batch_start`` on the steps the Trainer logs (``log_every_n_steps``),
    epoch values in ``on_train_epoch_start``. The values are also put in ``trainer.callback_metrics``.
    """

    def __init__(
        self,
        logging_interval: Literal["step", "epoch"] | None = None,
        log_momentum: bool = False,
        log_weight_decay: bool = False,
    ) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise MisconfigurationException("logging_interval should be `step` or `epoch` or `None`.")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: dict[str, list[float]] = {}
        self.last_momentum_values: dict[str, float | None] = {}
        self.last_weight_decay_values: dict[str, float | None] = {}

    def on_train_start(self, trainer, *args: Any, **kwargs: Any) -> None:
        if not trainer.loggers:
            raise MisconfigurationException(
                "Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger."
            )
        if self.log_momentum:
            optimizers = [c.scheduler.optimizer for c in trainer.lr_scheduler_configs] or _unwrap(trainer.optimizers)
            if any("momentum" not in o.defaults and "betas" not in o.defaults for o in optimizers):
                rank_zero_warn(
                    "You have set log_momentum=True, but some optimizers do not"
                    " have momentum. This will log a value 0 for the momentum.",
                    category=RuntimeWarning,
                )
        names = [name for _, _, group_names in self._named_optimizers(trainer) for name in group_names]
        self.lrs = {name: [] for name in names}
        self.last_momentum_values = {f"{name}-momentum": None for name in names}
        self.last_weight_decay_values = {f"{name}-weight_decay": None for name in names}

    def on_train_batch_start(self, trainer, *args: Any, **kwargs: Any) -> None:
        if self.logging_interval == "epoch" or not _should_update_logs(trainer):
            return
        self._log(trainer, "step" if self.logging_interval is None else "any")

    def on_train_epoch_start(self, trainer, *args: Any, **kwargs: Any) -> None:
        if self.logging_interval != "step":
            self._log(trainer, "epoch" if self.logging_interval is None else "any")

    def _log(self, trainer, interval: str) -> None:
        stats = self._extract_stats(trainer, interval)
        if stats:
            for logger in trainer.loggers:
                logger.log_metrics(stats, step=trainer._logger_step)

    def _extract_stats(self, trainer, interval: str) -> dict[str, float]:
        stats: dict[str, float] = {}
        for optimizer, sched_interval, group_names in self._named_optimizers(trainer):
            # Optimizers without a scheduler (sched_interval None) are logged at every interval.
            if sched_interval is not None and interval not in (sched_interval, "any"):
                continue
            self._remap_pg1(group_names)
            use_betas = "betas" in optimizer.defaults
            for group, name in zip(optimizer.param_groups, group_names):
                stats[name] = group["lr"]
                self.lrs.setdefault(name, []).append(group["lr"])
                if self.log_momentum:
                    momentum = group["betas"][0] if use_betas else group.get("momentum", 0)
                    stats[f"{name}-momentum"] = self.last_momentum_values[f"{name}-momentum"] = momentum
                if self.log_weight_decay:
                    decay = group["weight_decay"]
                    stats[f"{name}-weight_decay"] = self.last_weight_decay_values[f"{name}-weight_decay"] = decay
        device = trainer.lightning_module.device if trainer.lightning_module is not None else "cpu"
        trainer.callback_metrics.update({k: torch.tensor(v, device=device) for k, v in stats.items()})
        return stats

    def _remap_pg1(self, group_names: list[str]) -> None:
        """An optimizer that gained param groups turns ``name`` into ``name/pg1``: keep its history."""
        for name in group_names:
            old = name.replace("/pg1", "")
            if "/pg1" in name and old in self.lrs:
                self.lrs[name] = self.lrs.pop(old)

    def _named_optimizers(self, trainer) -> list[tuple[Any, str | None, list[str]]]:
        """(optimizer, its scheduler's interval or None, one log name per param group), schedulers first."""
        type_counts: Counter = Counter()
        result: list[tuple[Any, str | None, list[str]]] = []
        seen: list[Any] = []

        def add(optimizer: Any, interval: str | None, explicit_name: str | None) -> None:
            seen.append(optimizer)
            if explicit_name is None:
                type_counts[type(optimizer)] += 1
            name = explicit_name or f"lr-{type(optimizer).__name__}"
            count = type_counts[type(optimizer)]
            if count > 1:
                name += f"-{count - 1}"
            result.append((optimizer, interval, self._group_names(name, optimizer.param_groups)))

        for config in trainer.lr_scheduler_configs:
            add(config.scheduler.optimizer, config.interval, config.name)
        for optimizer in _unwrap(trainer.optimizers):
            if not any(optimizer is s for s in seen):
                add(optimizer, None, None)
        return result

    @staticmethod
    def _group_names(name: str, param_groups: list[dict]) -> list[str]:
        if len(param_groups) == 1:
            group_name = param_groups[0].get("name")
            return [f"{name}/{group_name}" if group_name else name]
        names = [group.get("name", f"pg{i}") for i, group in enumerate(param_groups, start=1)]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise MisconfigurationException(
                "A single `Optimizer` cannot have multiple parameter groups with identical "
                f"`name` values. {name} has duplicated parameter group names {duplicates}"
            )
        return [f"{name}/{n}" for n in names]


def _unwrap(optimizers: list[Any]) -> list[Any]:
    """Plain torch optimizers (Lightning-style wrappers keep theirs in ``.optimizer``)."""
    return [getattr(o, "optimizer", o) for o in optimizers]


def _should_update_logs(trainer) -> bool:
    """Whether the Trainer flushes step metrics on the coming step (Lightning's ``should_update_logs``)."""
    every = getattr(trainer, "log_every_n_steps", 50)
    if not every:
        return False
    return (trainer._logger_step + 1) % every == 0 or trainer.should_stop
