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
   ``ResumeCheckpoint().every_n_seconds`` = 300 s, keeping the newest 2 files, unless you put your own
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

Elastic training (``ScalingConfig(num_workers=(min, max))``) restarts the group at a new size: the batch size
per worker stays, so the global batch changes with the number of workers, and a restore at another world
size is not exact (data shards and RNG streams belong to the old size). Fixed-size runs wait for the
resources to come back (e.g. a replacement node).

This module never imports Ray at import time (``raylit.launch.ray`` imports it lazily, and the worker half
runs without Ray in tests).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import os
import sys
import warnings
from typing import Any

from raylit import fs
from raylit.callbacks.base import Callback

log = logging.getLogger(__name__)

DEFAULT_MAX_FAILURES = 3
LOGGERS_FILE = "loggers.json"


# --------------------------------------------------------------------------------------------------------------
# driver side
# --------------------------------------------------------------------------------------------------------------
_warned_off = False


def driver_plan(trainer: Any, fn: str, run_config: Any) -> tuple[Any, dict | None]:
    """The RunConfig to run with (restarts, the user-error callback) and, for ``fit``, what the workers need
    to restore by themselves (``{"resume_dir", "run_name"}``)."""
    global _warned_off
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
    if max_failures == 0 and not _warned_off:
        _warned_off = True
        log.warning(
            "raylit: no automatic restarts for this run: its RunConfig has failure_config.max_failures=0 (Ray's "
            "value when a RunConfig has no failure_config). Pass RunConfig(failure_config=ray.train.FailureConfig("
            f"max_failures={DEFAULT_MAX_FAILURES})) to restore and continue after a lost worker or node."
        )
    return run_config, {"resume_dir": resume_dir(trainer, run_config), "run_name": run_config.name}


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


_callback_cls: type | None = None


def _user_error_callback_class() -> type:
    """A Ray Train ``UserCallback`` (it runs in the controller) that turns a failure made only of user-code
    exceptions into a controller error, which Ray's failure policy does not retry. Built lazily: importing
    this module must not import Ray."""
    global _callback_cls
    if _callback_cls is None:
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
                    print(f"raylit: {what}; restarting the worker group (restart {self.failures} of {limit}); every "
                          "worker restores the newest resume checkpoint", file=sys.stderr)

        _callback_cls = StopOnUserCodeError
    return _callback_cls


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
        return True


def _quiet_controller_logs() -> None:
    for name in ("ray.train.v2._internal.execution.callback_manager", "ray.train.v2._internal.callbacks.backend_setup"):
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


def _quiet_worker_logs() -> None:
    logger = logging.getLogger("ray.train.v2._internal.util")
    if not any(isinstance(f, _WorkerLogFilter) for f in logger.filters):
        logger.addFilter(_WorkerLogFilter())


# --------------------------------------------------------------------------------------------------------------
# worker side (no Ray needed: ``runtime`` provides the collectives)
# --------------------------------------------------------------------------------------------------------------
def prepare_worker(spec: Any, trainer: Any, runtime: Any) -> None:
    """Called on every worker before its ``Run`` is built: installs the resume checkpoint and the logger
    continuity callback, pins the loggers' versions, and sets the spec's ``ckpt_path`` to the newest
    loadable resume checkpoint of this run, if there is one (it wins over the user's ``ckpt_path``: it is
    newer progress of the same run)."""
    plan = spec.fault
    if not plan or spec.fn != "fit":
        return
    _quiet_worker_logs()
    from raylit.resume import ResumeCheckpoint, latest_resume_checkpoint

    resume_cb = next((cb for cb in trainer.callbacks if isinstance(cb, ResumeCheckpoint)), None)
    if resume_cb is None:
        resume_cb = ResumeCheckpoint()
        trainer.callbacks.append(resume_cb)
    resume_cb.dirpath = resume_cb.dirpath or plan["resume_dir"]
    directory = str(resume_cb.dirpath)
    continuity = LoggerContinuity()
    trainer.callbacks.append(continuity)

    path = None
    if runtime.is_global_zero:
        _remove_partial_files(directory)
        path = latest_resume_checkpoint(directory, weights_only=spec.weights_only)
    path = runtime.broadcast(path)
    _pin_logger_versions(trainer, runtime, directory)
    if path is None:
        return
    readable = runtime.all_gather_object(fs.exists(path))
    if not all(readable):
        missing = [rank for rank, ok in enumerate(readable) if not ok]
        raise RuntimeError(
            f"raylit cannot restore {path} on rank(s) {missing}: the resume directory must be storage every "
            "worker can read. Set Trainer(run_config=ray.train.RunConfig(storage_path=<shared folder or "
            "s3://...>, name=...)) or ResumeCheckpoint(dirpath=<shared folder>)."
        )
    if runtime.is_global_zero:
        continuity.snapshot_csv(trainer)
        print(f"raylit: restoring {path}", file=sys.stderr, flush=True)
    spec.ckpt_path = path


def _remove_partial_files(directory: str) -> None:
    """Temporary files of a writer that was killed half-way (``fs.write_bytes_atomic``); never "latest"."""
    if fs.is_remote(directory) or not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if name.startswith(".tmp-") and name.endswith(".part"):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, name))


def _versioned(trainer: Any) -> list[tuple[int, Any]]:
    """Loggers whose folder is ``version_N`` chosen at run time (CSVLogger, TensorBoardLogger)."""
    return [(i, lg) for i, lg in enumerate(trainer.loggers) if hasattr(lg, "_version") and hasattr(lg, "root_dir")]


def _pin_logger_versions(trainer: Any, runtime: Any, directory: str) -> None:
    """Every attempt of a run logs into the version folder the first attempt chose (rank 0 decides; every
    rank gets the same value, so ``log_dir``-derived paths agree)."""
    versioned = _versioned(trainer)
    if not versioned:
        return
    versions = None
    if runtime.is_global_zero:
        path = fs.join(directory, LOGGERS_FILE)
        recorded = json.loads(fs.read_bytes(path)) if fs.exists(path) else {}
        versions = {}
        for i, lg in versioned:
            key = str(i)
            if lg._version is None and key in recorded:
                lg._version = recorded[key]
            versions[key] = lg.version  # decides it now when it is still open
        again = bool(recorded)
        if versions != recorded:
            fs.makedirs(directory)
            fs.write_bytes_atomic(json.dumps(versions).encode(), path)
        versions = (versions, again)
    from raylit.loggers.tensorboard import TensorBoardLogger

    versions, again = runtime.broadcast(versions)
    for i, lg in versioned:
        lg._version = versions[str(i)]
        if again and isinstance(lg, TensorBoardLogger) and lg._experiment is None:
            # a later attempt: hide the lost attempts' events (from step 0 when the run starts over; a restore
            # moves this to the checkpoint's step)
            lg._kwargs["purge_step"] = 0


def _csv_rows(path: str) -> list[list[str]]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.reader(f))


class LoggerContinuity(Callback):
    """Keeps the loggers of a restored run exactly as an uninterrupted run leaves them.

    At every checkpoint it records, on rank 0, how many rows each CSVLogger has written and (when the checkpoint
    is written inside a batch, before that batch's step row is sent) the step row itself; and, from every rank,
    the running sums behind the epoch's ``on_epoch`` values. On a restore it cuts the CSV files back to that
    length, re-logs the step row, points TensorBoard's ``purge_step`` at the checkpoint's step, puts each rank's
    sums back, and carries the step counters of evaluation rows on.
    """

    def __init__(self) -> None:
        self._trainer: Any = None
        self._csv_snapshot: dict[str, list[list[str]]] = {}

    @property
    def state_key(self) -> str:
        return "raylit.LoggerContinuity"

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer = trainer

    def snapshot_csv(self, trainer: Any) -> None:
        """Read the lost attempt's metrics.csv files now: creating a CSV writer deletes an existing file."""
        from raylit.loggers.csv_logs import CSVLogger

        for i, lg in enumerate(trainer.loggers):
            if isinstance(lg, CSVLogger):
                self._csv_snapshot[str(i)] = _csv_rows(os.path.join(lg.log_dir, "metrics.csv"))

    # --- save -------------------------------------------------------------------------------------------------
    # Its state lives under the checkpoint's ``raylit`` key (with raylit's other resume data), not under
    # ``callbacks``: a checkpoint written in a Ray run then holds exactly the callback states Lightning's would.
    def _rank_zero_state(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero:
            return {}
        from raylit.loggers.csv_logs import CSVLogger

        st = trainer._run.state
        state: dict[str, Any] = {
            "step": int(st.batches_that_stepped),
            "eval_log_steps": [[str(k[0]), str(k[1]), k[2], v] for k, v in trainer._run.eval_log_steps.items()],
            "csv_rows": {},
            "pending_row": None,
        }
        for i, lg in enumerate(trainer.loggers):
            if isinstance(lg, CSVLogger) and lg._experiment is not None:
                lg.save()
                state["csv_rows"][str(i)] = max(0, len(_csv_rows(lg.experiment.metrics_file_path)) - 1)
        pending = st.batch_pending
        metrics = trainer._run.metrics
        # inside on_train_batch_end: the batch's step row is sent after the hooks, and a resumed run does not
        # recompute it (the batch is trained), so the checkpoint carries it
        if trainer.loggers and pending is not None and metrics.in_batch and metrics.store is not None:
            accumulate = pending[2]
            if not accumulate and (trainer._run.loop.should_log_step() or trainer.fast_dev_run):
                state["pending_row"] = _logger_row(trainer, metrics.store.views(True)[1])
        return state

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # Every rank runs this at the same point of a save, so the per-rank sums behind this epoch's `on_epoch`
        # values (a mean over the epoch so far) can be gathered: a mid-epoch restore continues them, and the
        # epoch row then holds the same value as in an uninterrupted run.
        mine = _epoch_accumulators(trainer._run.train_store)
        everyone = trainer._runtime.all_gather_object(mine)
        state = {**self._rank_zero_state(), "train_epoch_per_rank": everyone}
        checkpoint.setdefault("raylit", {})[self.state_key] = state

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self._restore((checkpoint.get("raylit") or {}).get(self.state_key) or {})

    # --- restore ----------------------------------------------------------------------------------------------
    def _restore(self, state: dict[str, Any]) -> None:
        trainer = self._trainer
        if trainer is None or not state:
            return
        for fn, stage, idx, count in state.get("eval_log_steps", []):
            trainer._run.eval_log_steps[(fn, stage, idx)] = count
        per_rank = state.get("train_epoch_per_rank")
        if per_rank and len(per_rank) == trainer.world_size:
            _restore_epoch_accumulators(trainer._run.train_store, per_rank[trainer.global_rank], trainer._runtime.device)
        if not trainer.is_global_zero:
            return
        from raylit.loggers.csv_logs import CSVLogger
        from raylit.loggers.tensorboard import TensorBoardLogger

        step = int(state.get("step", 0))
        for i, lg in enumerate(trainer.loggers):
            key = str(i)
            if isinstance(lg, CSVLogger) and key in self._csv_snapshot:
                self._restore_csv(lg, self._csv_snapshot[key], int(state.get("csv_rows", {}).get(key, 0)))
            elif isinstance(lg, TensorBoardLogger) and lg._experiment is None:
                lg._kwargs["purge_step"] = step
        self._csv_snapshot = {}
        pending = state.get("pending_row")
        if pending is not None:
            scalars, row_step = pending
            for lg in trainer.loggers:
                lg.log_metrics(metrics=dict(scalars), step=row_step)
                lg.save()

    @staticmethod
    def _restore_csv(lg: Any, rows: list[list[str]], n: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "logs directory exists and is not empty": we continue it on purpose
            writer = lg.experiment  # creating it deletes metrics.csv; the kept rows are written back below
        if not rows or n == 0:
            return
        header, kept = rows[0], rows[1 : n + 1]
        buf = io.StringIO()
        out = csv.writer(buf)
        out.writerow(header)
        out.writerows(kept)
        # the same text csv.DictWriter wrote (excel dialect, "\r\n"), so the writer can append to it
        with open(writer.metrics_file_path, "w", newline="") as f:
            f.write(buf.getvalue())
        writer.metrics_keys = list(header)


def _epoch_accumulators(store: Any) -> list[tuple]:
    """(fx, name, dataloader_idx, meta, total, weight) of every value accumulated for an epoch aggregate.
    torchmetrics objects keep their own state and are not included."""
    out = []
    for (fx, name, dl_idx), e in store.entries.items():
        if e.active and e.on_epoch and e.metric is None and e.total is not None:
            weight = e.weight.detach().cpu() if hasattr(e.weight, "detach") else e.weight
            out.append((str(fx), name, dl_idx, tuple(e.meta), e.total.detach().cpu(), weight))
    return out


def _restore_epoch_accumulators(store: Any, saved: list, device: Any) -> None:
    from raylit.metrics import _Entry

    for fx, name, dl_idx, meta, total, weight in saved:
        entry = _Entry(name, dl_idx, tuple(meta))
        entry.total = total.to(device)
        entry.weight = weight.to(device) if hasattr(weight, "to") else weight
        entry.active = True
        store.entries[(fx, name, dl_idx)] = entry
    store.version += 1


def _logger_row(trainer: Any, log: dict) -> tuple[dict, int] | None:
    """What ``MetricsConnector.send_to_loggers`` would send for ``log`` now: (scalars, step)."""
    if not log:
        return None
    scalars = {k: (v.item() if hasattr(v, "numel") and v.numel() == 1 else v) for k, v in log.items()}
    step_metric = scalars.pop("step", None)
    if step_metric is not None:
        return scalars, int(step_metric)
    scalars.setdefault("epoch", trainer.current_epoch)
    return scalars, int(trainer._logger_step)
