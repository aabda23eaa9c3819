"""ModelCheckpoint: save the model periodically, keeping the best ``save_top_k`` by a monitored metric."""

import logging
import os
import re
import warnings
from copy import deepcopy
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from raylit.async_checkpoint import AsyncCheckpointWriter
from raylit.callbacks._checkpoint_files import CheckpointFiles, _is_local, _listdir, _Published
from raylit.callbacks.checkpoint import Checkpoint
from raylit.utilities.clock import SharedDeadline
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.rank_zero import rank_zero_info, rank_zero_warn

log = logging.getLogger(__name__)

# A placeholder in a filename template: "{name}" or "{name:format_spec}".
_PLACEHOLDER = re.compile(r"\{([^{}:]+)(:[^{}]*)?\}")


class ModelCheckpoint(CheckpointFiles, Checkpoint):
    r"""Save the model during ``fit``, by a period (epochs, optimizer steps or wall time) and, with ``monitor``,
    keep only the ``save_top_k`` best files by that metric. Same arguments and meanings as Lightning 2.6.

    Args:
        dirpath: where to save. Default: ``<logger.save_dir>/<logger.name>/<version>/checkpoints`` with a logger,
            else ``<default_root_dir>/checkpoints`` (resolved at ``setup``, broadcast from rank 0).
        filename: a template such as ``"{epoch}-{val_loss:.2f}"``, filled from ``trainer.callback_metrics`` plus
            ``epoch`` and ``step``; missing names read as 0. Default ``"{epoch}-{step}"``.
        monitor: the ``callback_metrics`` key to rank by. ``None`` keeps the latest checkpoint(s).
        verbose: log each decision.
        save_last: ``True`` also writes ``last.ckpt``; ``"link"`` makes it a symlink to the latest saved file.
        save_top_k: how many best files to keep; ``-1`` keeps all, ``0`` none. Without ``monitor`` only
            -1, 0 and 1 are valid.
        save_on_exception: also save when fit raises.
        save_weights_only: save only the model weights (and loops/hparams).
        mode: ``"min"`` or ``"max"``: whether a lower or a higher ``monitor`` value is better.
        auto_insert_metric_name: ``"{epoch}"`` renders as ``epoch=3``; turn off for names containing "/".
        every_n_train_steps, every_n_epochs, train_time_interval: the period; mutually exclusive. When all
            are None, ``every_n_epochs=1``.
        save_on_train_epoch_end: save in ``on_train_epoch_end`` (True) or ``on_validation_end`` (False).
            None decides at run time: train epoch end when there is no validation, or when validation runs
            exactly once per epoch (``val_check_interval == 1.0 and check_val_every_n_epoch == 1``).
        enable_version_counter: append ``-v1``, ``-v2``... instead of overwriting an existing file.
        async_save: (raylit) write checkpoints in a background thread (``raylit.async_checkpoint``): the step
            blocks only for a host copy of the weights (the optimizer state is copied in the background,
            the next optimizer step waiting for that copy). A file counts once it is complete: until then
            ``best_model_path``, ``last_model_path``, ``best_k_models``, ... keep their previous values, the files
            it replaces are not deleted and loggers are not told. ``fit`` returns once every write is done; a
            failed write raises at the next save or when ``fit`` ends. ``False``: write before returning (needed
            if your code changes optimizer state in place between steps).

    ``save_last`` follows Lightning 2.6 (PR #21244): ``last.ckpt`` is written only at a step where a top-k or
    periodic checkpoint was also saved (so with ``monitor`` it is the last *improving* checkpoint, not the
    final epoch), plus once in ``on_train_end`` if it was never written during the run.

    Nothing is saved during the sanity check, outside ``fit``, under ``fast_dev_run``, or twice at the same
    ``global_step``. Every file goes through ``trainer.save_checkpoint(path, save_weights_only)``; files that drop
    out of the top k are deleted by global rank 0 only.
    """

    best_k_models = _Published()
    kth_best_model_path = _Published()
    kth_value = _Published()
    best_model_path = _Published()
    best_model_score = _Published()
    current_score = _Published()
    last_model_path = _Published()

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1

    def __init__(
        self,
        dirpath: str | Path | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | Literal["link"] | None = None,
        save_top_k: int = 1,
        save_on_exception: bool = False,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
        async_save: bool = True,
    ) -> None:
        super().__init__()
        self._published: dict[str, Any] | None = None  # see _Published
        self._before: dict[str, Any] = {}
        self._before_step: int | None = None
        self._writer = AsyncCheckpointWriter(enabled=async_save)
        if mode not in ("min", "max"):
            raise MisconfigurationException(f"`mode` can be min, max but got {mode}")
        self.monitor = monitor
        self.mode = mode
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.save_on_exception = save_on_exception
        self.save_weights_only = save_weights_only
        self.auto_insert_metric_name = auto_insert_metric_name
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter

        if dirpath and _is_local(dirpath):
            dirpath = os.path.realpath(os.path.expanduser(str(dirpath)))
        self.dirpath: str | None = str(dirpath) if dirpath else None
        self.filename = filename

        if every_n_train_steps is None and every_n_epochs is None and train_time_interval is None:
            every_n_epochs, every_n_train_steps = 1, 0
        self._every_n_epochs: int = every_n_epochs or 0
        self._every_n_train_steps: int = every_n_train_steps or 0
        self._train_time_interval: timedelta | None = train_time_interval
        self._validate_configuration()

        # Top-k bookkeeping (saved in checkpoints; see state_dict).
        self.best_k_models: dict[str, Tensor] = {}
        self.kth_best_model_path = ""
        self.kth_value: Tensor = torch.tensor(float("inf" if mode == "min" else "-inf"))
        self.best_model_path = ""
        self.best_model_score: Tensor | None = None
        self.current_score: Tensor | None = None
        self.last_model_path = ""

        # Run-time bookkeeping (not saved).
        self._last_global_step_saved = 0  # nothing to save before the first optimizer step
        self._last_checkpoint_saved = ""
        self._time_deadline: SharedDeadline | None = None
        self._batches_seen = 0
        self._defer_save_until_validation = False  # a step/time save waits for the monitored val metric
        self._val_has_run = False  # a real (non-sanity) validation batch ran in this fit

    def _validate_configuration(self) -> None:
        if self.save_top_k < -1:
            raise MisconfigurationException(f"Invalid value for save_top_k={self.save_top_k}. Must be >= -1")
        if self._every_n_train_steps < 0:
            raise MisconfigurationException(
                f"Invalid value for every_n_train_steps={self._every_n_train_steps}. Must be >= 0"
            )
        if self._every_n_epochs < 0:
            raise MisconfigurationException(f"Invalid value for every_n_epochs={self._every_n_epochs}. Must be >= 0")
        triggers = (self._every_n_train_steps >= 1) + (self._every_n_epochs >= 1)
        triggers += self._train_time_interval is not None
        if triggers > 1:
            raise MisconfigurationException(
                f"Combination of parameters every_n_train_steps={self._every_n_train_steps}, "
                f"every_n_epochs={self._every_n_epochs} and train_time_interval={self._train_time_interval} "
                "should be mutually exclusive."
            )
        if self.monitor is None and self.save_top_k not in (-1, 0, 1):
            raise MisconfigurationException(
                f"ModelCheckpoint(save_top_k={self.save_top_k}, monitor=None) is not a valid"
                " configuration. No quantity for top_k to track."
            )

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor,
            mode=self.mode,
            every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs,
            train_time_interval=self._train_time_interval,
        )

    @property
    def every_n_epochs(self) -> int:
        return self._every_n_epochs

    # --- hooks -----------------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        self.dirpath = trainer.strategy.broadcast(self._resolve_dirpath(trainer))
        if trainer.is_global_zero and stage == "fit" and self.save_top_k != 0 and _listdir(self.dirpath):
            rank_zero_warn(f"Checkpoint directory {self.dirpath} exists and is not empty.")
        if self.save_last == "link" and not _is_local(self.dirpath):
            raise ValueError(
                "`ModelCheckpoint(save_last='link')` is only supported for local file paths,"
                f" got `dirpath={self.dirpath}`."
            )
        if stage == "fit":
            self._val_has_run = False

    def on_train_start(self, trainer, pl_module) -> None:
        if self._train_time_interval is not None:
            self._time_deadline = SharedDeadline(self._train_time_interval.total_seconds())
            self._batches_seen = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        # Lightning raises for a missing monitor key only once validation has really run.
        if not trainer.sanity_checking:
            self._val_has_run = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Step- and time-based saving."""
        self._writer.poll()  # a finished background write counts now (or raises its error)
        step_due = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        time_due = False
        if self._time_deadline is not None:
            # Clocks differ across ranks: rank 0's decides for everyone so that no rank waits alone in a save
            # (asked about once a second of training, not with a broadcast every batch; see SharedDeadline)
            self._batches_seen += 1
            time_due = self._time_deadline.due(self._batches_seen, trainer.strategy)
            if time_due:
                self._time_deadline.restart()
        if not (step_due or time_due):
            return
        candidates = self._monitor_candidates(trainer)
        stale = self.monitor is not None and (
            self.monitor not in candidates or self._validation_follows_this_batch(trainer)
        )
        if stale:  # the monitored value is missing or about to be refreshed: save after validation instead
            self._defer_save_until_validation = True
            return
        if self._should_skip_saving_checkpoint(trainer):
            return
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._writer.poll()
        if self._should_skip_saving_checkpoint(trainer) or not self._should_save_on_train_epoch_end(trainer):
            return
        self._save_on_epoch_boundary(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._writer.poll()
        if self._should_skip_saving_checkpoint(trainer) or self._should_save_on_train_epoch_end(trainer):
            return
        if self._defer_save_until_validation:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
            self._defer_save_until_validation = False
            return
        self._save_on_epoch_boundary(trainer)

    def _save_on_epoch_boundary(self, trainer) -> None:
        candidates = self._monitor_candidates(trainer)
        if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
            self._save_topk_checkpoint(trainer, candidates)
        # last.ckpt only accompanies a checkpoint saved at this very step (or refreshes the link).
        if self._last_global_step_saved == trainer.global_step or (
            self.save_last == "link" and self._last_checkpoint_saved
        ):
            self._save_last_checkpoint(trainer, candidates)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_last and not self._last_checkpoint_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_fit_end(self, trainer, pl_module) -> None:
        self._writer.wait()  # fit returns with every file written (and a failed write raises)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._writer.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # the run is failing already: pending writes finish, and a write error is attached to `exception`
        self._writer.wait_after_exception(exception)
        if not (
            self.save_on_exception
            and not trainer.fast_dev_run
            and not trainer.sanity_checking
            and self._last_global_step_saved != trainer.global_step
        ):
            self._writer.close_after_exception(exception)
            return
        candidates = self._monitor_candidates(trainer)
        self._begin_save(trainer)
        filepath = self.format_checkpoint_name(candidates)
        self._save_checkpoint(trainer, filepath)
        self._save_last_checkpoint(trainer, candidates)
        self._writer.close_after_exception(exception)
        rank_zero_info(
            f"An {type(exception).__name__} was raised with message: {exception}, saved checkpoint to {filepath}"
        )

    # --- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "best_model_score": self._best_model_score,
            "best_model_path": self._best_model_path,
            "current_score": self._current_score,
            "dirpath": self.dirpath,
            "best_k_models": self._best_k_models,
            "kth_best_model_path": self._kth_best_model_path,
            "kth_value": self._kth_value,
            "last_model_path": self._last_model_path,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_dirpath = state_dict.get("dirpath", self.dirpath)
        if saved_dirpath == self.dirpath:
            self._best_model_score = state_dict["best_model_score"]
            self._kth_best_model_path = state_dict.get("kth_best_model_path", self._kth_best_model_path)
            self._kth_value = state_dict.get("kth_value", self._kth_value)
            self._best_k_models = state_dict.get("best_k_models", self._best_k_models)
            self._last_model_path = state_dict.get("last_model_path", self._last_model_path)
        else:
            warnings.warn(
                f"The dirpath has changed from {saved_dirpath!r} to {self.dirpath!r},"
                " therefore `best_model_score`, `kth_best_model_path`, `kth_value`, `last_model_path` and"
                " `best_k_models` won't be reloaded. Only `best_model_path` will be reloaded."
            )
        self._best_model_path = state_dict["best_model_path"]
        self._published = None

    def _should_skip_saving_checkpoint(self, trainer) -> bool:
        return (
            bool(trainer.fast_dev_run)
            or trainer.state.fn != "fit"
            or trainer.sanity_checking
            or self._last_global_step_saved == trainer.global_step
        )

    def _should_save_on_train_epoch_end(self, trainer) -> bool:
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        if isinstance(trainer.val_check_interval, (str, dict, timedelta)):
            return False  # time-based validation: save after it
        if trainer.check_val_every_n_epoch != 1:
            return False  # validation may not run this epoch, so do not tie saving to it
        if _total(trainer.num_val_batches) == 0:
            return True
        return trainer.val_check_interval == 1.0

    def _validation_follows_this_batch(self, trainer) -> bool:
        """True on the last batch of an epoch that ends with validation, when saving waits for validation."""
        if self._should_save_on_train_epoch_end(trainer) or not getattr(trainer, "is_last_batch", False):
            return False
        enabled = getattr(trainer, "enable_validation", None)
        if enabled is None:
            enabled = _total(trainer.num_val_batches) > 0
        every = trainer.check_val_every_n_epoch
        return bool(enabled) and (every is None or (trainer.current_epoch + 1) % every == 0)

    def _monitor_candidates(self, trainer) -> dict[str, Tensor]:
        candidates = deepcopy(trainer.callback_metrics)
        # `self.log("epoch", ...)` arrives as a float tensor; file names want ints.
        epoch, step = candidates.get("epoch"), candidates.get("step")
        candidates["epoch"] = epoch.int() if isinstance(epoch, Tensor) else torch.tensor(trainer.current_epoch)
        candidates["step"] = step.int() if isinstance(step, Tensor) else torch.tensor(trainer.global_step)
        return candidates

    def check_monitor_top_k(self, trainer, current: Tensor | None = None) -> bool:
        if current is None:
            return False
        if self.save_top_k == -1 or len(self._best_k_models) < self.save_top_k:
            return True
        better = torch.lt if self.mode == "min" else torch.gt
        improves = bool(better(current, self._best_k_models[self._kth_best_model_path]))
        return trainer.strategy.reduce_boolean_decision(improves)  # all ranks must agree

    def _save_topk_checkpoint(self, trainer, candidates: dict[str, Tensor]) -> None:
        if self.save_top_k == 0:
            return
        if self.monitor is None:
            self._save_latest_checkpoint(trainer, candidates)
            return
        if self.monitor not in candidates:
            message = (
                f"`ModelCheckpoint(monitor={self.monitor!r})` could not find the monitored key in the returned"
                f" metrics: {list(candidates)}. HINT: Did you call `log({self.monitor!r}, value)` in the"
                " `LightningModule`?"
            )
            if self._val_has_run:
                raise MisconfigurationException(message)
            rank_zero_warn(message)
        current = candidates.get(self.monitor)
        if self.check_monitor_top_k(trainer, current):
            self._update_best_and_save(current, trainer, candidates)
        elif self.verbose:
            rank_zero_info(
                f"Epoch {int(candidates['epoch']):d}, global step {int(candidates['step']):d}:"
                f" {self.monitor!r} was not in top {self.save_top_k}"
            )

    def _save_latest_checkpoint(self, trainer, candidates: dict[str, Tensor]) -> None:
        """``monitor=None``: the newest checkpoint is the "best"; with ``save_top_k=1`` the previous goes."""
        self._begin_save(trainer)
        filepath = self._free_filepath(candidates, trainer, None, reusable=self._best_model_path)
        previous, self._best_model_path = self._best_model_path, filepath  # set first: it is part of the state
        self._save_checkpoint(trainer, filepath)
        if self.save_top_k == 1 and previous and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)

    def _update_best_and_save(self, current: Tensor, trainer, candidates: dict[str, Tensor]) -> None:
        self._begin_save(trainer)
        k = len(self._best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        replaced = None
        if len(self._best_k_models) == k:
            replaced = self._kth_best_model_path
            self._best_k_models.pop(replaced)
        if torch.isnan(current):  # a NaN never ranks as best
            current = torch.tensor(float("inf" if self.mode == "min" else "-inf"), device=current.device)

        filepath = self._free_filepath(candidates, trainer, None, reusable=replaced)
        self._current_score = current
        self._best_k_models[filepath] = current
        worst, best = (max, min) if self.mode == "min" else (min, max)
        if len(self._best_k_models) == k:
            self._kth_best_model_path = worst(self._best_k_models, key=self._best_k_models.get)
            self._kth_value = self._best_k_models[self._kth_best_model_path]
        self._best_model_path = best(self._best_k_models, key=self._best_k_models.get)
        self._best_model_score = self._best_k_models[self._best_model_path]
        if self.verbose:
            rank_zero_info(
                f"Epoch {int(candidates['epoch']):d}, global step {int(candidates['step']):d}: {self.monitor!r}"
                f" reached {current:0.5f} (best {self._best_model_score:0.5f}), saving model to {filepath!r}"
                f" as top {k}"
            )
        self._save_checkpoint(trainer, filepath)
        if replaced and self._should_remove_checkpoint(trainer, replaced, filepath):
            self._remove_checkpoint(trainer, replaced)

    def _save_last_checkpoint(self, trainer, candidates: dict[str, Tensor]) -> None:
        if not self.save_last:
            return
        self._begin_save(trainer)
        filepath = self._free_filepath(candidates, trainer, self.CHECKPOINT_NAME_LAST, reusable=self._last_model_path)
        previous, self._last_model_path = self._last_model_path, filepath  # set first: it is part of the state
        if self.save_last == "link" and self._last_checkpoint_saved and self.save_top_k != 0:
            self._link_checkpoint(trainer, self._last_checkpoint_saved, filepath)
        else:
            self._save_checkpoint(trainer, filepath)
        if previous and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)

def _total(num_batches: Any) -> float:
    return sum(num_batches) if isinstance(num_batches, (list, tuple)) else (num_batches or 0)
