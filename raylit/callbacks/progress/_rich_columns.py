"""The rich columns RichProgressBar draws with. Kept apart so that ``import raylit`` does not import rich
(about a tenth of a second); RichProgressBar imports this module when it first draws."""

from datetime import timedelta
from typing import Any

from rich.progress import ProgressColumn, Task
from rich.text import Text


class BatchesColumn(ProgressColumn):
    def __init__(self, style: Any) -> None:
        self.style = style
        super().__init__()

    def render(self, task: "Task") -> "Text":
        total = "--" if task.total is None else int(task.total)
        return Text(f"{int(task.completed)}/{total}", style=self.style)


class TimeColumn(ProgressColumn):
    max_refresh = 0.5

    def __init__(self, style: Any) -> None:
        self.style = style
        super().__init__()

    def render(self, task: "Task") -> "Text":
        elapsed = task.finished_time if task.finished else task.elapsed
        remaining = task.time_remaining if task.total is not None else None

        def fmt(seconds: float | None) -> str:
            return "-:--:--" if seconds is None else str(timedelta(seconds=int(seconds)))

        return Text(f"{fmt(elapsed)} • {fmt(remaining)}", style=self.style)


class SpeedColumn(ProgressColumn):
    def __init__(self, style: Any) -> None:
        self.style = style
        super().__init__()

    def render(self, task: "Task") -> "Text":
        return Text(f"{task.speed or 0:>.2f}it/s", style=self.style)


class MetricsColumn(ProgressColumn):
    """The progress-bar metrics, drawn on the training bar only."""

    def __init__(self, bar: Any, theme: Any) -> None:
        self._bar = bar
        self._theme = theme
        self.metrics: dict[str, Any] = {}
        super().__init__()

    def render(self, task: "Task") -> "Text":
        if task.id != self._bar.train_progress_bar_id:
            return Text()
        parts = []
        for name, value in self.metrics.items():
            if isinstance(value, float):  # ints (v_num, counters) print as they are, as in Lightning
                try:
                    value = f"{value:{self._theme.metrics_format}}"
                except (TypeError, ValueError):
                    value = str(value)
            parts.append(f"{name}: {value}")
        return Text(self._theme.metrics_text_delimiter.join(parts), justify="left", style=self._theme.metrics)
