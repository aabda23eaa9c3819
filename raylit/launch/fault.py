"""Fault tolerance for Ray runs: restarts, and an exact restore on every restart.

What happens when a worker process, a node or the driver is lost during ``Trainer.fit`` on Ray:

1. **Restarts.** Ray Train's ``FailureConfig`` decides how often the worker group is restarted. Without a
   ``RunConfig`` from the user raylit asks for ``DEFAULT_MAX_FAILURES`` restarts; a user's ``RunConfig`` is
   used as given (Ray fills in ``max_failures=0`` -- no restarts -- when it has no ``failure_config``, so
   raylit warns once in that case). Only *lost* workers are retried: a dead process, a dead node, and the
   communication errors (gloo/NCCL, connection resets) that the surviving ranks see when a peer dies. An
   exception raised by your own code ends the run at once, with your exception on the driver, as it would
   without Ray -- replaying a deterministic bug from the last checkpoint only wastes the retries.
2. **A resume checkpoint is written periodically** by ``raylit.resume.ResumeCheckpoint`` (every
   ``ResumeCheckpoint().every_n_seconds`` = 60 s, stretched for states that take long to write (at least ten
   times the last save's duration), keeping the newest 2 files, unless you put your own
   ``ResumeCheckpoint(...)`` in ``callbacks=`` to choose the cadence). It never touches ModelCheckpoint's
   top-k files. Its directory is the *run's resume directory*:

   - ``ResumeCheckpoint(dirpath=...)`` when you give one;
   - ``<storage_path>/<name>/resume`` when your ``RunConfig`` sets ``storage_path`` (on a cluster: a shared
     file system or ``s3://``/``gs://``, which every worker and the driver can read);
   - else ``<default_root_dir>/resume/<run name>``.
3. **Every attempt restores by itself.** Before ``fit`` starts on a worker, global rank 0 picks the newest
   resume checkpoint that loads (``latest_resume_checkpoint``: a truncated or corrupt newest file is skipped
   with a warning naming it and the one used), every rank restores that same file, and training continues
   exactly where the checkpoint was written -- mid-epoch included: weights, optimizer, schedulers, every
   rank's RNG streams, the position in the epoch. No user code is involved.
4. **The source of truth is raylit's resume directory, not Ray's checkpoint registry.** raylit does not
   report checkpoints to Ray (Ray's latest *registered* checkpoint can lag one report behind what was
   written, and which one a restart receives would then decide where training resumes); a file in the resume
   directory is complete once its name exists (atomic writes).
5. **A lost driver.** A run is identified by its resume directory. Rerun the same command with the same
   ``RunConfig(name=..., storage_path=...)`` (or the same ``ResumeCheckpoint(dirpath=...)``) and training
   continues from the newest resume checkpoint there (it wins over a ``ckpt_path`` given to ``fit``: it is
   newer progress of the same run); ``ckpt_path="last"`` resolves there too. Without a ``RunConfig`` raylit
   names each call anew (``raylit-fit-<time>-<pid>``), so such a run always starts fresh; a named run -- and
   a ``RunConfig`` object reused for several ``fit`` calls -- continues, so to start it over delete its resume
   directory or pick a new name. On a cluster the resume directory must be storage every node reads; a
   restore that some rank cannot read fails with an error saying so.
6. **Loggers continue in place.** CSVLogger and TensorBoardLogger keep the version folder of the first
   attempt (recorded in ``<resume dir>/loggers.json``); on a restore the rows logged after the checkpoint by
   the lost attempt are dropped (CSV: the file is cut back to its length at the checkpoint; TensorBoard:
   ``purge_step``), and the step row of the batch the checkpoint was written in -- which the resumed run does
   not recompute -- is re-logged from the checkpoint. The sums behind this epoch's ``on_epoch`` values are
   carried too (every rank's), so the epoch rows equal an uninterrupted run's. Not carried: values that
   callbacks log in ``on_train_batch_end`` *after* the resume checkpoint was written (missing from that one
   row) and the state of logged torchmetrics objects; other loggers (MLflow, W&B) get the resumed run's rows
   again from the checkpoint on, without the lost attempt's being removed.

Elastic training (``Trainer(elastic=(min, max))`` or ``ScalingConfig(num_workers=(min, max))``): Ray restarts
the group at the size that fits, and every restart restores the newest resume checkpoint at that size with
the same global batches (raylit/distributed/elastic.py: a world-size independent sampler, accumulation over
the missing workers' micro-batches, the epoch position converted). Fixed-size runs wait for the resources to
come back (e.g. a replacement node).

Where the pieces are: this module is the driver and controller side (the ``RunConfig``, the resume directory,
which failures are retried, quieter logs); raylit/launch/restore.py restores on every worker (points 3 and 5);
raylit/loggers/continuity.py keeps the loggers continuous (point 6). None of them imports Ray at import time
(the worker half runs without Ray in tests).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import sys
from typing import Any

from raylit import fs

log = logging.getLogger(__name__)

DEFAULT_MAX_FAILURES = 3


# --------------------------------------------------------------------------------------------------------------
# driver side
# --------------------------------------------------------------------------------------------------------------
def driver_plan(trainer: Any, fn: str, run_config: Any) -> tuple[Any, dict | None]:
    """The RunConfig to run with (restarts, the user-error callback) and, for ``fit``, what the workers need
    to restore by themselves (``{"resume_dir", "run_name"}``)."""
    from ray.train import FailureConfig

    user_config = trainer.config.run_config is not None
    if not user_config:
        run_config = dataclasses.replace(run_config, failure_config=FailureConfig(max_failures=DEFAULT_MAX_FAILURES))
    max_failures = run_config.failure_config.max_failures
    if max_failures != 0 and not any(isinstance(cb, _user_error_callback_class()) for cb in run_config.callbacks):
        run_config = dataclasses.replace(
            run_config, callbacks=[*run_config.callbacks, _user_error_callback_class()(max_failures)]
        )
    if fn != "fit":
        return run_config, None
    if max_failures == 0:
        _warn_restarts_off()
    return run_config, {"resume_dir": resume_dir(trainer, run_config), "run_name": run_config.name}


@functools.cache  # once per process
def _warn_restarts_off() -> None:
    log.warning(
        "raylit: no automatic restarts for this run: its RunConfig has failure_config.max_failures=0 (Ray's "
        "value when a RunConfig has no failure_config). Pass RunConfig(failure_config=ray.train.FailureConfig("
        f"max_failures={DEFAULT_MAX_FAILURES})) to restore and continue after a lost worker or node."
    )


def resume_dir(trainer: Any, run_config: Any) -> str:
    """The run's resume directory (see the module docstring), absolute when local."""
    from raylit.resume import ResumeCheckpoint

    user = next((cb for cb in trainer.callbacks if isinstance(cb, ResumeCheckpoint) and cb.dirpath), None)
    if user is not None:
        path = str(user.dirpath)
    elif _explicit_storage(trainer, run_config):
        path = fs.join(str(run_config.storage_path), run_config.name, "resume")
    else:
        path = fs.join(trainer.default_root_dir, "resume", run_config.name)
    return path if fs.is_remote(path) else os.path.abspath(path)


def _explicit_storage(trainer: Any, run_config: Any) -> bool:
    from ray.train.constants import DEFAULT_STORAGE_PATH

    # RunConfig fills in ~/ray_results when storage_path is not given: that is the head node's disk, so only a
    # storage path the user chose counts (a custom storage_filesystem is not supported here)
    return (
        trainer.config.run_config is not None
        and run_config.storage_filesystem is None
        and os.path.expanduser(str(run_config.storage_path)) != os.path.expanduser(str(DEFAULT_STORAGE_PATH))
    )


def unwrap_error(err: BaseException) -> BaseException:
    """Ray wraps the error our controller callback raises in a ``ControllerError``; return what it carries
    (it has ``worker_failures``, like Ray's own WorkerGroupError), or ``err`` unchanged."""
    inner = getattr(err, "controller_failure", None)
    return inner if isinstance(inner, UserCodeFailed) else err


class UserCodeFailed(Exception):
    """Every failing worker raised an exception from the user's code: the run ends without a restart."""

    def __init__(self, worker_failures: dict) -> None:
        super().__init__("; ".join(f"rank {r}: {type(e).__name__}: {e}" for r, e in sorted(worker_failures.items())))
        self.worker_failures = worker_failures

    def __reduce__(self) -> tuple:
        return (self.__class__, (self.worker_failures,))


# Errors the surviving ranks see when a peer process or node dies (they are what a restart is for).
_COMM_WORDS = ("gloo", "nccl", "connection", "peer", "socket", "broken pipe", "timed out", "timeout", "closed")


def is_lost_worker(error: BaseException) -> bool:
    """Whether a worker error means a lost process/node (retry) rather than an exception from user code."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        module = type(error).__module__.split(".")[0]
        if module == "ray":  # actor died, node died, health check failed, ...
            return True
        if isinstance(error, (ConnectionError, TimeoutError, BrokenPipeError)):
            return True
        with contextlib.suppress(Exception):
            import torch.distributed as dist

            if isinstance(error, dist.DistError):
                return True
        if isinstance(error, RuntimeError) and any(w in str(error).lower() for w in _COMM_WORDS):
            return True
        error = getattr(error, "cause", None) or error.__cause__
    return False


@functools.cache  # one class per process: isinstance checks and pickling by reference need the same one
def _user_error_callback_class() -> type:
    """A Ray Train ``UserCallback`` (it runs in the controller) that turns a failure made only of user-code
    exceptions into a controller error, which Ray's failure policy does not retry. Built lazily: importing
    this module must not import Ray."""
    from ray.train import UserCallback

    class StopOnUserCodeError(UserCallback):
        def __setstate__(self, state: dict) -> None:  # unpickled in the controller process
            self.__dict__.update(state)
            _quiet_controller_logs()

        def __init__(self, max_failures: int = DEFAULT_MAX_FAILURES) -> None:
            self.max_failures, self.failures = max_failures, 0

        def after_exception(self, run_context: Any, worker_exceptions: dict) -> None:
            if not worker_exceptions:
                return
            if not any(is_lost_worker(e) for e in worker_exceptions.values()):
                raise UserCodeFailed(dict(worker_exceptions))
            self.failures += 1
            limit = "unlimited" if self.max_failures == -1 else str(self.max_failures)
            if self.max_failures == -1 or self.failures <= self.max_failures:
                dead = [r for r, e in sorted(worker_exceptions.items()) if type(e).__module__.startswith("ray")]
                what = f"worker rank(s) {dead} lost" if dead else f"rank(s) {sorted(worker_exceptions)} lost a peer"
                print(
                    f"raylit: {what}; restarting the worker group (restart {self.failures} of {limit}); every "
                    "worker restores the newest resume checkpoint",
                    file=sys.stderr,
                )

    return StopOnUserCodeError


class _ControllerLogFilter(logging.Filter):
    """Ray logs every exception raised by a controller callback with a full traceback: ours is a decision, not
    a crash (the user's own traceback reaches the driver anyway). And after a lost worker, the controller's
    attempt to shut the old group down gracefully fails as expected: one line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UserCodeFailed) or isinstance(getattr(exc, "__cause__", None), UserCodeFailed):
            return False
        if record.getMessage().startswith("Graceful shutdown of backend failed"):
            record.exc_info, record.exc_text = None, None
        if _startup_timeout(exc) is not None:
            # an elastic run after a lost node: the controller tried the old size on a stale resource view
            record.msg, record.args = f"{_startup_timeout(exc)}; Ray Train retries with the workers that fit", ()
            record.exc_info, record.exc_text = None, None
        return True


def _startup_timeout(exc: BaseException | None) -> str | None:
    for e in (exc, getattr(exc, "controller_failure", None)):
        if e is not None and type(e).__name__ == "WorkerGroupStartupTimeoutError":
            return str(e).split(". ")[0]
    return None


def _quiet_controller_logs() -> None:
    for name in ("ray.train.v2._internal.execution.callback_manager", "ray.train.v2._internal.callbacks.backend_setup",
                 "ray.train.v2._internal.execution.controller.controller",
                 "ray.train.v2._internal.execution.failure_handling.default"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ControllerLogFilter) for f in logger.filters):
            logger.addFilter(_ControllerLogFilter())


class _WorkerLogFilter(logging.Filter):
    """Ray Train logs a worker's exception with its traceback. When the exception is only the echo of another
    worker's death (a collective whose peer is gone), one line says it: the restart is what matters."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Error in training function"):
            last = next((line for line in reversed(message.splitlines()) if line.strip()), "")
            if any(w in last.lower() for w in _COMM_WORDS) or "DistNetworkError" in last or "DistBackendError" in last:
                record.msg, record.args = f"Lost a peer worker ({last.strip()[:200]}); Ray Train restarts the group", ()
        return True


def quiet_worker_logs() -> None:
    """Installed on every worker of a run that restarts (raylit/launch/restore.py)."""
    logger = logging.getLogger("ray.train.v2._internal.util")
    if not any(isinstance(f, _WorkerLogFilter) for f in logger.filters):
        logger.addFilter(_WorkerLogFilter())
