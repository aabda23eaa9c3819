"""Learning-rate range test: train with a learning rate rising from ``min_lr`` to ``max_lr``, one value per
optimizer step, record the smoothed training loss, and suggest the rate where the loss falls fastest.

The numbers are Lightning's: step 0 uses ``min_lr``, step ``k >= 1`` uses ``min_lr * (max_lr/min_lr) ** ((k+1)/N)``
(exponential) or ``min_lr + (k+1)/N * (max_lr - min_lr)`` (linear); the loss is an exponential moving average
(``beta=0.98``) with bias correction by the global step, and the search stops early once the smoothed loss exceeds
``early_stop_threshold`` times the best one. The search trains a copy of the Trainer (see ``_search.py``) inside
``isolate_rng``; the model's weights are put back afterwards.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from raylit.callbacks.base import Callback
from raylit.tuner import _search
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.rank_zero import rank_zero_warn
from raylit.utilities.seed import isolate_rng

log = logging.getLogger(__name__)


def _lr_attr_name(model: Any, datamodule: Any, attr_name: str = "") -> str:
    if attr_name:
        if not _search.has_attr(model, datamodule, attr_name):
            raise AttributeError(f"The attribute name for the learning rate was set to {attr_name}, but could not find "
                                 "this as a field in `model` or `model.hparams`.")
        return attr_name
    for name in ("lr", "learning_rate"):
        if _search.has_attr(model, datamodule, name):
            return name
    raise AttributeError("When using the learning rate finder, either `model` or `model.hparams` should have one of "
                         "these fields: ('lr', 'learning_rate'). If your model has a different name for the learning "
                         "rate, set it with `.lr_find(attr_name=...)`.")


class _LRFinder:
    """The result of ``Tuner.lr_find``: ``results = {"lr": [...], "loss": [...]}`` (one entry per optimizer
    step), ``suggestion()`` and ``plot()``."""

    def __init__(self, mode: str, lr_min: float, lr_max: float, num_training: int) -> None:
        if mode not in ("linear", "exponential"):
            raise ValueError("mode should be either `linear` or `exponential`")
        self.mode, self.lr_min, self.lr_max, self.num_training = mode, lr_min, lr_max, num_training
        self.results: dict[str, Any] = {}
        self._total_batch_idx = 0
        self._optimal_idx: int | None = None

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) of the search."""
        if step == 0:
            return self.lr_min
        r = (step + 1) / self.num_training
        if self.mode == "linear":
            return self.lr_min + r * (self.lr_max - self.lr_min)
        return self.lr_min * (self.lr_max / self.lr_min) ** r

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The learning rate at the steepest descent of the loss (finite losses only, leaving out the first
        ``skip_begin`` and last ``skip_end`` points); None when fewer than two points remain."""
        lrs_all, losses_all = self.results["lr"], self.results["loss"]
        kept = list(range(len(losses_all)))[skip_begin:-skip_end]
        losses = torch.tensor([losses_all[i] for i in kept])
        lrs = torch.tensor([lrs_all[i] for i in kept])
        finite = torch.isfinite(losses)
        losses, lrs = losses[finite], lrs[finite]
        if len(losses) < 2:
            log.error("Failed to compute suggestion for learning rate because there are not enough points. Increase "
                      "the loop iteration limits or the size of your dataset/dataloader.")
            self._optimal_idx = None
            return None
        slope = torch.gradient(losses, spacing=[lrs])[0]
        finite_idx = [i for i, ok in zip(kept, finite.tolist()) if ok]
        self._optimal_idx = finite_idx[int(torch.argmin(slope).item())]
        return lrs_all[self._optimal_idx]

    def plot(self, suggest: bool = False, show: bool = False, ax: Any = None) -> Any:
        """Loss against learning rate (log scale for the exponential mode); ``suggest`` marks the suggestion.
        Needs matplotlib."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise MisconfigurationException("To use the `plot` method, you must have Matplotlib installed. Install it "
                                            "by running `pip install -U matplotlib`.") from err
        lrs, losses = self.results["lr"], self.results["loss"]
        if ax is None:
            fig, ax = plt.subplots()
        else:
            fig = ax.figure
        ax.plot(lrs, losses)
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if suggest and self.suggestion() is not None and self._optimal_idx:
            ax.plot(lrs[self._optimal_idx], losses[self._optimal_idx], markersize=10, marker="o", color="red")
        if show:
            plt.show()
        return fig


class _LRSearch(Callback):
    """The search's only callback: exchanges the LR schedule for the range test, sets the learning rate before
    every batch and records the smoothed loss after it."""

    def __init__(self, finder: _LRFinder, early_stop_threshold: float | None, beta: float = 0.98) -> None:
        self.finder = finder
        self.early_stop_threshold = early_stop_threshold
        self.beta = beta
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.avg_loss = 0.0
        self.best_loss = 0.0
        self.batches = 0

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # callbacks the model adds in configure_callbacks would checkpoint or stop the search: as in Lightning, the
        # search runs with its own callback only
        trainer.callbacks[:] = [cb for cb in trainer.callbacks if cb is self]

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        optimizers = trainer.optimizers
        if len(optimizers) != 1:
            raise MisconfigurationException(f"`model.configure_optimizers()` returned {len(optimizers)}, but learning "
                                            "rate finder only works with single optimizer")
        for group in optimizers[0].param_groups:
            group["lr"] = group["initial_lr"] = self.finder.lr_min
        trainer.lr_scheduler_configs.clear()  # the search's schedule replaces the model's schedulers

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        lr = self.finder.lr_at(trainer.global_step)
        for group in trainer.optimizers[0].param_groups:
            group["lr"] = lr
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.lrs.append(lr)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batches += 1
        if (batch_idx + 1) % trainer.accumulate_grad_batches != 0:
            return
        if not outputs:  # training_step returned None: a NaN keeps lrs and losses aligned (ignored by suggestion)
            self.losses.append(float("nan"))
            return
        loss = outputs if isinstance(outputs, torch.Tensor) else outputs["loss"]
        step = trainer.global_step
        self.avg_loss = self.beta * self.avg_loss + (1 - self.beta) * loss.item()
        smoothed = self.avg_loss / (1 - self.beta ** (step + 1))
        if self.early_stop_threshold is not None and step > 1 and smoothed > self.early_stop_threshold * self.best_loss:
            trainer.should_stop = True  # diverging
        if smoothed < self.best_loss or step == 1:
            self.best_loss = smoothed
        self.losses.append(smoothed)


def lr_find(trainer: Any, model: Any, data: dict[str, Any], min_lr: float = 1e-8, max_lr: float = 1,
            num_training: int = 100, mode: str = "exponential", early_stop_threshold: float | None = 4.0,
            update_attr: bool = False, attr_name: str = "", optimizers: list | None = None) -> _LRFinder | None:
    """Run the range test for ``model`` with a copy of ``trainer``; ``data`` holds the ``fit`` data arguments.
    With ``update_attr`` the suggestion is written to the model's learning-rate attribute and to the param groups
    of ``optimizers`` (an ongoing run's)."""
    if trainer.fast_dev_run:
        rank_zero_warn("Skipping learning rate finder since `fast_dev_run` is enabled.")
        return None
    datamodule = data.get("datamodule")
    if update_attr:
        attr_name = _lr_attr_name(model, datamodule, attr_name)
    finder = _LRFinder(mode, min_lr, max_lr, num_training)
    probe = _LRSearch(finder, early_stop_threshold)
    search = _search.search_trainer(trainer, probe, max_steps=num_training, limit_val_batches=num_training)
    device = next(iter(model.parameters()), torch.empty(0)).device
    with isolate_rng(), _search.KeepModel(model, datamodule, device):
        _search.run(search, "fit", model, data)
    if search.global_step != num_training:
        log.info(f"LR finder stopped early after {search.global_step} steps due to diverging loss.")
    finder.results = {"lr": probe.lrs, "loss": probe.losses}
    finder._total_batch_idx = probe.batches
    if update_attr:
        lr = finder.suggestion()
        if lr is not None and not math.isnan(lr):
            _search.set_attr(model, datamodule, attr_name, lr)
            for opt in optimizers or []:
                for group in opt.param_groups:
                    group["lr"] = lr
            log.info(f"Learning rate set to {lr}")
    return finder
