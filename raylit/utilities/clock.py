"""``SharedDeadline``: "has this much time passed?" with the same answer on every rank.

Decisions that start collectives (a checkpoint save, a validation run) must be taken by every rank alike, or
the ranks that go ahead wait forever for the others. A time-based cadence is therefore decided by global rank
0's clock. In a single process the clock is read at every check (it costs nothing); in a distributed run asking
rank 0 costs a broadcast (~1 ms on gloo), so rank 0 also says at which count to ask next: about once a second
of training, sooner when the deadline is closer.
"""

from __future__ import annotations

import time
from typing import Any


class SharedDeadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.restart()

    def restart(self) -> None:
        """Count ``seconds`` from now."""
        self._start = time.monotonic()
        self._next_check = 0
        self._checked: tuple[int, float] | None = None  # (count, time) of the last check

    def due(self, count: int, strategy: Any) -> bool:
        """True once ``seconds`` have passed since ``restart``, on rank 0's clock. ``count`` grows by one per
        call site visit (an optimizer step, a batch) and paces the questions to rank 0; ``strategy`` is
        ``trainer.strategy`` (``world_size`` and ``broadcast``). Every rank must call this at the same counts."""
        if strategy.world_size == 1:
            return time.monotonic() - self._start >= self.seconds
        if count < self._next_check:
            return False
        now = time.monotonic()
        left = self.seconds - (now - self._start)
        ahead = 1
        if self._checked is not None:  # counts per second since the last check -> counts in ~1 s
            rate = (count - self._checked[0]) / max(now - self._checked[1], 1e-9)
            ahead = max(1, int(rate * min(1.0, max(left, 0.0))))
        self._checked = (count, now)
        due, self._next_check = strategy.broadcast((left <= 0, count + ahead))
        return due
