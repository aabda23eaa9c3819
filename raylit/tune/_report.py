"""The callback a Tune trial adds to its Trainer: report logged metrics (and a checkpoint) after validation.

It runs inside the Trainer, next to the loop; it knows nothing about Tune. What happens to a report is up to a
*sink* (in-process: ``ray.tune.report`` in this thread; multi-worker: rank 0 forwards it to the trial
process). The sink answers whether training should go on; "no" (a scheduler stopped or paused the trial)
becomes ``trainer.should_stop``, so the run ends through its normal path: epoch end, ``on_train_end``,
``on_fit_end``, ``teardown``, loggers finalised as "success".
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from typing import Any, Protocol

import torch

from raylit.callbacks.base import Callback

CHECKPOINT_NAME = "checkpoint.ckpt"  # the file inside every Tune checkpoint directory raylit reports


class ReportSink(Protocol):
    def report(self, trainer: Any, metrics: dict[str, float], ckpt_file: str | None) -> bool:
        """Hand one report on; return False when Tune wants the trial to stop. Called on every rank."""


class TuneSink:
    """``ray.tune.report`` from this thread: for a single-worker Trainer inside a Tune function trainable."""

    def report(self, trainer: Any, metrics: dict[str, float], ckpt_file: str | None) -> bool:
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(os.path.dirname(ckpt_file)) if ckpt_file else None
        try:
            tune.report(metrics, checkpoint=checkpoint)
        except SystemExit:  # Tune ends the trial: it raises SystemExit(0) in the reporting thread
            return False
        return True


class TuneReportCallback(Callback):
    """Report ``trainer.callback_metrics`` (what the module logged with ``self.log``) once per validation run.

    ``raylit.tune.Tuner`` adds it to every trial. In a Tune function of your own (single-worker Trainer), add
    ``TuneReportCallback()`` to the Trainer, pass ``ray.tune.get_checkpoint()``'s ``checkpoint.ckpt`` as
    ``ckpt_path``, and end the function with ``raise SystemExit(0)`` when ``callback.stopped`` (Tune waits for
    that after stopping a trial).

    When validation ends an epoch, the report waits for the epoch's end so that epoch-level training metrics
    (``on_epoch=True`` in ``training_step``) are included; without validation, every epoch is reported.
    Every ``checkpoint_frequency``-th report carries a checkpoint (0: none). After a restore from a trial with
    other hyperparameters (a PBT exploit), the optimizers get the hyperparameters of *this* trial's
    ``configure_optimizers`` back (the checkpoint's optimizer state would otherwise keep the donor's lr).
    """

    # report after the module's and the other callbacks' on_train_epoch_end: they may log metrics there
    runs_after_module_epoch_end = True

    def __init__(
        self, sink: ReportSink | None = None, checkpoint_frequency: int = 1, refresh_hparams: bool = False
    ) -> None:
        self.sink = sink if sink is not None else TuneSink()
        self.checkpoint_frequency = checkpoint_frequency
        self.refresh_hparams = refresh_hparams
        self.stopped = False  # Tune asked this trial to stop (or pause)
        self.reports = 0
        self._pending = False
        self._fresh_groups: list[list[dict[str, Any]]] = []

    # --- PBT: the new config's optimizer hyperparameters win over the restored ones ------------------------
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # fires after configure_optimizers and before the checkpoint's optimizer state is loaded
        self._fresh_groups = [
            [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] for opt in trainer.optimizers
        ]

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.refresh_hparams:
            apply_fresh_hparams(trainer, self._fresh_groups)

    # --- reporting ----------------------------------------------------------------------------------------
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or str(trainer.state.fn) != "fit" or self.stopped:
            return
        if trainer.is_last_batch:
            self._pending = True  # report at the epoch's end, with the epoch's training metrics
        else:
            self._report(trainer)  # mid-epoch validation (val_check_interval < 1)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.stopped:
            return
        if self._pending or not trainer._run.loop.validation_enabled():
            self._pending = False
            self._report(trainer)

    def _report(self, trainer: Any) -> None:
        self.reports += 1
        metrics = scalar_metrics(trainer.callback_metrics)
        metrics.setdefault("epoch", trainer.current_epoch)
        metrics.setdefault("step", trainer.global_step)
        tmp = None
        ckpt_file = None
        if self.checkpoint_frequency and self.reports % self.checkpoint_frequency == 0:
            tmp = tempfile.mkdtemp(prefix="raylit-tune-ckpt-")
            ckpt_file = os.path.join(tmp, CHECKPOINT_NAME)
            trainer.save_checkpoint(ckpt_file)  # every rank calls it; rank 0 writes
        try:
            go_on = self.sink.report(trainer, metrics, ckpt_file)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        if not go_on:
            self.stopped = True
            # stop now even when min_epochs/min_steps would keep the run going: the scheduler decided
            trainer.min_epochs, trainer.min_steps = 0, None
            trainer.should_stop = True


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Logged values as floats (Tune results must not hold tensors); non-scalars are left out."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                continue
            v = v.item()
        if isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def apply_fresh_hparams(trainer: Any, fresh_groups: list[list[dict[str, Any]]]) -> None:
    """Put the hyperparameters that ``configure_optimizers`` produced for this trial's config back into the
    optimizers after a checkpoint restore replaced them with the donor's.

    Non-lr entries (momentum, weight_decay, betas, ...) are set as they are. The lr is rescaled so that a
    running LR schedule keeps its position: lr = restored lr x (new base lr / donor's base lr), and the
    schedulers' ``base_lrs`` move to the new base. Without a scheduler that is simply the new lr.
    """
    for opt, fresh in zip(trainer.optimizers, fresh_groups):
        for group, new in zip(opt.param_groups, fresh):
            for k, v in new.items():
                if k not in ("lr", "initial_lr"):
                    group[k] = v
            if "lr" not in new:
                continue
            new_base = new.get("initial_lr", new["lr"])
            if "initial_lr" in group:  # a scheduler runs: keep its factor
                old_base = group["initial_lr"]
                factor = group["lr"] / old_base if old_base else 1.0
                group["initial_lr"] = new_base
                group["lr"] = new_base * factor if not math.isnan(factor) else new_base
            else:
                group["lr"] = new["lr"]
    for cfg in trainer.lr_scheduler_configs:
        sched = cfg.scheduler
        opt = getattr(sched, "optimizer", None)
        if opt is None:
            continue
        if hasattr(sched, "base_lrs"):
            sched.base_lrs = [g.get("initial_lr", g["lr"]) for g in opt.param_groups]
        if hasattr(sched, "_last_lr"):
            sched._last_lr = [g["lr"] for g in opt.param_groups]


def local_checkpoint_copy(src_file: str, parent: str | None = None) -> tuple[str, str]:
    """Copy a checkpoint file into a fresh temp dir (the source may belong to another trial that goes on
    training and deletes old checkpoints); returns (dir, file)."""
    tmp = tempfile.mkdtemp(prefix="raylit-tune-restore-", dir=parent)
    dst = os.path.join(tmp, CHECKPOINT_NAME)
    shutil.copyfile(src_file, dst)
    return tmp, dst
