"""TrainState: the progress of a run, and exactly what of it a checkpoint carries."""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from raylit.utilities.seed import rng_state


class TrainerFn(str, Enum):
    FITTING = "fit"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"

    def __str__(self) -> str:
        return self.value


class RunningStage(str, Enum):
    TRAINING = "train"
    SANITY_CHECKING = "sanity_check"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"

    def __str__(self) -> str:
        return self.value

    @property
    def evaluating(self) -> bool:
        return self in (RunningStage.VALIDATING, RunningStage.TESTING, RunningStage.SANITY_CHECKING)

    @property
    def dataloader_prefix(self) -> str | None:
        """The stage's name in dataloader hooks and metric keys: "train", "val", "test" or "predict"."""
        if self in (RunningStage.VALIDATING, RunningStage.SANITY_CHECKING):
            return "val"
        return self.value


class TrainerStatus(str, Enum):
    INITIALIZING = "initializing"
    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value

    @property
    def stopped(self) -> bool:
        """The run is over, finished or interrupted."""
        return self in (TrainerStatus.FINISHED, TrainerStatus.INTERRUPTED)


@dataclass
class TrainerState:
    """What the Trainer is doing (``trainer.state``), as in Lightning."""

    status: TrainerStatus = TrainerStatus.INITIALIZING
    fn: TrainerFn | None = None
    stage: RunningStage | None = None

    @property
    def finished(self) -> bool:
        return self.status == TrainerStatus.FINISHED

    @property
    def stopped(self) -> bool:
        return self.status.stopped


# the attributes a checkpoint saves and restores, in one list
_CHECKPOINTED = ("current_epoch", "global_step", "batches_that_stepped", "total_batches", "epoch_batches",
                 "epoch_finished", "scheduler_steps")


@dataclass
class TrainState:
    current_epoch: int = 0          # completed epochs (Lightning's current_epoch)
    global_step: int = 0            # optimizer steps
    batches_that_stepped: int = 0   # the loggers' step axis
    total_batches: int = 0          # training batches completed over all epochs
    epoch_batches: int = 0          # training batches completed in the current epoch
    epoch_finished: bool = False    # the current epoch has run all its batches (end hooks may be pending)
    scheduler_steps: int = 0
    should_stop: bool = False
    is_last_batch: bool = False
    in_epoch: bool = False          # between an epoch's start hooks and its counter increment
    # (batch_idx, is_last, accumulating) of a trained batch whose end phase (validation, logger step) has
    # not finished yet; saved so that a resume finishes it exactly once
    batch_pending: tuple | None = None
    # RNG right before the current epoch's data iterator was created: replaying it reproduces the epoch's order
    epoch_start_rng: dict[str, Any] | None = field(default=None, repr=False)
    # set by a restore, consumed by the first epoch that runs afterwards
    pending_resume: dict[str, Any] | None = field(default=None, repr=False)

    def resume_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in _CHECKPOINTED}
        out["rng"] = rng_state()
        out["epoch_start_rng"] = self.epoch_start_rng
        out["batch_pending"] = self.batch_pending
        return out

    def restore(self, ckpt: dict[str, Any], rank: int = 0, world_size: int = 1) -> None:
        saved = raylit_section(ckpt)
        if saved is None:
            saved = _from_lightning_loops(ckpt)
        elif len(saved.get("rng_per_rank") or []) == world_size:
            # each rank continues its own RNG streams (with another world size, rank 0's are used)
            saved = {**saved, "rng": saved["rng_per_rank"][rank],
                     "epoch_start_rng": saved["epoch_start_rng_per_rank"][rank]}
        for k in _CHECKPOINTED:
            if k in saved:
                setattr(self, k, saved[k])
        if self.epoch_finished:
            # the saved epoch ran all its batches: continue with the next one
            self.current_epoch += 1
            self.epoch_batches = 0
            self.epoch_finished = False
        self.pending_resume = saved


def _from_lightning_loops(ckpt: dict[str, Any]) -> dict[str, Any]:
    fit = (ckpt.get("loops") or {}).get("fit_loop") or {}
    epoch_prog = (fit.get("epoch_progress") or {}).get("current") or {}
    batch_prog = fit.get("epoch_loop.batch_progress") or {}
    completed = epoch_prog.get("completed", ckpt.get("epoch", 0))
    processed = epoch_prog.get("processed", completed)
    in_flight = epoch_prog.get("ready", completed) > completed  # an epoch had started and not been counted
    epoch_batches = (batch_prog.get("current") or {}).get("completed", 0)
    finished = in_flight and (processed > completed or bool(batch_prog.get("is_last_batch")))
    return {
        "current_epoch": completed,
        "global_step": ckpt.get("global_step", 0),
        "batches_that_stepped": (fit.get("epoch_loop.state_dict") or {}).get("_batches_that_stepped",
                                                                              ckpt.get("global_step", 0)),
        "total_batches": (batch_prog.get("total") or {}).get("completed", 0),
        # without raylit's RNG record the epoch cannot be replayed: a mid-epoch Lightning checkpoint restarts
        # its epoch from the first batch, as Lightning itself does
        "epoch_batches": epoch_batches if finished else 0,
        "epoch_finished": finished,
        "scheduler_steps": ((fit.get("epoch_loop.scheduler_progress") or {}).get("total") or {}).get("completed", 0),
    }


def raylit_section(ckpt: dict[str, Any], create: bool = False) -> dict[str, Any] | None:
    """raylit's own resume state inside a Lightning checkpoint: ``ckpt["loops"]["fit_loop"]["state_dict"]
    ["raylit"]``, where Lightning keeps a loop's custom state and ignores keys it does not know, so the
    checkpoint has exactly Lightning's top-level keys. Checkpoints of earlier raylit versions kept it at
    ``ckpt["raylit"]``; they are still read. ``create=True`` makes the section when it is missing."""
    if not create and "raylit" in ckpt:
        return ckpt["raylit"]
    loops = ckpt.setdefault("loops", {}) if create else (ckpt.get("loops") or {})
    fit = loops.setdefault("fit_loop", {}) if create else (loops.get("fit_loop") or {})
    sd = fit.setdefault("state_dict", {}) if create else (fit.get("state_dict") or {})
    return sd.setdefault("raylit", {}) if create else sd.get("raylit")
