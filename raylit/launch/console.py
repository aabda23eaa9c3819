"""Rank 0's console on the driver's terminal: its stdout/stderr are written out as they are (one progress bar,
no Ray prefixes), through a small Ray actor that buffers text and a driver thread that drains it.

The launcher starts the relay (``ConsoleRelay.start``) and hands its actor handle to the workers; rank 0 wraps
its run in ``relay_console(handle, isatty)``.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import threading
import time
from typing import Any


class ConsoleRelay:
    """A small Ray actor that buffers text from rank 0, and a driver thread that writes it out."""

    def __init__(self, ray: Any, handle: Any) -> None:
        self._ray, self.handle = ray, handle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="raylit-console", daemon=True)

    @classmethod
    def start(cls, ray: Any) -> ConsoleRelay:
        # One buffer actor per driver and Ray session, reused by later calls (an actor start costs a process).
        job = ray.get_runtime_context().get_job_id()
        handle = _relay_actors.get(job)
        if handle is not None:
            try:
                ray.get(handle.drain.remote(), timeout=10)  # alive; drop anything left from a previous run
            except Exception:
                handle = None
        if handle is None:
            handle = _relay_actors[job] = ray.remote(num_cpus=0)(_RelayBuffer).remote()
        relay = cls(ray, handle)
        relay._thread.start()
        return relay

    def _drain_once(self, timeout: float) -> None:
        chunks = self._ray.get(self.handle.drain.remote(), timeout=timeout)
        for stream, text in chunks:
            target = sys.stdout if stream == "stdout" else sys.stderr
            target.write(text)
            target.flush()

    def _pump(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self._drain_once(timeout=30)
            except Exception:  # the relay is a convenience; never let it break the run
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self._drain_once(timeout=10)


_relay_actors: dict[str, Any] = {}


class _RelayBuffer:
    def __init__(self) -> None:
        self._chunks: list[tuple[str, str]] = []

    def write(self, stream: str, text: str) -> None:
        self._chunks.append((stream, text))

    def drain(self) -> list[tuple[str, str]]:
        out, self._chunks = self._chunks, []
        return out


class _RelayStream(io.TextIOBase):
    """A text stream for rank 0 that batches writes (at most ~10 sends a second) into the relay actor."""

    def __init__(self, handle: Any, name: str, fallback: Any, isatty: bool) -> None:
        self._handle, self._name, self._fallback, self.is_tty = handle, name, fallback, isatty
        self._buf: list[str] = []
        self._last = 0.0
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.is_tty

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def write(self, text: str) -> int:
        with self._lock:
            self._buf.append(text)
            if time.monotonic() - self._last >= 0.1:
                self._send()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._send()

    def _send(self) -> None:
        if not self._buf:
            return
        text, self._buf = "".join(self._buf), []
        self._last = time.monotonic()
        try:
            self._handle.write.remote(self._name, text)
        except Exception:
            self._fallback.write(text)


@contextlib.contextmanager
def relay_console(handle: Any, isatty: bool):
    if handle is None:
        yield
        return
    out, err = sys.stdout, sys.stderr
    sys.stdout = _RelayStream(handle, "stdout", out, isatty)
    sys.stderr = _RelayStream(handle, "stderr", err, isatty)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = out, err
        import ray

        # actor calls from one caller run in order: once this returns, every chunk above is in the buffer
        with contextlib.suppress(Exception):
            ray.get(handle.write.remote("stdout", ""), timeout=10)


def is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:
        return False


def terminal_columns() -> int | None:
    try:
        return shutil.get_terminal_size().columns
    except Exception:
        return None


def forget_relays() -> None:
    """Drop the relay actors of a Ray session that has been shut down (a later session starts new ones)."""
    _relay_actors.clear()
