"""Loggers of a run restored after a lost worker (raylit/launch/fault.py, point 6) end up exactly as those of an
uninterrupted run: ``LoggerContinuity``, a callback the Ray launcher adds to every worker of a restarting run.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from typing import Any

from raylit.callbacks.base import Callback
from raylit.loggers.csv_logs import CSVLogger
from raylit.loggers.tensorboard import TensorBoardLogger
from raylit.result_store import merge_epoch_sums
from raylit.state import raylit_section


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
        everyone = trainer._runtime.all_gather_object(trainer._run.train_store.state_dict())
        state = {**self._rank_zero_state(), "train_store_per_rank": everyone}
        raylit_section(checkpoint, create=True)[self.state_key] = state

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self._restore((raylit_section(checkpoint) or {}).get(self.state_key) or {})

    # --- restore ----------------------------------------------------------------------------------------------
    def _restore(self, state: dict[str, Any]) -> None:
        trainer = self._trainer
        if trainer is None or not state:
            return
        for fn, stage, idx, count in state.get("eval_log_steps", []):
            trainer._run.eval_log_steps[(fn, stage, idx)] = count
        per_rank = state.get("train_store_per_rank")
        if per_rank and len(per_rank) == trainer.world_size:
            trainer._run.train_store.load_state_dict(per_rank[trainer.global_rank])
        elif per_rank and trainer._runtime.elastic is not None:  # resized: every old rank's sums, shared out
            trainer._run.train_store.load_state_dict(merge_epoch_sums(per_rank, trainer.world_size))
        if not trainer.is_global_zero:
            return

        step = int(state.get("step", 0))
        for i, lg in enumerate(trainer.loggers):
            key = str(i)
            if isinstance(lg, CSVLogger) and key in self._csv_snapshot:
                self._restore_csv(lg, self._csv_snapshot[key], int(state.get("csv_rows", {}).get(key, 0)))
            elif isinstance(lg, TensorBoardLogger):
                lg.purge_from_step(step)
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
