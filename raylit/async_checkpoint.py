"""Checkpoint writes that do not stop training: snapshot now, serialise and write in a background thread.

A checkpoint callback (``ModelCheckpoint``, ``ResumeCheckpoint``) owns one ``AsyncCheckpointWriter`` and saves
through it like this::

    writer.settle(step)                    # a write of an earlier step finishes first (one snapshot in memory)
    with writer.capture(step, trainer.optimizers):  # the next fs.save_torch on this thread goes to the writer
        trainer.save_checkpoint(path)      # builds the dict (collectives included) as usual; rank 0 "writes"
    writer.after_write(delete_old_file)    # runs on the main thread once the file is complete

``trainer.save_checkpoint`` stays the one way a checkpoint is made (a user's or a test's Trainer works
unchanged), and it stays synchronous when called by anyone else. Under ``capture`` its final
``fs.save_torch(checkpoint, path)`` call only takes a *snapshot*: every tensor is copied to host memory
(device tensors into pinned memory with ``non_blocking`` copies; CPU tensors into host buffers, since the next
optimizer step updates them in place), containers are copied, other objects deep-copied. Views keep
sharing one copied storage, and GPU storages keep their ``cuda:N`` location tag in the file, so the bytes
written are those a synchronous save writes. The background thread then serialises and writes atomically
(``raylit.fs``: temporary file + fsync + ``os.replace``; object stores publish an upload only when complete), so
a process killed mid-write never leaves a truncated file under the final name.

**Deferred copy of optimizer state.** Most of the snapshot is optimizer state (Adam: two moments per
parameter). The CPU state tensors of the ``torch.optim.Optimizer``s passed to ``capture`` (the dict holds those
very tensors: ``optimizer.state_dict()`` does not copy them) are not copied on the training thread: the snapshot
records (source, destination buffer, the tensor's ``_version``) and the background thread copies them *first*,
before serialising. Why that is safe: between two steps nothing but the optimizer's own ``step`` writes its
state, and each such optimizer gets a step pre-hook that makes the step wait until the copies are done. torch's
own optimizers call the closure (forward and backward, under automatic optimization) before they write any
state, so for them the hook wraps the closure and the wait comes after it; a step that is not torch's waits
before it starts. The hooks are removed at the next ``poll``/``wait`` (not by themselves: torch is iterating
them). Parameters (user code may edit them in place, even through ``.data``), buffers, every other tensor and a
state tensor sharing a parameter's storage are still copied at once. A safety net for a writer other than the
hooked step (user code changing ``optimizer.state`` in place): after the copies the background thread compares
each source's ``_version``; a change fails the job like a failed write (no file, the checkpoint does not count,
a ``RuntimeError`` names ``async_save=False``). It sees in-place writes by torch ops completed before the check,
not writes through ``.data`` nor one still running: the hook, not the check, is the guarantee. The training
thread's time waiting for the copies is ``blocked_in_step_s``.

Several saves at the same step (a top-k file and ``last.ckpt``) form one *job*: their snapshots share the copied
tensors, so one step's state is held once. A save at a later step waits until the job is written, and so does
``wait()`` (the callback calls it in ``on_fit_end``, ``teardown`` and ``on_exception``). What depends on a file
being complete (deleting the file it replaces, telling loggers, pruning old resume files) is queued with
``after_write`` and runs on the main thread when the job is complete (``poll()``/``wait()``), never from the
background thread. A failed write (or deferred copy) re-raises its exception on the main thread at the next
``poll``, save or ``wait``; nothing queued after it runs.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, Callable, Iterator

import torch

from raylit import fs

# --------------------------------------------------------------------------------------------------------------
# snapshot
# --------------------------------------------------------------------------------------------------------------
_ATOMIC = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device, torch.layout,
           torch.memory_format)

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

    def __init__(self, storages: dict, pool: dict | None = None, defer: dict | None = None) -> None:
        self.storages = storages  # (device, data_ptr, nbytes) -> (original storage, copy, version)
        self.pool = pool if pool is not None else {}  # nbytes -> host storages of the previous job, to reuse
        self.defer = defer or {}  # data_ptr of a CPU storage the background thread copies -> its optimizer
        self.deferred: list[tuple] = []  # (tensor, its storage, destination, its _version, optimizer)
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
            if key[1] in self.defer and t.device.type == "cpu" and storage.nbytes():
                host = self._buffer(storage.nbytes())  # filled by the background thread (see module docstring)
                self.deferred.append((t, storage, host, t._version, self.defer[key[1]]))
            else:
                host = self._copy_storage(storage, t.device)
            found = (storage, host, t._version)
            self.storages[key] = found
        host = torch.empty(0, dtype=t.dtype).set_(found[1], t.storage_offset(), t.size(), t.stride())
        if isinstance(t, torch.nn.Parameter):
            return torch.nn.Parameter(host, t.requires_grad)
        if t.requires_grad and t.is_leaf:
            host.requires_grad_(True)
        return host

    def _buffer(self, nbytes: int) -> Any:
        # Reusing the previous snapshot's buffers saves the page faults of fresh allocations (most of the
        # copy's time: ~4x on a 2-core VM for 100 MB).
        free = self.pool.get(nbytes)
        return free.pop() if free else torch.UntypedStorage(nbytes)

    def _copy_storage(self, storage: Any, device: torch.device) -> Any:
        if device.type == "cpu":
            host = self._buffer(storage.nbytes())
            _copy_bytes(storage, host)
            return host
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


def _copy_bytes(source: Any, destination: Any) -> None:
    """Storage to storage, through uint8 tensors (a tensor ``copy_`` releases the GIL and was a little faster)."""
    torch.empty(0, dtype=torch.uint8).set_(destination).copy_(torch.empty(0, dtype=torch.uint8).set_(source))


def _optimizer_state(optimizers: Any) -> dict[int, Any]:
    """data_ptr of each CPU storage in the state of ``optimizers`` (torch optimizers, or wrappers with an
    ``optimizer`` attribute) -> its optimizer; storages shared with a parameter are left out."""
    out: dict[int, Any] = {}
    params: set[int] = set()  # (a DTensor parameter has no plain storage: FSDP's state is copied at once)
    for opt in optimizers or ():
        opt = opt if isinstance(opt, torch.optim.Optimizer) else getattr(opt, "optimizer", None)
        if isinstance(opt, torch.optim.Optimizer):
            params.update(p.untyped_storage().data_ptr() for g in opt.param_groups for p in g["params"]
                          if type(p) in (torch.Tensor, torch.nn.Parameter))
            values = [v for st in opt.state.values() for v in (st.values() if isinstance(st, dict) else [st])]
            for t in (t for v in values for t in (v if isinstance(v, (list, tuple)) else [v])):
                if type(t) is torch.Tensor and t.device.type == "cpu":
                    out[t.untyped_storage().data_ptr()] = opt
    return {ptr: opt for ptr, opt in out.items() if ptr not in params}


_WRITER_THREAD = threading.local()  # .active on the writers' background threads


def _copy_deferred(records: list[tuple], step: int, before: Callable[[], None] | None) -> None:
    """The background thread, before serialising: the deferred copies, then the check that no source changed."""
    if before is not None:
        before()  # test seam: hold the copy
    for _, source, destination, *_ in records:
        _copy_bytes(source, destination)
    torn = sum(t._version != version for t, _, _, version, _ in records)
    if torn:
        raise RuntimeError(
            f"raylit: the checkpoint of step {step} was not written: {torn} of {len(records)} optimizer state "
            "tensor(s) were changed in place before the background copy of them was done (only the optimizer's "
            "step, which waits for the copy, is expected to write them). If your code changes optimizer state in "
            "place, save synchronously: ModelCheckpoint/ResumeCheckpoint(..., async_save=False)."
        )


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
        self.copies: list[Future] = []  # the background copies of deferred storages
        self.hooks: dict[int, Any] = {}  # id(optimizer) -> handle of its step pre-hook (waits for ``copies``)

    def done(self) -> bool:
        return all(f.done() for _, f in self.writes) and all(f.done() for f in self.copies)

    def unhook(self) -> None:
        for handle in self.hooks.values():
            handle.remove()
        self.hooks.clear()

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
    """One background writer per checkpoint callback (module docstring); ``enabled=False``: synchronous saves."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._job: _Job | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._capturing_step: int | None = None
        self._capturing_optimizers: Any = ()
        self._pool: dict[int, list] = {}  # the last written job's host buffers (see _Snapshot._copy_storage)
        self.submitted = 0  # writes handed to the background thread (tests check the async path is taken)
        self.deferred = 0  # storages whose copy was deferred to the background thread
        self.blocked_in_step_s = 0.0  # training thread's time waiting for deferred copies (step hooks, wait_copied)
        self._before_copy: Callable[[], None] | None = None  # test seam: runs on the background thread first

    # -- main thread -------------------------------------------------------------------------------------------
    @property
    def pending(self) -> bool:
        return self._job is not None

    def settle(self, step: int) -> None:
        """Before a save at ``step``: a job of another step is completed first (its errors raise here)."""
        if self._job is not None and self._job.step != step:
            self.wait()

    @contextlib.contextmanager
    def capture(self, step: int, optimizers: Any = ()) -> Iterator[None]:
        """Route this thread's next ``fs.save_torch`` to the background (when enabled). The CPU state of
        ``optimizers`` (``trainer.optimizers``) is copied in the background, their next step waiting for it."""
        if not self.enabled:
            yield
            return
        self.settle(step)
        self._capturing_step, self._capturing_optimizers = step, optimizers
        token = fs._redirect_to(self)
        try:
            yield
        finally:
            fs._redirect_to(token)
            self._capturing_step, self._capturing_optimizers = None, ()

    def submit(self, obj: Any, path: str) -> None:
        """Called by ``fs.save_torch`` under ``capture``: snapshot ``obj`` now, write it in the background."""
        step = self._capturing_step if self._capturing_step is not None else -1
        self.settle(step)
        if self._job is None:
            self._job = _Job(step)
        job = self._job
        snap = _Snapshot(job.storages, self._pool, _optimizer_state(self._capturing_optimizers))
        data = snap.copy(obj)
        job.locations += snap.locations
        events = [torch.cuda.current_stream(d).record_event() for d in snap.devices]
        if self._executor is None:
            mark = functools.partial(setattr, _WRITER_THREAD, "active", True)
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raylit-checkpoint", initializer=mark)
        if snap.deferred:
            try:
                job.copies.append(self._executor.submit(_copy_deferred, snap.deferred, step, self._before_copy))
            except BaseException:  # not scheduled (interpreter shutting down): the buffers must still be right
                _copy_deferred(snap.deferred, step, None)
                raise
            self.deferred += len(snap.deferred)
            for *_, opt in snap.deferred:
                if id(opt) not in job.hooks:
                    job.hooks[id(opt)] = opt.register_step_pre_hook(functools.partial(self._step_hook, job))
        job.writes.append((path, self._executor.submit(_write, data, path, events, list(job.copies))))
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
        """Without blocking: remove the step hooks once copied; finish a written job (actions, or its error)."""
        if self._job is not None and all(f.done() for f in self._job.copies):
            self._job.unhook()
            if self._job.done():
                self._finish()

    def wait_copied(self) -> None:
        """Block until the pending job's deferred copies are done (what a step waits for before writing state)."""
        if self._job is not None:
            self._await_copies(self._job)

    def wait(self) -> None:
        """Block until the pending job is copied and written; then as ``poll``."""
        if self._job is not None:
            wait_futures(self._job.copies + [future for _, future in self._job.writes])  # errors: _finish
            self._finish()

    def _step_hook(self, job: _Job, optimizer: Any, args: tuple, kwargs: dict) -> tuple | None:
        """An optimizer's step pre-hook: the step waits for the deferred copies before it writes its state. torch's
        own optimizers call the closure (forward and backward, under automatic optimization) before writing any
        state, so theirs wait after the closure; any other step waits here, before it starts."""
        closure = kwargs["closure"] if "closure" in kwargs else args[1] if len(args) > 1 else None
        own_step = getattr(type(optimizer).step, "__module__", "").startswith("torch.optim.")
        if closure is None or not own_step or all(f.done() for f in job.copies):
            self._await_copies(job)
            return None

        def closure_then_wait() -> Any:
            loss = closure()
            self._await_copies(job)
            return loss

        return (args[:1] + args[2:] if "closure" not in kwargs else args), {**kwargs, "closure": closure_then_wait}

    def _await_copies(self, job: _Job) -> None:
        """Wait for the deferred copies (never on a writer's own thread: it would wait for itself). A failed copy
        is not raised here: it fails the job (``_finish``)."""
        if getattr(_WRITER_THREAD, "active", False):
            return
        start = time.perf_counter()
        wait_futures(job.copies)
        self.blocked_in_step_s += time.perf_counter() - start

    def wait_after_exception(self, exc: BaseException) -> None:
        """``wait`` on a path that is already failing with ``exc``: a write error does not replace ``exc``; it
        is attached to it as a note (and logged as a warning) so that it is not lost."""
        try:
            self.wait()
        except Exception as write_error:  # noqa: BLE001 - reported, the run's own exception propagates
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
            job.unhook()  # (not from a hook: wait/poll/_finish never run inside an optimizer's step hooks)
            job.release(None if failed else self._pool)

    # -- pickling: a callback travels to Ray workers; its writer's thread does not ----------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"enabled": self.enabled}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.get("enabled", True))


def _write(data: Any, path: str, events: list, copies: list[Future]) -> None:
    """The background thread: the job's deferred copies (run before, on this thread) must have succeeded; wait for
    the device->host copies, serialise, write atomically."""
    for copied in copies:
        copied.result()  # a failed or torn copy: this file is not written either
    for event in events:
        event.synchronize()
    fs.write_torch(data, path)
