"""The ``Profiler`` base class: named actions timed between ``start`` and ``stop``, a text report at the end.

The Trainer calls ``setup`` when a run starts and ``describe`` when it ends successfully (after the teardown
hooks, as Lightning does). ``describe`` writes ``summary()``: to ``{dirpath}/{stage}-{filename}.txt`` when a
``filename`` is given (``dirpath`` defaults to the Trainer's ``log_dir``), otherwise to the ``raylit.profilers``
logger at INFO level, which prints to the console unless the application configured logging itself. Only global
rank 0 writes a report (on Ray workers too); every rank records.
"""

from __future__ import annotations

import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, TextIO

log = logging.getLogger("raylit.profilers")


def _report_log() -> logging.Logger:
    """The logger reports go to. Like Lightning's: printed (stderr) unless the application has set up logging
    (root handlers) by the time the first report is written."""
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
        if not logging.getLogger().hasHandlers() and not log.handlers:
            log.addHandler(logging.StreamHandler())
            log.propagate = False
    return log


def _global_rank() -> int:
    from raylit.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0))


class Profiler(ABC):
    """Subclass this to write a profiler: implement ``start``/``stop`` (and ``summary`` for a report)."""

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None) -> None:
        self.dirpath = dirpath
        self.filename = filename
        self._output_file: TextIO | None = None
        self._write_stream: Callable[[str], Any] | None = None
        self._local_rank: int | None = None
        self._stage: str | None = None

    @abstractmethod
    def start(self, action_name: str) -> None:
        """Begin recording ``action_name``."""

    @abstractmethod
    def stop(self, action_name: str) -> None:
        """End recording ``action_name`` (started by ``start``)."""

    def summary(self) -> str:
        """The report ``describe`` writes; empty for none."""
        return ""

    @contextmanager
    def profile(self, action_name: str) -> Iterator[str]:
        """``with profiler.profile("load data"): ...`` records the block as one call of that action."""
        try:
            self.start(action_name)
            yield action_name
        finally:
            self.stop(action_name)

    # --- run lifecycle (called by the Trainer) ---------------------------------------------------------
    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        """A run of ``stage`` ("fit", "validate", "test", "predict") starts. ``local_rank`` is None in a
        one-process run; ``log_dir`` becomes the report directory when ``dirpath`` was not given."""
        self._stage = str(getattr(stage, "value", stage)) if stage is not None else None
        self._local_rank = local_rank
        self.dirpath = self.dirpath or log_dir

    def describe(self) -> None:
        """Write the report (global rank 0 only), then close the output. Also usable outside a Trainer."""
        if _global_rank() == 0:
            self._prepare_streams()
            text = self.summary()
            if text and self._write_stream is not None:
                self._write_stream(text)
            if self._output_file is not None:
                self._output_file.flush()
        self.teardown(stage=self._stage)

    def teardown(self, stage: str | None) -> None:
        """Close the report file, if one is open."""
        self._write_stream = None
        if self._output_file is not None:
            self._output_file.close()
            self._output_file = None

    @property
    def local_rank(self) -> int:
        return 0 if self._local_rank is None else self._local_rank

    # --- output ---------------------------------------------------------------------------------------
    def _prepare_filename(self, action_name: str | None = None, extension: str = ".txt") -> str:
        """``{stage}-{filename}[-{local_rank}][-{action}]{extension}``, path-unsafe characters replaced."""
        parts = [p for p in (self._stage, self.filename) if p]
        if self._local_rank is not None:
            parts.append(str(self._local_rank))
        if action_name is not None:
            parts.append(action_name)
        name = re.sub(r"_+", "_", re.sub(r"[\\/:*?\"<>|\n\r\t]", "_", "-".join(parts))).strip()
        return (name or "profile") + extension

    def _prepare_streams(self) -> None:
        if self._write_stream is not None:
            return
        if self.filename and self.dirpath:
            from raylit import fs

            self._output_file = _ReportFile(fs.join(os.fspath(self.dirpath), self._prepare_filename()))
            self._write_stream = self._output_file.write
        else:
            self._write_stream = _report_log().info

    def _stats_to_str(self, stats: dict[str, str]) -> str:
        """A report of one text block per action (AdvancedProfiler, PyTorchProfiler)."""
        rank = f" rank: {self._local_rank}" if self._local_rank is not None else ""
        lines = [(f"{self._stage.upper()} " if self._stage else "") + "Profiler Report"]
        for action, text in stats.items():
            lines += [f"Profile stats for: {action}{rank}", text]
        return os.linesep.join(lines)

    def __getstate__(self) -> dict[str, Any]:
        # open files and bound methods stay behind (the profiler travels to Ray workers with the Trainer)
        state = self.__dict__.copy()
        state["_output_file"] = state["_write_stream"] = None
        return state

    def __del__(self) -> None:
        try:
            self.teardown(stage=self._stage)
        except Exception:  # noqa: BLE001 - interpreter shutdown, half-initialised object
            pass


class _ReportFile:
    """A report file opened for appending, as Lightning's profilers do (a second ``fit`` adds its report to
    the same ``fit-{filename}.txt``). Local paths are appended to directly; on remote storage (``s3://``...)
    the text is collected and the whole file rewritten atomically on close."""

    def __init__(self, path: str) -> None:
        from raylit import fs

        self.path = path
        self._remote = fs.is_remote(path)
        self._chunks: list[str] = []
        self._file: Any = None
        if not self._remote:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._file = open(path, "a")  # noqa: SIM115 - closed in close()

    def write(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text)
        else:
            self._chunks.append(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._chunks:
            from raylit import fs

            old = fs.read_bytes(self.path) if fs.exists(self.path) else b""
            fs.write_bytes_atomic(old + "".join(self._chunks).encode(), self.path)
            self._chunks = []
