"""``PyTorchProfiler``: ``torch.profiler`` around the run; the report is torch's operator table.

Kept small: one ``torch.profiler.profile`` from the first action to the report, each action a
``record_function`` range named ``[pl][profile]{action}`` (the name Lightning uses, so traces read the same),
module forward calls as ``[pl][module]{class}: {name}`` ranges, and the trace exported for Chrome/Perfetto
(``{stage}-{filename}.pt.trace.json`` in ``dirpath``). Not provided: NVTX emission and Lightning's default
``wait=1, warmup=1, active=3`` schedule (without a ``schedule=`` the whole run is recorded; pass
``schedule=torch.profiler.schedule(...)`` for long runs: the profiler steps after every ``*_step``).
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

from raylit.profilers.profiler import Profiler
from raylit.utilities.exceptions import MisconfigurationException

_STEP_FUNCTIONS = ("training_step", "validation_step", "test_step", "predict_step")


class PyTorchProfiler(Profiler):
    """Records torch operators (CPU, and CUDA when available) with ``torch.profiler``.

    Args:
        dirpath, filename: as for ``SimpleProfiler``; the Chrome trace goes to ``dirpath`` too.
        group_by_input_shapes: group the table by operator input shapes (needs ``record_shapes=True``).
        export_to_chrome: write the trace as ``.pt.trace.json`` (when there is a ``dirpath``).
        row_limit: rows of the table (-1: all).
        sort_by_key: the table's sort column, one of ``AVAILABLE_SORT_KEYS``; default ``cpu_time_total``
            (``cuda_time_total`` when CUDA is recorded).
        record_module_names: wrap each submodule's forward in a range named after it.
        table_kwargs: more arguments for ``EventList.table``.
        **profiler_kwargs: passed to ``torch.profiler.profile`` (``activities``, ``record_shapes``,
            ``profile_memory``, ``with_stack``, ``schedule``, ...).
    """

    STEP_FUNCTIONS = set(_STEP_FUNCTIONS)
    AVAILABLE_SORT_KEYS = {"cpu_time", "cuda_time", "cpu_time_total", "cuda_time_total", "cpu_memory_usage",
                           "cuda_memory_usage", "self_cpu_memory_usage", "self_cuda_memory_usage", "count"}

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None,
                 group_by_input_shapes: bool = False, emit_nvtx: bool = False, export_to_chrome: bool = True,
                 row_limit: int = 20, sort_by_key: str | None = None, record_module_names: bool = True,
                 table_kwargs: dict[str, Any] | None = None, **profiler_kwargs: Any) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        if emit_nvtx:
            raise MisconfigurationException("`PyTorchProfiler(emit_nvtx=True)` is not supported by raylit; run "
                                            "under `nsys` with torch.cuda.nvtx ranges instead.")
        schedule = profiler_kwargs.get("schedule")
        if schedule is not None and not callable(schedule):
            raise MisconfigurationException(f"Schedule should be a callable. Found: {schedule}")
        self._group_by_input_shapes = group_by_input_shapes and profiler_kwargs.get("record_shapes", False)
        self._export_to_chrome = export_to_chrome
        self._row_limit = row_limit
        self._sort_by_key = sort_by_key or _default_sort_key(profiler_kwargs)
        if self._sort_by_key not in self.AVAILABLE_SORT_KEYS:
            raise MisconfigurationException(
                f"Found sort_by_key: {self._sort_by_key}. Should be within {self.AVAILABLE_SORT_KEYS}. ")
        self._record_module_names = record_module_names
        self._table_kwargs = dict(table_kwargs or {})
        for key in self._table_kwargs:
            if key in ("sort_by", "row_limit"):
                raise KeyError(f"Found invalid table_kwargs key: {key}. This is already a positional argument of "
                               "the Profiler.")
        self._profiler_kwargs = profiler_kwargs
        self.profiler: Any = None
        self.function_events: Any = None
        self._recording: dict[str, Any] = {}
        self._module_ref: Any = None
        self._module_handles: list[Any] = []

    # the hook dispatcher hands over the LightningModule, for module-name ranges
    def _attach_module(self, module: Any) -> None:
        self._module_ref = weakref.ref(module) if module is not None else None

    def start(self, action_name: str) -> None:
        import torch

        if self.profiler is None:
            kwargs = dict(self._profiler_kwargs)
            kwargs.setdefault("activities", _default_activities())
            self.profiler = torch.profiler.profile(**kwargs)
            self.profiler.__enter__()
            self._register_module_ranges()
        if action_name not in self._recording:
            rec = torch.profiler.record_function("[pl][profile]" + action_name)
            rec.__enter__()
            self._recording[action_name] = rec

    def stop(self, action_name: str) -> None:
        rec = self._recording.pop(action_name, None)
        if rec is not None:
            rec.__exit__(None, None, None)
        if self.profiler is not None and self._profiler_kwargs.get("schedule") is not None and \
                action_name.endswith(_STEP_FUNCTIONS):
            self.profiler.step()

    def summary(self) -> str:
        self._close_profiler()
        if not self.function_events:
            return ""
        averages = self.function_events.key_averages(group_by_input_shapes=self._group_by_input_shapes)
        table = averages.table(sort_by=self._sort_by_key, row_limit=self._row_limit, **self._table_kwargs)
        return self._stats_to_str({"records": table})

    def teardown(self, stage: str | None) -> None:
        self._close_profiler()
        super().teardown(stage=stage)

    # --- internals ---------------------------------------------------------------------------------------
    def _close_profiler(self) -> None:
        for rec in reversed(list(self._recording.values())):
            rec.__exit__(None, None, None)
        self._recording = {}
        for handle in self._module_handles:
            handle.remove()
        self._module_handles = []
        if self.profiler is None:
            return
        prof, self.profiler = self.profiler, None
        prof.__exit__(None, None, None)
        try:
            self.function_events = prof.events()
        except (AssertionError, RuntimeError):  # nothing was recorded (e.g. a schedule that never recorded)
            self.function_events = None
        if self._export_to_chrome and self.dirpath and self.function_events and _global_rank_zero():
            from raylit import fs

            path = fs.join(os.fspath(self.dirpath), self._prepare_filename(extension=".pt.trace.json"))
            if fs.is_remote(path):
                import tempfile

                with tempfile.TemporaryDirectory() as tmp:
                    local = os.path.join(tmp, "trace.json")
                    prof.export_chrome_trace(local)
                    with open(local, "rb") as f:
                        fs.write_bytes_atomic(f.read(), path)
            else:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                prof.export_chrome_trace(path)

    def _register_module_ranges(self) -> None:
        module = self._module_ref() if self._module_ref is not None else None
        if module is None or not self._record_module_names:
            return
        import torch

        def pre(name: str) -> Any:
            def hook(mod: Any, args: Any) -> None:
                rec = torch.profiler.record_function(f"[pl][module]{type(mod).__module__}.{type(mod).__name__}: "
                                                     f"{name}")
                rec.__enter__()
                mod.__dict__.setdefault("_raylit_prof_ranges", []).append(rec)
            return hook

        def post(mod: Any, args: Any, out: Any) -> None:
            ranges = mod.__dict__.get("_raylit_prof_ranges")
            if ranges:
                ranges.pop().__exit__(None, None, None)

        for name, sub in module.named_modules():
            if name:
                self._module_handles.append(sub.register_forward_pre_hook(pre(name)))
                self._module_handles.append(sub.register_forward_hook(post))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(profiler=None, function_events=None, _recording={}, _module_ref=None, _module_handles=[])
        return state


def _global_rank_zero() -> bool:
    from raylit.profilers.profiler import _global_rank

    return _global_rank() == 0


def _default_activities() -> list[Any]:
    import torch
    from torch.profiler import ProfilerActivity

    acts = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(ProfilerActivity.CUDA)
    return acts


def _default_sort_key(profiler_kwargs: dict[str, Any]) -> str:
    activities = profiler_kwargs.get("activities")
    if activities:
        cuda = any(getattr(a, "name", str(a)).upper().endswith("CUDA") for a in activities)
    else:
        import torch

        cuda = torch.cuda.is_available()
    return "cuda_time_total" if cuda else "cpu_time_total"
