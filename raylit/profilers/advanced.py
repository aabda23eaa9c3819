"""``AdvancedProfiler``: a ``cProfile`` profile per action; the report is pstats' table for each action."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from raylit.profilers.profiler import Profiler


class AdvancedProfiler(Profiler):
    """Profiles every function call made during each action with ``cProfile``. Verbose: for finding hot spots.

    Args:
        dirpath, filename: as for ``SimpleProfiler``.
        line_count_restriction: how many functions to list per action: an int (a count) or a float in
            [0.0, 1.0] (a fraction of the lines), passed to ``pstats.Stats.print_stats``.
        dump_stats: also write each action's raw profile as ``{stage}-{filename}-{action}.prof`` in ``dirpath``
            (readable with ``pstats`` or snakeviz).

    Only one action is profiled at a time: starting an action pauses the one that was running (nested hooks
    count towards the innermost action).
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None,
                 line_count_restriction: float = 1.0, dump_stats: bool = False) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.profiled_actions: dict[str, Any] = {}
        self.line_count_restriction = line_count_restriction
        self.dump_stats = dump_stats

    def start(self, action_name: str) -> None:
        import cProfile

        for prof in self.profiled_actions.values():
            prof.disable()  # cProfile allows one active profiler per thread
        prof = self.profiled_actions.get(action_name)
        if prof is None:
            prof = self.profiled_actions[action_name] = cProfile.Profile()
        prof.enable()

    def stop(self, action_name: str) -> None:
        prof = self.profiled_actions.get(action_name)
        if prof is None:
            raise ValueError(f"Attempting to stop recording an action ({action_name}) which was never started.")
        prof.disable()

    def summary(self) -> str:
        import pstats

        stats: dict[str, str] = {}
        for action, prof in self.profiled_actions.items():
            if self.dump_stats:
                self._dump(action, prof)
            text = io.StringIO()
            pstats.Stats(prof, stream=text).strip_dirs().sort_stats("cumulative").print_stats(
                self.line_count_restriction)
            stats[action] = text.getvalue()
        return self._stats_to_str(stats)

    def _dump(self, action: str, prof: Any) -> None:
        import marshal

        from raylit import fs

        if not self.dirpath:
            raise ValueError("`AdvancedProfiler(dump_stats=True)` needs a `dirpath` (or a Trainer's log_dir)")
        prof.create_stats()
        path = fs.join(os.fspath(self.dirpath), self._prepare_filename(action_name=action, extension=".prof"))
        fs.write_bytes_atomic(marshal.dumps(prof.stats), path)  # the format of cProfile.Profile.dump_stats

    def teardown(self, stage: str | None) -> None:
        super().teardown(stage=stage)
        self.profiled_actions.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["profiled_actions"] = {}  # cProfile.Profile objects cannot be pickled
        return state
