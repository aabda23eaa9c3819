"""TQDMProgressBar: the tqdm bars (sanity check, train, validation, test, predict)."""

import importlib.util
import math
import os
import sys
import time
from typing import Any

from raylit.callbacks.progress.progress_bar import ProgressBar

if importlib.util.find_spec("ipywidgets") is not None:  # tqdm.auto needs ipywidgets inside notebooks
    from tqdm.auto import tqdm as _tqdm
else:
    from tqdm import tqdm as _tqdm

_PAD_SIZE = 5
_NON_TTY_MIN_INTERVAL = 1.0  # seconds between redraws when the output is a file or pipe


class Tqdm(_tqdm):
    """tqdm whose float postfix values are zero-padded to a fixed width, so the bar does not flicker."""

    @staticmethod
    def format_num(n: float | str) -> str:
        text = n if isinstance(n, str) else _tqdm.format_num(n)
        if not isinstance(n, (float, str)) or "e" in text:
            return text
        if "." not in text and len(text) < _PAD_SIZE:
            try:
                float(text)
            except ValueError:
                return text
            text += "."
        return text + "0" * (_PAD_SIZE - len(text))


class TQDMProgressBar(ProgressBar):
    r"""Progress bars drawn with tqdm on stdout: a sanity-check bar, the train bar (it stays while validation
    runs below it), a validation bar, and test/predict bars. The train bar's postfix shows :meth:`get_metrics`.

    Args:
        refresh_rate: redraw every this many batches (and at the last one); 0 disables the bar.
        process_position: offset the bars by this many lines (for several bars on one terminal).
        leave: keep each finished epoch's bar on screen.

    When stdout is not a terminal, bars also redraw at most once a second, so logs do not fill up with lines.
    """

    BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        super().__init__()
        self._refresh_rate = self._resolve_refresh_rate(refresh_rate)
        self._process_position = process_position
        self._enabled = True
        self._leave = leave
        self._train_progress_bar: _tqdm | None = None
        self._val_progress_bar: _tqdm | None = None
        self._test_progress_bar: _tqdm | None = None
        self._predict_progress_bar: _tqdm | None = None

    def __getstate__(self) -> dict:
        # Bars hold file handles and locks: drop them when the callback is pickled (e.g. sent to Ray workers).
        return {k: None if isinstance(v, _tqdm) else v for k, v in vars(self).items()}

    def _bar(self, name: str) -> _tqdm:
        bar = getattr(self, f"_{name}_progress_bar")
        if bar is None:
            raise TypeError(f"The `{self.__class__.__name__}._{name}_progress_bar` reference has not been set yet.")
        return bar

    train_progress_bar = property(
        lambda self: self._bar("train"), lambda self, b: setattr(self, "_train_progress_bar", b)
    )
    val_progress_bar = property(lambda self: self._bar("val"), lambda self, b: setattr(self, "_val_progress_bar", b))
    test_progress_bar = property(lambda self: self._bar("test"), lambda self, b: setattr(self, "_test_progress_bar", b))
    predict_progress_bar = property(
        lambda self: self._bar("predict"), lambda self, b: setattr(self, "_predict_progress_bar", b)
    )

    @property
    def refresh_rate(self) -> int:
        return self._refresh_rate

    @property
    def process_position(self) -> int:
        return self._process_position

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

    # --- bar factories (override to customise) -------------------------------------------------------------
    def _new_bar(self, desc: str, position: int, leave: bool, **kwargs: Any) -> Tqdm:
        return Tqdm(
            desc=desc,
            position=position,
            disable=self.is_disabled,
            leave=leave,
            dynamic_ncols=True,
            file=sys.stdout,
            bar_format=self.BAR_FORMAT,
            **kwargs,
        )

    def init_sanity_tqdm(self) -> Tqdm:
        return self._new_bar(self.sanity_check_description, 2 * self.process_position, leave=False)

    def init_train_tqdm(self) -> Tqdm:
        return self._new_bar(self.train_description, 2 * self.process_position, leave=True, smoothing=0)

    def init_predict_tqdm(self) -> Tqdm:
        return self._new_bar(self.predict_description, 2 * self.process_position, leave=True, smoothing=0)

    def init_validation_tqdm(self) -> Tqdm:
        has_main_bar = self.trainer.state.fn != "validate"  # during fit the train bar sits above
        return self._new_bar(
            self.validation_description, 2 * self.process_position + has_main_bar, leave=not has_main_bar
        )

    def init_test_tqdm(self) -> Tqdm:
        return self._new_bar("Testing", 2 * self.process_position, leave=True)

    # --- hooks ---------------------------------------------------------------------------------------------
    def on_sanity_check_start(self, *_: Any) -> None:
        self.val_progress_bar = self.init_sanity_tqdm()
        self.train_progress_bar = Tqdm(disable=True)  # placeholder so print() has a bar to write through

    def on_sanity_check_end(self, *_: Any) -> None:
        self.val_progress_bar.close()
        self.train_progress_bar.close()

    def on_train_start(self, *_: Any) -> None:
        self.train_progress_bar = self.init_train_tqdm()

    def on_train_epoch_start(self, trainer, *_: Any) -> None:
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self._reset(self.train_progress_bar, self.total_train_batches, f"Epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self._train_progress_bar
        if bar is not None and self._update_n(bar, batch_idx + 1):
            if self._metrics_due(last=bar.n == bar.total):
                bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
        if self._leave:
            self.train_progress_bar.close()

    def on_train_end(self, *_: Any) -> None:
        self.train_progress_bar.close()

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.val_progress_bar = self.init_validation_tqdm()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.has_dataloader_changed(dataloader_idx):
            desc = self.sanity_check_description if trainer.sanity_checking else self.validation_description
            total = self.total_val_batches_current_dataloader
            self._reset(self.val_progress_bar, total, f"{desc} DataLoader {dataloader_idx}")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._val_progress_bar is not None and self._update_n(self._val_progress_bar, batch_idx + 1):
            self._val_progress_bar.refresh()

    def on_validation_end(self, trainer, pl_module) -> None:
        self.val_progress_bar.close()
        self.reset_dataloader_idx_tracker()
        if self._train_progress_bar is not None and trainer.state.fn == "fit":
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_test_start(self, trainer, pl_module) -> None:
        self.test_progress_bar = self.init_test_tqdm()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.has_dataloader_changed(dataloader_idx):
            total = self.total_test_batches_current_dataloader
            self._reset(self.test_progress_bar, total, f"{self.test_description} DataLoader {dataloader_idx}")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._test_progress_bar is not None and self._update_n(self._test_progress_bar, batch_idx + 1):
            self._test_progress_bar.refresh()

    def on_test_end(self, trainer, pl_module) -> None:
        self.test_progress_bar.close()
        self.reset_dataloader_idx_tracker()

    def on_predict_start(self, trainer, pl_module) -> None:
        self.predict_progress_bar = self.init_predict_tqdm()

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.has_dataloader_changed(dataloader_idx):
            total = self.total_predict_batches_current_dataloader
            self._reset(self.predict_progress_bar, total, f"{self.predict_description} DataLoader {dataloader_idx}")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._predict_progress_bar is not None and self._update_n(self._predict_progress_bar, batch_idx + 1):
            self._predict_progress_bar.refresh()

    def on_predict_end(self, trainer, pl_module) -> None:
        self.predict_progress_bar.close()
        self.reset_dataloader_idx_tracker()

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        for bar in (
            self._train_progress_bar,
            self._val_progress_bar,
            self._test_progress_bar,
            self._predict_progress_bar,
        ):
            if bar is not None and not bar.disable:
                bar.write(sep.join(map(str, args)), **kwargs)
                return

    # --- helpers -------------------------------------------------------------------------------------------
    @staticmethod
    def _reset(bar: _tqdm, total: float | None, description: str) -> None:
        bar.reset()
        bar.total = convert_inf(total)  # reset(total=None) would keep the old total
        bar.initial = 0
        bar.set_description(description, refresh=False)

    def _should_update(self, current: int, total: float | None) -> bool:
        return self.is_enabled and (current % self.refresh_rate == 0 or current == total)

    def _update_n(self, bar: _tqdm, n: int) -> bool:
        """Move ``bar`` to ``n``; True when the caller should redraw it now."""
        if bar.disable or not self._should_update(n, bar.total):
            return False
        bar.n = n
        if n != bar.total and not _isatty(bar.fp):
            now = time.monotonic()
            if now - getattr(bar, "_raylit_last_draw", -math.inf) < _NON_TTY_MIN_INTERVAL:
                return False
            bar._raylit_last_draw = now
        return True

    @staticmethod
    def _resolve_refresh_rate(refresh_rate: int) -> int:
        if os.getenv("COLAB_GPU") and refresh_rate == 1:
            return 20  # Colab's output chokes on very frequent updates
        if "TQDM_MINITERS" in os.environ:
            return max(int(os.environ["TQDM_MINITERS"]), refresh_rate)
        return refresh_rate


def convert_inf(x: float | None) -> int | float | None:
    """tqdm wants None, not inf or nan, for an unknown total."""
    if x is None or math.isinf(x) or math.isnan(x):
        return None
    return x


def _isatty(stream: Any) -> bool:
    stream = getattr(stream, "file", stream)  # tqdm wraps the file it writes to
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
