"""CSV logger: ``save_dir/name/version_N/metrics.csv`` plus ``hparams.yaml`` (same layout as Lightning's).

Mirror of ``lightning.pytorch.loggers.csv_logs``.
"""

from __future__ import annotations

import csv
import os
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from raylit.loggers._utils import _add_prefix, _convert_params, _to_python
from raylit.loggers.base import _VersionedLogger, rank_zero_experiment
from raylit.utilities.rank_zero import rank_zero_only, rank_zero_warn

__all__ = ["CSVLogger", "ExperimentWriter"]


class ExperimentWriter:
    """The object behind ``CSVLogger.experiment``: buffers metric rows and writes ``metrics.csv``/``hparams.yaml``.

    Creating it creates ``log_dir``. If ``log_dir`` already holds files, a warning is given and an old
    ``metrics.csv`` there is deleted.
    """

    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self.hparams: dict[str, Any] = {}
        self.metrics: list[dict[str, Any]] = []  # rows logged since the last save()
        self.metrics_keys: list[str] = []  # the header of metrics.csv as written so far (sorted)
        if os.path.isdir(log_dir) and os.listdir(log_dir):
            rank_zero_warn(
                f"Experiment logs directory {log_dir} exists and is not empty."
                " Previous log files in this directory will be deleted when the new ones are saved!"
            )
            if os.path.isfile(self.metrics_file_path):
                os.remove(self.metrics_file_path)
        os.makedirs(log_dir, exist_ok=True)

    def log_hparams(self, params: Mapping[str, Any]) -> None:
        """Merge ``params`` into the recorded hyperparameters and rewrite ``hparams.yaml``."""
        from raylit.saving import save_hparams_to_yaml

        self.hparams.update(params)
        save_hparams_to_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)

    def log_metrics(self, metrics_dict: Mapping[str, Any], step: int | None = None) -> None:
        """Buffer one row; ``step`` defaults to the number of rows buffered since the last save."""
        if step is None:
            step = len(self.metrics)
        row = {key: _to_python(value) for key, value in metrics_dict.items()}
        row["step"] = step
        self.metrics.append(row)

    def save(self) -> None:
        """Append the buffered rows to ``metrics.csv`` (rewriting it with a wider header if new keys appeared)."""
        if not self.metrics:
            return
        new_keys = {key for row in self.metrics for key in row} - set(self.metrics_keys)
        file_exists = os.path.isfile(self.metrics_file_path)
        if new_keys:
            self.metrics_keys = sorted(set(self.metrics_keys) | new_keys)
        if new_keys and file_exists:
            with open(self.metrics_file_path, newline="") as fp:
                old_rows = list(csv.DictReader(fp))
            tmp_path = self.metrics_file_path + ".tmp"
            with open(tmp_path, "w", newline="") as fp:
                writer = csv.DictWriter(fp, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(old_rows)
                writer.writerows(self.metrics)
            os.replace(tmp_path, self.metrics_file_path)
        else:
            with open(self.metrics_file_path, "a" if file_exists else "w", newline="") as fp:
                writer = csv.DictWriter(fp, fieldnames=self.metrics_keys)
                if not file_exists:
                    writer.writeheader()
                writer.writerows(self.metrics)
        self.metrics = []


class CSVLogger(_VersionedLogger):
    """Log metrics to ``metrics.csv`` and hyperparameters to ``hparams.yaml`` on the local filesystem.

    Files go to ``os.path.join(save_dir, name, version)`` where ``version`` is ``version_<N>`` for an int (the
    next free N when ``version=None``) or the string itself. ``name=""``/``None`` drops that level.

    Args:
        save_dir: root folder of all experiments.
        name: experiment name (a folder level), ``"lightning_logs"`` by default.
        version: an int, a string used verbatim as the folder name, or ``None`` for the next free number.
        prefix: put in front of every metric key, joined with ``"-"``.
        flush_logs_every_n_steps: also write ``metrics.csv`` whenever ``(step + 1)`` is a multiple of this.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: str | os.PathLike,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        super().__init__()
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self._prefix = prefix
        self._flush_logs_every_n_steps = flush_logs_every_n_steps
        self._experiment: ExperimentWriter | None = None

    # ------------------------------------------------------------------ where things go

    @property
    def log_dir(self) -> str:
        """``save_dir/name/version_N`` (or ``.../<version>`` for a string version)."""
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        return os.path.join(self.root_dir, version)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The :class:`ExperimentWriter` (created, with ``log_dir``, on first access; a no-op on other ranks)."""
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ExperimentWriter(log_dir=self.log_dir)
        return self._experiment

    # ------------------------------------------------------------------ logging
    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace | None = None) -> None:  # type: ignore[override]
        self.experiment.log_hparams(_convert_params(params))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        if step is None:
            step = len(self.experiment.metrics)
        self.experiment.log_metrics(metrics, step)
        if (step + 1) % self._flush_logs_every_n_steps == 0:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        self.experiment.save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is None:
            return  # nothing was ever logged from this process
        self.save()
