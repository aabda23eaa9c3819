"""Checkpoint writes that do not stop training: snapshot now, serialise and write in a background thread.

A checkpoint callback (``ModelCheckpoint``, ``ResumeCheckpoint``) owns one ``AsyncCheckpointWriter`` and saves
through it like this::

    writer.settle(step)                    # a write of an earlier step finishes first (one snapshot in memory)
    with writer.capture(step):             # the next fs.save_torch on this thread is handed to the writer
        trainer.save_checkpoint(path)      # builds the dict (collectives included) as usual; rank 0 "writes"
    writer.after_write(delete_old_file)    # runs on the main thread once the file is complete

``trainer.save_checkpoint`` stays the one way a checkpoint is made (a user's or a test's Trainer works
unchanged), and it stays synchronous when called by anyone else. Under ``capture`` its final
``fs.save_torch(checkpoint, path)`` call only takes a *snapshot*: every tensor is copied to host memory
(device tensors into pinned memory with ``non_blocking`` copies; CPU tensors are cloned, since the next
optimizer step updates them in place), containers are copied, other objects deep-copied. Views keep
sharing one copied storage, and GPU storages keep their ``cuda:N`` location tag in the file, so the bytes
written are those a synchronous save writes. The background thread then serialises and writes atomically
(``raylit.fs``: temporary file + fsync + ``os.replace``; object stores publish an upload only when complete), so
a process killed mid-write never leaves a truncated file under the final name.

Several saves at the same step (a top-k file and ``last.ckpt``) form one *job*: their snapshots share the copied
tensors, so one step's state is held once. A save at a later step waits until the job is written, and so does
``wait()`` (the callback calls it in ``on_fit_end``, ``teardown`` and ``on_exception``). What depends on a file
being complete (deleting the file it replaces, telling loggers, pruning old resume files) is queued with
``after_write`` and runs on the main thread when the job is complete (``poll()``/``wait()``), never from the
background thread. A failed write re-raises its exception on the main thread at the next ``poll``, save or
``wait``; nothing queued after it runs.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator

import torch

from raylit import fs

# --------------------------------------------------------------------------------------------------------------
# snapshot
# --------------------------------------------------------------------------------------------------------------
_ATOMIC = (
    str,
    bytes,
    int,
    float,
    complex,
    bool,
    type(None),
    torch.dtype,
    torch.device,
    torch.layout,
    torch.memory_format,
)

# Host copies of device storages -> the location the original had ("cuda:0"), so that torch.save tags them as
# a synchronous save of the device tensor would. Keyed by data_ptr of the live host copy; entries live as long
# as their job.
_LOCATIONS: dict[int, str] = {}
_LOCATIONS_LOCK = threading.Lock()
_TAGGER_REGISTERED = False


def _location_tagger(storage: Any) -> str | None:
    if not _LOCATIONS:
        return None
    try:
        ptr = storage.data_ptr()
    except Exception:  # noqa: BLE001 - not a storage we know; let torch's own taggers decide
        return None
    with _LOCATIONS_LOCK:
        return _LOCATIONS.get(ptr)


def _register_tagger() -> None:
    global _TAGGER_REGISTERED
    if _TAGGER_REGISTERED:
        return
    taken = {entry[0] for entry in torch.serialization._package_registry}
    priority = next(p for p in range(9, -100, -1) if p not in taken)  # before torch's cpu tagger (10)
    torch.serialization.register_package(priority, _location_tagger, lambda obj, location: None)
    _TAGGER_REGISTERED = True


class _Snapshot:
    """Copies a checkpoint dict; ``memo`` is shared by the snapshots of one job (same step)."""

    def __init__(self, storages: dict, pool: dict | None = None) -> None:
        self.storages = storages  # (device, data_ptr, nbytes) -> (original storage, copy, version)
        self.pool = pool if pool is not None else {}  # nbytes -> host storages of the previous job, to reuse
        self.ids: dict[int, Any] = {}  # id(original container) -> its copy, as pickle's memo sees identity
        self.deep: dict[int, Any] = {}  # copy.deepcopy memo for other objects
        self.devices: set[torch.device] = set()  # devices with copies in flight (non_blocking)
        self.locations: list[int] = []  # _LOCATIONS keys this snapshot added

    def copy(self, obj: Any) -> Any:
        if isinstance(obj, _ATOMIC):
            return obj
        key = id(obj)
        if key in self.ids:
            return self.ids[key]
        if isinstance(obj, torch.Tensor):
            out = self._tensor(obj)
        elif isinstance(obj, dict):
            out = copy.copy(obj)  # the same (sub)class: OrderedDict, AttributeDict, ...
            self.ids[key] = out
            for k, v in obj.items():
                out[k] = self.copy(v)
        elif isinstance(obj, list):
            out = copy.copy(obj)
            self.ids[key] = out
            for i, v in enumerate(obj):
                out[i] = self.copy(v)
        elif isinstance(obj, tuple):
            items = [self.copy(v) for v in obj]
            if type(obj) is tuple:
                out = tuple(items)
            elif hasattr(obj, "_fields"):  # namedtuple
                out = type(obj)(*items)
            else:
                out = type(obj)(items)  # torch.Size and the like
        else:
            out = copy.deepcopy(obj, self.deep)
        self.ids[key] = out
        return out

    def _tensor(self, t: torch.Tensor) -> torch.Tensor:
        plain = type(t) in (torch.Tensor, torch.nn.Parameter) and t.layout == torch.strided
        if not plain or t.is_quantized or t.is_nested or t.device.type == "meta":
            # rare layouts: a detached copy on the host (storage sharing is not kept for these)
            out = t.detach().clone() if t.device.type == "cpu" else t.detach().to("cpu")
            return torch.nn.Parameter(out, t.requires_grad) if isinstance(t, torch.nn.Parameter) else out
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr(), storage.nbytes())
        found = self.storages.get(key)
        if found is None or found[2] != t._version:  # (changed in place since the same-step snapshot: recopy)
            found = (storage, self._copy_storage(storage, t.device), t._version)
            self.storages[key] = found
        host = torch.empty(0, dtype=t.dtype).set_(found[1], t.storage_offset(), t.size(), t.stride())
        if isinstance(t, torch.nn.Parameter):
            return torch.nn.Parameter(host, t.requires_grad)
        if t.requires_grad and t.is_leaf:
            host.requires_grad_(True)
        return host

    def _copy_storage(self, storage: Any, device: torch.device) -> Any:
        if device.type == "cpu":
            # Reusing the previous snapshot's buffers saves the page faults of fresh allocations (most of the
            # copy's time: ~4x on a 2-core VM for 100 MB).
            free = self.pool.get(storage.nbytes())
            if free:
                return free.pop().copy_(storage)
            return storage.clone()
        if device.type == "cuda":
            host = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=True).untyped_storage()
            host.copy_(storage, non_blocking=True)  # ordered before later kernels on this stream
            self.devices.add(device)
        else:
            host = storage.cpu()
        _register_tagger()
        with _LOCATIONS_LOCK:
            _LOCATIONS[host.data_ptr()] = torch.serialization.location_tag(storage)
        self.locations.append(host.data_ptr())
        return host


# --------------------------------------------------------------------------------------------------------------
# the writer
# --------------------------------------------------------------------------------------------------------------
class _Job:
    """The writes of one step: their snapshots share tensor copies."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.storages: dict = {}
        self.writes: list[tuple[str, Future]] = []
        self.actions: list[Callable[[], None]] = []
        self.on_error: list[Callable[[], None]] = []
        self.locations: list[int] = []

    def done(self) -> bool:
        return all(f.done() for _, f in self.writes)

    def release(self, pool: dict | None = None) -> None:
        """Forget the snapshot; its CPU copies go to ``pool`` (when given) for the next job to reuse."""
        with _LOCATIONS_LOCK:
            for ptr in self.locations:
                _LOCATIONS.pop(ptr, None)
        if pool is not None:
            pool.clear()  # at most one job's buffers are kept
            for original, host, _ in self.storages.values():
                if original.device.type == "cpu":
                    pool.setdefault(host.nbytes(), []).append(host)
        self.storages.clear()


class AsyncCheckpointWriter:
    """One background writer per checkpoint callback; see the module docstring. ``enabled=False`` makes
    every save synchronous (``capture`` then does nothing)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._job: _Job | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._capturing_step: int | None = None
        self._pool: dict[int, list] = {}  # the last written job's host buffers (see _Snapshot._copy_storage)
        self.submitted = 0  # writes handed to the background thread (tests check the async path is taken)

    # -- main thread -------------------------------------------------------------------------------------------
    @property
    def pending(self) -> bool:
        return self._job is not None

    def settle(self, step: int) -> None:
        """Before a save at ``step``: a job of another step is completed first (its errors raise here)."""
        if self._job is not None and self._job.step != step:
            self.wait()

    @contextlib.contextmanager
    def capture(self, step: int) -> Iterator[None]:
        """Route this thread's next ``fs.save_torch`` to the background (when enabled)."""
        if not self.enabled:
            yield
            return
        self.settle(step)
        self._capturing_step = step
        token = fs._redirect_to(self)
        try:
            yield
        finally:
            fs._redirect_to(token)
            self._capturing_step = None

    def submit(self, obj: Any, path: str) -> None:
        """Called by ``fs.save_torch`` under ``capture``: snapshot ``obj`` now, write it in the background."""
        step = self._capturing_step if self._capturing_step is not None else -1
        self.settle(step)
        if self._job is None:
            self._job = _Job(step)
        job = self._job
        snap = _Snapshot(job.storages, self._pool)
        data = snap.copy(obj)
        job.locations += snap.locations
        events = [torch.cuda.current_stream(d).record_event() for d in snap.devices]
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raylit-checkpoint")
        job.writes.append((path, self._executor.submit(_write, data, path, events)))
        self.submitted += 1

    def after_write(self, action: Callable[[], None], on_error: Callable[[], None] | None = None) -> None:
        """Run ``action`` once the pending job is written (now when nothing is pending); ``on_error`` runs
        instead if a write of the job fails."""
        if self._job is None:
            action()
            return
        self._job.actions.append(action)
        if on_error is not None:
            self._job.on_error.append(on_error)

    def poll(self) -> None:
        """Finish a completed job without blocking: run its queued actions, or raise its write error."""
        if self._job is not None and self._job.done():
            self._finish()

    def wait(self) -> None:
        """Block until the pending job is written; then as ``poll``."""
        if self._job is not None:
            for _, future in self._job.writes:
                future.exception()  # waits; the error is raised by _finish
            self._finish()

    def wait_after_exception(self, exc: BaseException) -> None:
        """``wait`` on a path that is already failing with ``exc``: a write error does not replace ``exc``; it
        is attached to it as a note (and logged as a warning) so that it is not lost."""
        try:
            self.wait()
        except Exception as write_error:  # noqa: BLE001 - reported, the run's own exception propagates
            import warnings

            message = f"raylit: a background checkpoint write failed too: {type(write_error).__name__}: {write_error}"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            if hasattr(exc, "add_note"):
                exc.add_note(message)

    def close_after_exception(self, exc: BaseException) -> None:
        """``close`` on a failing path (see ``wait_after_exception``)."""
        self.wait_after_exception(exc)
        self.close()

    def close(self) -> None:
        """``wait``, then stop the thread (a later save starts a new one)."""
        try:
            self.wait()
        finally:
            self._pool.clear()
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def _finish(self) -> None:
        job, self._job = self._job, None
        failed = True
        try:
            for path, future in job.writes:
                error = future.exception()
                if error is not None:
                    for undo in job.on_error:
                        undo()
                    if hasattr(error, "add_note"):
                        error.add_note(f"(raised by the background write of checkpoint {path} at step {job.step})")
                    raise error
            failed = False
            for action in job.actions:
                action()
        finally:
            job.release(None if failed else self._pool)

    # -- pickling: a callback travels to Ray workers; its writer's thread does not ----------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"enabled": self.enabled}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.get("enabled", True))


def _write(data: Any, path: str, events: list) -> None:
    """The background thread: wait for the device->host copies, serialise, write atomically."""
    for event in events:
        event.synchronize()
    fs.write_torch(data, path)
