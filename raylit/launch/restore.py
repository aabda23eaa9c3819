"""The worker half of fault tolerance (raylit/launch/fault.py has the whole story): before ``fit`` starts on a
worker, every attempt of a run restores by itself from the run's resume directory.

No Ray here: ``runtime`` provides the collectives, so tests run it on hand-made process groups.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

from raylit import fs
from raylit.launch.fault import quiet_worker_logs
from raylit.loggers.continuity import LoggerContinuity
from raylit.loggers.tensorboard import TensorBoardLogger
from raylit.resume import ResumeCheckpoint, latest_resume_checkpoint

LOGGERS_FILE = "loggers.json"  # in the resume directory: the version folder each logger of the run uses


def prepare_worker(spec: Any, trainer: Any, runtime: Any) -> None:
    """Called on every worker before its ``Run`` is built: installs the resume checkpoint and the logger
    continuity callback, pins the loggers' versions, and sets the spec's ``ckpt_path`` to the newest
    loadable resume checkpoint of this run, if there is one (it wins over the user's ``ckpt_path``: it is
    newer progress of the same run)."""
    plan = spec.fault
    if not plan or spec.fn != "fit":
        return
    quiet_worker_logs()
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
    versions, again = runtime.broadcast(versions)
    for i, lg in versioned:
        lg._version = versions[str(i)]
        if again and isinstance(lg, TensorBoardLogger):
            # a later attempt: hide the lost attempts' events (from step 0 when the run starts over; a restore
            # moves this to the checkpoint's step)
            lg.purge_from_step(0)
