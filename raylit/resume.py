"""Resume checkpoints: what fault tolerance restores from.

``ResumeCheckpoint`` writes a full checkpoint every N optimizer steps and/or every T seconds into its own
directory, keeping the newest ``keep`` files, so a lost worker, node or driver costs at most the work since
the last one. It is independent of ``ModelCheckpoint``: it never touches the user's top-k files.

The time cadence defaults to 60 s, stretched for large states: the next save is due no sooner than the last
save took (snapshot to complete file) divided by ``max_write_share`` (0.1), so writing stays in the background
for at most a tenth of the time and a save never waits for the previous one. A 100 MB state blocks a step for
~5 ms per save (``benchmarks/results/checkpoint.md``): at 60 s that is <0.01 % of the time, and a failure costs at
most a minute of work instead of the five minutes of the earlier 300 s default.

Files are written atomically and named ``resume-step=<global_step>.ckpt``; a file becomes the "latest" only
once it is complete. They are written in a background thread (``raylit.async_checkpoint``; the step blocks
only for a host copy of the weights, the optimizer state being copied in the background before the next
optimizer step), and the oldest files are pruned only once the newer one is complete.
``latest_resume_checkpoint`` picks the newest one that loads, warning when it has to skip a corrupt or
truncated newer file.
"""

import os
import re
import time
import warnings
from typing import Any

from raylit import fs
from raylit.async_checkpoint import AsyncCheckpointWriter
from raylit.callbacks.base import Callback
from raylit.checkpoint import CheckpointLoadError, load_checkpoint_file
from raylit.utilities.clock import SharedDeadline

_NAME = re.compile(r"^resume-step=(\d+)\.ckpt$")


class ResumeCheckpoint(Callback):
    """Periodic full checkpoints for automatic recovery.

    Args:
        dirpath: where to write; default ``<trainer.default_root_dir>/resume``.
        every_n_train_steps: save after every N optimizer steps (None: no step cadence).
        every_n_seconds: save when this much time has passed since the last save (None: no time cadence).
        max_write_share: with ``every_n_seconds``, wait at least the last save's duration (from the step that
            took it to the complete file) divided by this before the next one, so large states that take long to
            write are saved less often (None: exactly every ``every_n_seconds``).
        keep: how many resume checkpoints to keep (the newest ones); at least 1.
        async_save: write in a background thread (default). ``fit`` returns once the writes are done; a failed
            write raises at the next save or when ``fit`` ends. ``False``: write before training continues (needed
            if your code changes optimizer state in place between steps).
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int | None = None,
                 every_n_seconds: float | None = 60.0, keep: int = 2, async_save: bool = True,
                 max_write_share: float | None = 0.1) -> None:
        if every_n_train_steps is not None and (not isinstance(every_n_train_steps, int) or every_n_train_steps < 1):
            raise ValueError(f"ResumeCheckpoint(every_n_train_steps={every_n_train_steps!r}): expected None or an "
                             "int >= 1")
        if every_n_seconds is not None and every_n_seconds <= 0:
            raise ValueError(f"ResumeCheckpoint(every_n_seconds={every_n_seconds!r}): expected None or > 0")
        if max_write_share is not None and not 0 < max_write_share <= 1:
            raise ValueError(f"ResumeCheckpoint(max_write_share={max_write_share!r}): expected None or a number in "
                             "(0, 1]")
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"ResumeCheckpoint(keep={keep!r}): expected an int >= 1")
        self.dirpath = dirpath
        self.every_n_train_steps = every_n_train_steps
        self.every_n_seconds = every_n_seconds
        self.keep = keep
        self.max_write_share = max_write_share
        self._last_saved_step = -1
        self._deadline = SharedDeadline(every_n_seconds) if every_n_seconds is not None else None
        self._writer = AsyncCheckpointWriter(enabled=async_save)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_train_steps=self.every_n_train_steps,
                                        every_n_seconds=self.every_n_seconds)

    def last_checkpoint_candidates(self, trainer: Any) -> list[str]:
        """For ``ckpt_path="last"``: this run's newest loadable resume checkpoint."""
        latest = latest_resume_checkpoint(self.dirpath or fs.join(trainer.default_root_dir, "resume"))
        return [latest] if latest else []

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = fs.join(trainer.default_root_dir, "resume")
        if self._deadline is not None:
            self._deadline.restart()

    def _due(self, trainer: Any) -> bool:
        step = trainer.global_step
        if step == self._last_saved_step or trainer.sanity_checking:
            return False
        if self.every_n_train_steps is not None and step > 0 and step % self.every_n_train_steps == 0:
            return True
        if self._deadline is not None:
            # every rank must agree, or the save (a collective in distributed runs) would hang: rank 0's clock
            # decides, asked about once a second of training (see SharedDeadline)
            return self._deadline.due(step, trainer.strategy)
        return False

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._writer.poll()  # a finished background write prunes old files now (or raises its error)
        if self._due(trainer):
            self.save(trainer)

    def save(self, trainer: Any) -> str:
        """Write the resume checkpoint of this step; returns its path. With ``async_save`` the file appears
        (and older ones are pruned) once the background write is complete."""
        path = fs.join(self.dirpath, f"resume-step={trainer.global_step}.ckpt")
        started = time.monotonic()
        with self._writer.capture(trainer.global_step, getattr(trainer, "optimizers", ())):
            trainer.save_checkpoint(path)
        if self._deadline is not None:
            self._deadline.restart()
        self._last_saved_step = trainer.global_step
        if trainer.is_global_zero:  # rank 0 writes, and its clock decides the cadence (SharedDeadline)
            self._writer.after_write(self._prune)
            self._writer.after_write(lambda: self._took(time.monotonic() - started))
        return path

    def _took(self, seconds: float) -> None:
        """A save took ``seconds`` until its file was complete: the next one is due no sooner than
        ``seconds / max_write_share`` (and no sooner than ``every_n_seconds``)."""
        if self._deadline is not None and self.max_write_share is not None:
            self._deadline.seconds = max(float(self.every_n_seconds), seconds / self.max_write_share)

    def _prune(self) -> None:
        for old in list_resume_checkpoints(self.dirpath)[self.keep:]:
            fs.remove(old)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._writer.wait()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._writer.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._writer.close_after_exception(exception)


def list_resume_checkpoints(dirpath: str) -> list[str]:
    """Resume checkpoints in ``dirpath``, newest (highest step) first."""
    if fs.is_remote(dirpath):
        from pyarrow import fs as pafs

        filesystem, base = fs._fs(dirpath)
        infos = filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        names = [i.base_name for i in infos]
    else:
        names = os.listdir(dirpath) if os.path.isdir(dirpath) else []
    found = [(int(m.group(1)), n) for n in names if (m := _NAME.match(n))]
    return [fs.join(dirpath, n) for _, n in sorted(found, reverse=True)]


def latest_resume_checkpoint(dirpath: str, weights_only: bool | None = None) -> str | None:
    """The newest resume checkpoint in ``dirpath`` that loads; corrupt newer files are skipped with a warning
    naming them and the file used instead."""
    skipped: list[str] = []
    for path in list_resume_checkpoints(dirpath):
        try:
            load_checkpoint_file(path, weights_only=weights_only)
        except (CheckpointLoadError, FileNotFoundError):
            skipped.append(path)
            continue
        if skipped:
            warnings.warn(f"Resume checkpoint(s) {skipped} could not be loaded (incomplete or corrupt); resuming "
                          f"from the previous one, {path}", UserWarning, stacklevel=2)
        return path
    if skipped:
        warnings.warn(f"No loadable resume checkpoint in {dirpath}: {skipped} are incomplete or corrupt; starting "
                      "from scratch", UserWarning, stacklevel=2)
    return None
