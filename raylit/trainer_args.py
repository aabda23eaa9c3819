"""The Trainer's default loggers and callbacks, built from its arguments (the settings themselves are checked in
raylit/config.py). Each function raises a clear error naming the argument, the value and what is accepted."""

from collections.abc import Iterable
from typing import Any

from raylit.callbacks.base import Callback
from raylit.callbacks.checkpoint import Checkpoint
from raylit.loggers.base import DummyLogger, Logger
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.rank_zero import rank_zero_info


def build_loggers(logger: Any, default_root_dir: str, fast_dev_run: int | bool) -> list[Logger]:
    if logger is None or logger is True:
        from raylit import loggers as lg

        tb = getattr(lg, "TensorBoardLogger", None)
        csv = getattr(lg, "CSVLogger", None)
        cls = tb or csv
        loggers = [cls(save_dir=default_root_dir)] if cls is not None else []
    elif logger is False:
        loggers = []
    elif isinstance(logger, Iterable) and not isinstance(logger, (str, Logger)):
        loggers = list(logger)
    else:
        loggers = [logger]
    for lg_ in loggers:
        if not isinstance(lg_, Logger) and not hasattr(lg_, "log_metrics"):
            raise MisconfigurationException(
                f"`Trainer(logger=...)` got {lg_!r}: expected True/False, a raylit Logger or a list of them")
    if fast_dev_run and loggers:
        loggers = [DummyLogger()]
    return loggers

def build_callbacks(callbacks: Any, enable_checkpointing: bool | None, enable_progress_bar: bool | None,
                     enable_model_summary: bool | None, max_time: Any) -> list[Callback]:
    from raylit import callbacks as cbs

    if callbacks is None:
        user: list[Callback] = []
    elif isinstance(callbacks, Callback):
        user = [callbacks]
    else:
        user = list(callbacks)
    for cb in user:
        if not isinstance(cb, Callback):
            raise TypeError(f"`Trainer(callbacks=...)` got {cb!r}: every callback must subclass "
                            "raylit.Callback (from raylit.callbacks import Callback)")
    out = list(user)
    progress_cls = getattr(cbs, "ProgressBar", None)
    bars = [cb for cb in out if progress_cls is not None and isinstance(cb, progress_cls)]
    if len(bars) > 1:
        raise MisconfigurationException("You added multiple progress bar callbacks to the Trainer, but currently "
                                        "only one progress bar is supported.")
    if bars and enable_progress_bar is False:
        raise MisconfigurationException("Trainer was configured with `enable_progress_bar=False` but found "
                                        f"`{type(bars[0]).__name__}` in callbacks list.")
    if enable_progress_bar is not False and not bars and progress_cls is not None:
        try:
            import rich  # noqa: F401

            bar_cls = getattr(cbs, "RichProgressBar", None)
        except ImportError:
            bar_cls = None
        bar_cls = bar_cls or getattr(cbs, "TQDMProgressBar", None)
        if bar_cls is not None:
            out.append(bar_cls())
    summary_cls = getattr(cbs, "ModelSummary", None)
    if enable_model_summary is not False and summary_cls is not None and \
            not any(isinstance(cb, summary_cls) for cb in out):
        rich_summary = getattr(cbs, "RichModelSummary", None)
        try:
            import rich  # noqa: F401
        except ImportError:
            rich_summary = None
        out.append((rich_summary or summary_cls)())
    if max_time is not None:
        if any(isinstance(cb, cbs.Timer) for cb in out):  # as in Lightning: the user's own Timer wins
            rank_zero_info("Ignoring `Trainer(max_time=...)`, callbacks list already contains a Timer.")
        else:
            out.append(cbs.Timer(duration=max_time, interval="step"))
    has_ckpt = any(isinstance(cb, Checkpoint) for cb in out)
    if enable_checkpointing is False and has_ckpt:
        raise MisconfigurationException("Trainer was configured with `enable_checkpointing=False` but found "
                                        "`ModelCheckpoint` in callbacks list.")
    mc = getattr(cbs, "ModelCheckpoint", None)
    if enable_checkpointing is not False and not has_ckpt and mc is not None:
        out.append(mc())
    out = reorder_callbacks(out)
    check_state_keys(out)
    return out

def reorder_callbacks(callbacks: list[Callback]) -> list[Callback]:
    # checkpoint callbacks go last so they see the state every other callback produced
    return [cb for cb in callbacks if not isinstance(cb, Checkpoint)] + \
        [cb for cb in callbacks if isinstance(cb, Checkpoint)]

def check_state_keys(callbacks: list[Callback]) -> None:
    seen: set[str] = set()
    for cb in callbacks:
        if type(cb).state_dict is Callback.state_dict:
            continue
        key = cb.state_key
        if key in seen:
            raise RuntimeError(f"Found more than one stateful callback of type `{type(cb).__name__}` with the "
                               f"same state key {key!r}. Give each its own `state_key`.")
        seen.add(key)
