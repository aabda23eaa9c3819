"""``PassThroughProfiler``: the Trainer's profiler when none is asked for. It records nothing, and the hook
dispatcher recognises it and skips profiling altogether (no per-hook cost)."""

from raylit.profilers.profiler import Profiler


class PassThroughProfiler(Profiler):
    """Records nothing. ``Trainer.profiler`` is one of these unless ``Trainer(profiler=...)`` is given."""

    def start(self, action_name: str) -> None:
        pass

    def stop(self, action_name: str) -> None:
        pass
