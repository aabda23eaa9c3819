"""TensorBoard logger written with ``tensorboardX`` (imported only when the writer is first needed).

Layout: ``save_dir/name/version_N[/sub_dir]/events.out.tfevents.*`` plus ``hparams.yaml`` in the same folder.
Mirror of ``lightning.pytorch.loggers.tensorboard``.
"""

from __future__ import annotations

import importlib.util
import os
from argparse import Namespace
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from raylit.loggers._utils import (
    _add_prefix,
    _convert_params,
    _flatten_dict,
    _is_tensor,
    _sanitize_params,
    _to_python,
)
from raylit.loggers.base import _VersionedLogger, rank_zero_experiment
from raylit.utilities.rank_zero import rank_zero_only, rank_zero_warn

if TYPE_CHECKING:
    from tensorboardX import SummaryWriter

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger(_VersionedLogger):
    """Log to TensorBoard event files (via ``tensorboardX.SummaryWriter``).

    Args:
        save_dir: root folder of all experiments.
        name: experiment name (a folder level), ``"lightning_logs"`` by default; ``""``/``None`` drops it.
        version: an int (``version_<N>``), a string used verbatim, or ``None`` for the next free number.
        log_graph: write the model graph when the Trainer calls ``log_graph`` (needs ``example_input_array`` and
            the ``tensorboard`` package, which tensorboardX uses for tracing; without it: a warning, no graph).
        default_hp_metric: when ``log_hyperparams`` gets no metrics, log ``hp_metric = -1`` so the TensorBoard
            HParams tab shows the run.
        prefix: put in front of every metric key, joined with ``"-"``.
        sub_dir: extra folder under the version folder for the event files (and ``hparams.yaml``).
        **kwargs: passed to ``tensorboardX.SummaryWriter`` (``max_queue``, ``flush_secs``, ``filename_suffix``...).
    """

    NAME_HPARAMS_FILE = "hparams.yaml"
    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: str | os.PathLike,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        log_graph: bool = False,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        if log_graph and importlib.util.find_spec("tensorboard") is None:
            # tensorboardX traces graphs with torch.utils.tensorboard, which needs the `tensorboard` package
            rank_zero_warn(
                "You set `TensorBoardLogger(log_graph=True)` but `tensorboard` is not available:"
                " the model graph will not be logged. `pip install tensorboard` to enable it."
            )
            log_graph = False
        self._log_graph = log_graph
        self._default_hp_metric = default_hp_metric
        self._prefix = prefix
        self._sub_dir = None if sub_dir is None else os.fspath(sub_dir)
        self._kwargs = kwargs
        self._experiment: SummaryWriter | None = None
        self.hparams: dict[str, Any] = {}

    # ------------------------------------------------------------------ where things go

    @property
    def sub_dir(self) -> str | None:
        return self._sub_dir

    @property
    def log_dir(self) -> str:
        """``save_dir/name/version_N[/sub_dir]``, with ``~`` and ``$VARS`` expanded."""
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        path = os.path.join(self.root_dir, version)
        if isinstance(self.sub_dir, str):
            path = os.path.join(path, self.sub_dir)
        return os.path.expanduser(os.path.expandvars(path))

    @property
    @rank_zero_experiment
    def experiment(self) -> SummaryWriter:
        """The ``tensorboardX.SummaryWriter`` (created, with ``log_dir``, on first access; no-op on other ranks)."""
        if self._experiment is None:
            from tensorboardX import SummaryWriter

            if self.root_dir:
                os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = SummaryWriter(log_dir=self.log_dir, **self._kwargs)
        return self._experiment

    def purge_from_step(self, step: int) -> None:
        """Hide the events at or after ``step`` that ``log_dir`` already holds (tensorboardX's ``purge_step``):
        for a run that continues an interrupted one in the same folder. Takes effect when the writer opens; does
        nothing once it is open."""
        if self._experiment is None:
            self._kwargs["purge_step"] = step

    # ------------------------------------------------------------------ logging
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        for key, value in metrics.items():
            value = _to_python(value)
            if isinstance(value, Mapping):
                self.experiment.add_scalars(key, {k: _to_python(v) for k, v in value.items()}, step)
                continue
            try:
                self.experiment.add_scalar(key, value, step)
            except Exception as err:
                raise ValueError(
                    f"\n you tried to log {value} which is currently not supported. Try a dict or a scalar/tensor."
                ) from err

    @rank_zero_only
    def log_hyperparams(  # type: ignore[override]
        self,
        params: Mapping[str, Any] | Namespace | None,
        metrics: Mapping[str, Any] | float | None = None,
        step: int | None = None,
    ) -> None:
        """Remember ``params`` for ``hparams.yaml`` and write them to the TensorBoard HParams plugin.

        The plugin only shows a run that has a metric: without ``metrics``, ``hp_metric = -1`` is logged when
        ``default_hp_metric=True`` (otherwise nothing is written to the event file). A bare number is taken as
        ``{"hp_metric": number}``.
        """
        params = _convert_params(params)
        if type(params).__module__.startswith("omegaconf"):
            from omegaconf import OmegaConf

            params = OmegaConf.to_container(params, resolve=True)  # type: ignore[assignment]
        self.hparams.update(params)

        if metrics is None:
            metrics = {"hp_metric": -1} if self._default_hp_metric else None
        elif not isinstance(metrics, Mapping):
            metrics = {"hp_metric": metrics}
        if not metrics:
            return

        self.log_metrics(metrics, step)
        from tensorboardX.summary import hparams as hparams_summary

        flat = _sanitize_params(_flatten_dict(params))
        numeric_metrics = {key: _to_python(value) for key, value in metrics.items()}
        experiment, start_info, end_info = hparams_summary(flat, numeric_metrics)
        file_writer = self.experiment._get_file_writer()
        for summary in (experiment, start_info, end_info):
            file_writer.add_summary(summary, step)

    @rank_zero_only
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Trace ``model`` with ``input_array`` (default: ``model.example_input_array``) into the event file.

        Only when the logger was made with ``log_graph=True``. Best effort: anything that cannot be traced
        gives a warning instead of an error.
        """
        if not self._log_graph:
            return
        if input_array is None:
            input_array = getattr(model, "example_input_array", None)
        if input_array is None:
            rank_zero_warn(
                "Could not log computational graph to TensorBoard: The `model.example_input_array` attribute"
                " is not set or `input_array` was not given."
            )
            return
        if not (_is_tensor(input_array) or isinstance(input_array, tuple)):
            rank_zero_warn(
                "Could not log computational graph to TensorBoard: The `input_array` or `model.example_input_array`"
                f" has type {type(input_array)} which can't be traced by TensorBoard. Make the input array a tuple"
                " representing the positional arguments to the model's `forward()` implementation."
            )
            return
        try:
            input_array = _move_to_model_device(model, input_array)
            self.experiment.add_graph(model, input_array)
        except Exception as err:  # noqa: BLE001 - tracing user models fails in many ways; never kill the run
            rank_zero_warn(f"Could not log computational graph to TensorBoard: {type(err).__name__}: {err}")

    @rank_zero_only
    def save(self) -> None:
        """Flush the event file; write ``hparams.yaml`` into ``log_dir`` if it is not there yet."""
        from raylit.saving import save_hparams_to_yaml

        self.experiment.flush()
        hparams_file = os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)
        if os.path.isdir(self.log_dir) and not os.path.isfile(hparams_file):
            save_hparams_to_yaml(hparams_file, self.hparams)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if status == "success":
            self.save()
        if self._experiment is not None:
            self._experiment.flush()
            self._experiment.close()

    def __getstate__(self) -> dict[str, Any]:
        # the SummaryWriter holds threads and open files: a copy (e.g. sent to a Ray worker) makes its own
        state = self.__dict__.copy()
        state["_experiment"] = None
        return state


def _move_to_model_device(model: Any, batch: Any) -> Any:
    device = getattr(model, "device", None)
    if device is None:
        try:
            device = next(model.parameters()).device
        except (AttributeError, StopIteration, TypeError):
            return batch
    if _is_tensor(batch):
        return batch.to(device)
    if isinstance(batch, tuple):
        return tuple(_move_to_model_device(model, item) if _is_tensor(item) else item for item in batch)
    return batch
