"""RichProgressBar: progress bars drawn with rich (the default bar when rich is installed)."""

import importlib.util
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from raylit.callbacks.progress.progress_bar import ProgressBar

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, Task, TaskID
    from rich.style import Style

# the bar's clock is bound at import, as rich binds its own: code that patches ``time.monotonic`` to drive a
# time-based cadence (val_check_interval as a duration) sees only the loop's readings, not the bar's redraws
_clock = time.monotonic


_RICH_AVAILABLE = importlib.util.find_spec("rich") is not None


@dataclass
class RichProgressBarTheme:
    """Styles of the bar's parts (rich style strings or ``rich.style.Style``)."""

    description: "str | Style" = ""
    progress_bar: "str | Style" = "#6206E0"
    progress_bar_finished: "str | Style" = "#6206E0"
    progress_bar_pulse: "str | Style" = "#6206E0"
    batch_progress: "str | Style" = ""
    time: "str | Style" = "dim"
    processing_speed: "str | Style" = "dim underline"
    metrics: "str | Style" = "italic"
    metrics_text_delimiter: str = " "
    metrics_format: str = ".3f"


_DEFAULT_THEME = RichProgressBarTheme()


class RichProgressBar(ProgressBar):
    """Progress bars drawn with `rich <https://github.com/Textualize/rich>`_: one per running loop, the
    training bar followed by its metrics (:meth:`get_metrics`).

    Args:
        refresh_rate: the most redraws per second; 0 disables the bar.
        leave: keep each finished epoch's bar on screen.
        theme: a :class:`RichProgressBarTheme`.
        console_kwargs: arguments for the ``rich.console.Console`` to draw on (default: rich's global console).

    Redraws happen in the training thread, at most ``refresh_rate`` times a second, and only between
    batches; metrics are read only when a redraw is due. When the console is not a terminal rich draws only
    the final state of each bar, so logs get one line per bar rather than one per batch.
    """

    def __init__(
        self,
        refresh_rate: int = 100,
        leave: bool = False,
        theme: RichProgressBarTheme = _DEFAULT_THEME,
        console_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not _RICH_AVAILABLE:
            raise ModuleNotFoundError("`RichProgressBar` requires `rich`. Install it by running `pip install -U rich`.")
        super().__init__()
        self._refresh_rate = refresh_rate
        self._leave = leave
        self._console_kwargs = console_kwargs or {}
        self._console: Console | None = None
        self._enabled = True
        self.progress: Progress | None = None
        self._progress_stopped = False
        self._metric_component: Any = None
        self._last_refresh = -math.inf
        self._totals: dict = {}
        self._console_redraws = True
        self.theme = theme
        self._reset_progress_bar_ids()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "progress": None, "_console": None, "_metric_component": None}

    def _reset_progress_bar_ids(self) -> None:
        self.train_progress_bar_id: TaskID | None = None
        self.val_sanity_progress_bar_id: TaskID | None = None
        self.val_progress_bar_id: TaskID | None = None
        self.test_progress_bar_id: TaskID | None = None
        self.predict_progress_bar_id: TaskID | None = None

    @property
    def refresh_rate(self) -> float:
        return self._refresh_rate

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.refresh_rate > 0

    @property
    def is_disabled(self) -> bool:
        return not self.is_enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _task(self, task_id: "TaskID | None") -> "Task":
        assert self.progress is not None and task_id is not None
        return next(task for task in self.progress.tasks if task.id == task_id)

    @property
    def train_progress_bar(self) -> "Task":
        return self._task(self.train_progress_bar_id)

    @property
    def val_sanity_check_bar(self) -> "Task":
        return self._task(self.val_sanity_progress_bar_id)

    @property
    def val_progress_bar(self) -> "Task":
        return self._task(self.val_progress_bar_id)

    @property
    def test_progress_bar(self) -> "Task":
        return self._task(self.test_progress_bar_id)

    def configure_columns(self, trainer) -> list:
        """The columns before the metrics; override to change the layout."""
        from rich.progress import BarColumn, TextColumn

        from raylit.callbacks.progress._rich_columns import BatchesColumn, SpeedColumn, TimeColumn

        return [
            TextColumn("[progress.description]{task.description}"),
            BarColumn(
                complete_style=self.theme.progress_bar,
                finished_style=self.theme.progress_bar_finished,
                pulse_style=self.theme.progress_bar_pulse,
            ),
            BatchesColumn(self.theme.batch_progress),
            TimeColumn(self.theme.time),
            SpeedColumn(self.theme.processing_speed),
        ]

    # --- life cycle ----------------------------------------------------------------------------------------
    def _init_progress(self, trainer) -> None:
        if not self.is_enabled or (self.progress is not None and not self._progress_stopped):
            return
        self._reset_progress_bar_ids()
        from rich import get_console
        from rich.console import Console
        from rich.progress import Progress

        from raylit.callbacks.progress._rich_columns import MetricsColumn

        self._totals: dict[Any, float] = {}
        self._console = Console(**self._console_kwargs) if self._console_kwargs else get_console()
        if getattr(self._console, "_live_stack", None):  # a bar left running by an earlier, crashed run
            self._console.clear_live()
        self._console_redraws = self._console.is_terminal or self._console.is_jupyter
        self._metric_component = MetricsColumn(self, self.theme)
        # No auto-refresh thread: a thread redrawing 100 times a second would compete with training for
        # the GIL. We redraw from the hooks instead (see _refresh).
        self.progress = Progress(
            *self.configure_columns(trainer),
            self._metric_component,
            auto_refresh=False,
            console=self._console,
            get_time=_clock,
        )
        self.progress.start()
        self._progress_stopped = False

    def _stop_progress(self) -> None:
        if self.progress is not None and not self._progress_stopped:
            self.progress.stop()
            self._progress_stopped = True

    def refresh(self, hard: bool = False) -> None:
        """Redraw if ``hard`` or if ``1 / refresh_rate`` seconds have passed since the last redraw."""
        if self.progress is None or self._progress_stopped:
            return
        now = _clock()
        if hard or now - self._last_refresh >= 1.0 / max(self.refresh_rate, 1e-9):
            self._last_refresh = now
            self.progress.refresh()

    def _advance(self, task_id: "TaskID | None", n: int) -> bool:
        """Record that ``n`` batches are done (cheap: rich only stores it, which also keeps its speed
        estimate right) and say whether a redraw is due: ``1 / refresh_rate`` seconds have passed, or it is
        the bar's last batch."""
        if self.is_disabled or self.progress is None or task_id is None:
            return False
        self.progress.update(task_id, completed=n, visible=True)
        if n == self._totals.get(task_id):
            return True
        # rich draws nothing mid-run on a non-terminal console (a log file, a pipe): no redraw is ever due.
        return self._console_redraws and _clock() - self._last_refresh >= 1.0 / self.refresh_rate

    def _add_task(self, total: float, description: str, visible: bool = True) -> "TaskID":
        assert self.progress is not None
        if self.theme.description:
            description = f"[{self.theme.description}]{description}"
        task_id = self.progress.add_task(description, total=_finite_or_none(total), visible=visible)
        self._totals[task_id] = total
        return task_id

    def _replace_task(self, old: "TaskID | None", total: float, description: str, visible: bool = True):
        """A new bar in place of ``old`` (removed, so that tasks do not pile up over many epochs)."""
        if self.progress is not None and old is not None:
            self.progress.remove_task(old)
            self._totals.pop(old, None)
        return self._add_task(total, description, visible)

    def _hide(self, task_id: "TaskID | None") -> None:
        if self.progress is not None and task_id is not None:
            self.progress.update(task_id, advance=0, visible=False)

    def _update_metrics(self, trainer, pl_module) -> None:
        if self.is_enabled and self._metric_component is not None:
            self._metric_component.metrics = self.get_metrics(trainer, pl_module)

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        return {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in items.items()}

    def _train_description(self, current_epoch: int) -> str:
        description = f"Epoch {current_epoch}"
        if self.trainer.max_epochs is not None:
            description += f"/{self.trainer.max_epochs - 1}"
        return f"{description:{len(self.validation_description)}}"

    # --- hooks ---------------------------------------------------------------------------------------------
    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._init_progress(trainer)

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        self._hide(self.val_sanity_progress_bar_id)
        self.refresh(hard=True)

    def on_train_start(self, trainer, pl_module) -> None:
        self._init_progress(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.is_disabled:
            return
        total, description = self.total_train_batches, self._train_description(trainer.current_epoch)
        if self.train_progress_bar_id is not None and self._leave:
            self._stop_progress()  # the finished epoch's bar stays on screen
            self._init_progress(trainer)
        if self.progress is None:
            return
        if self.train_progress_bar_id is None:
            self.train_progress_bar_id = self._add_task(total, description)
        else:
            self.progress.reset(
                self.train_progress_bar_id,
                total=_finite_or_none(total),
                description=description,
                visible=True,
            )
            self._totals[self.train_progress_bar_id] = total
        self.refresh(hard=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = batch_idx + 1
        if self.train_progress_bar_id is None and self.is_enabled and self.progress is not None:
            self.train_progress_bar_id = self._add_task(
                self.total_train_batches, self._train_description(trainer.current_epoch)
            )
        if self._advance(self.train_progress_bar_id, n):
            if self._metrics_due(last=n == self._totals.get(self.train_progress_bar_id)):
                self._update_metrics(trainer, pl_module)  # only now: reading the metrics may sync the device
            self.refresh(hard=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._update_metrics(trainer, pl_module)
        self.refresh(hard=True)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._init_progress(trainer)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.is_disabled or self.progress is None or not self.has_dataloader_changed(dataloader_idx):
            return
        total = self.total_val_batches_current_dataloader
        if trainer.sanity_checking:
            self.val_sanity_progress_bar_id = self._replace_task(
                self.val_sanity_progress_bar_id, total, self.sanity_check_description, visible=False
            )
        else:
            self.val_progress_bar_id = self._replace_task(
                self.val_progress_bar_id, total, self.validation_description, visible=False
            )
        self.refresh()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        task_id = self.val_sanity_progress_bar_id if trainer.sanity_checking else self.val_progress_bar_id
        if self._advance(task_id, batch_idx + 1):
            self.refresh(hard=True)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.is_enabled and trainer.state.fn == "fit":
            self._hide(self.val_progress_bar_id)
            self.refresh()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._update_metrics(trainer, pl_module)
        self.reset_dataloader_idx_tracker()

    def on_test_start(self, trainer, pl_module) -> None:
        self._init_progress(trainer)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.is_disabled or self.progress is None or not self.has_dataloader_changed(dataloader_idx):
            return
        self.test_progress_bar_id = self._replace_task(
            self.test_progress_bar_id, self.total_test_batches_current_dataloader, self.test_description
        )
        self.refresh()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._advance(self.test_progress_bar_id, batch_idx + 1):
            self.refresh(hard=True)

    def on_test_end(self, trainer, pl_module) -> None:
        self.reset_dataloader_idx_tracker()

    def on_predict_start(self, trainer, pl_module) -> None:
        self._init_progress(trainer)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.is_disabled or self.progress is None or not self.has_dataloader_changed(dataloader_idx):
            return
        self.predict_progress_bar_id = self._replace_task(
            self.predict_progress_bar_id,
            self.total_predict_batches_current_dataloader,
            self.predict_description,
        )
        self.refresh()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._advance(self.predict_progress_bar_id, batch_idx + 1):
            self.refresh(hard=True)

    def on_predict_end(self, trainer, pl_module) -> None:
        self.reset_dataloader_idx_tracker()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._stop_progress()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._stop_progress()

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._console is not None:
            self._console.print(*args, **kwargs)
        else:
            print(*args, **kwargs)


def _finite_or_none(total: float | None) -> float | None:
    """rich shows an indeterminate (pulsing) bar for total=None; endless loaders report inf."""
    return None if total is None or not math.isfinite(total) else total
