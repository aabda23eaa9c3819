"""``SimpleProfiler``: wall-clock time of every action; the report lists mean, calls, total and share."""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from pathlib import Path

from raylit.profilers.profiler import Profiler


class SimpleProfiler(Profiler):
    """Records how long each action takes (``time.perf_counter``).

    Args:
        dirpath: directory of the report file; defaults to the Trainer's ``log_dir`` when ``filename`` is set.
        filename: write the report to ``{stage}-{filename}.txt`` instead of logging it.
        extended: add the columns "Num calls" and "Percentage %" (of the wall time since the profiler was
            created), and a "Total" row; rows are then sorted by share, else by mean duration.

    ``recorded_durations`` maps each action to the list of its durations in seconds. Starting an action that is
    running, or stopping one that is not, raises ``ValueError``.
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None,
                 extended: bool = True) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.current_actions: dict[str, float] = {}
        self.recorded_durations: dict[str, list[float]] = defaultdict(list)
        self.extended = extended
        self.start_time = time.perf_counter()

    def start(self, action_name: str) -> None:
        if action_name in self.current_actions:
            raise ValueError(f"Attempted to start {action_name} which has already started.")
        self.current_actions[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        now = time.perf_counter()
        started = self.current_actions.pop(action_name, None)
        if started is None:
            raise ValueError(f"Attempting to stop recording an action ({action_name}) which was never started.")
        self.recorded_durations[action_name].append(now - started)

    def summary(self) -> str:
        nl = os.linesep
        title = (f"{self._stage.upper()} " if self._stage else "") + f"Profiler Report{nl}"
        if not self.recorded_durations:
            return title + nl
        width = max(len(a) for a in self.recorded_durations)
        if self.extended:
            columns = ("Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %")
            wall = time.perf_counter() - self.start_time
            stats = [(a, math.fsum(d) / len(d), len(d), math.fsum(d), 100.0 * math.fsum(d) / wall)
                     for a, d in self.recorded_durations.items()]
            stats.sort(key=lambda row: row[4], reverse=True)
            rows = [("Total", "-", str(sum(r[2] for r in stats)), f"{wall:.5}", "100 %"), None]
            rows += [(a, f"{mean:.5}", str(n), f"{total:.5}", f"{share:.5}") for a, mean, n, total, share in stats]
        else:
            columns = ("Action", "Mean duration (s)", "Total time (s)")
            stats = [(a, math.fsum(d) / len(d), math.fsum(d)) for a, d in self.recorded_durations.items()]
            stats.sort(key=lambda row: row[1], reverse=True)
            rows = [(a, f"{mean:.5}", f"{total:.5}") for a, mean, total in stats]

        def line(cells: tuple[str, ...]) -> str:
            first, *rest = cells
            return f"{nl}|  {first:<{width}s}\t|" + "".join(f"  {c:<15}\t|" for c in rest)

        header = line(columns)
        rule = nl + "-" * len(header.expandtabs())
        out = [title, rule, header, rule]
        for row in rows:
            out.append(rule if row is None else line(row))
        out += [rule, nl]
        return "".join(out)
