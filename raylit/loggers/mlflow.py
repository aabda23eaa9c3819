"""MLflow logger (optional: ``pip install mlflow`` or ``mlflow-skinny``). Mirror of
``lightning.pytorch.loggers.mlflow``. ``mlflow`` is imported when a logger is created, never by
``import raylit.loggers``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import tempfile
import time
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from raylit.loggers._utils import _add_prefix, _convert_params, _flatten_dict, _scan_checkpoints, _to_python
from raylit.loggers.base import Logger, rank_zero_experiment
from raylit.utilities.rank_zero import rank_zero_only, rank_zero_warn

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["MLFlowLogger"]

log = logging.getLogger(__name__)
LOCAL_FILE_URI_PREFIX = "file:"
_BAD_METRIC_CHARS = re.compile(r"[^a-zA-Z0-9_/. -]+")
_MAX_PARAM_LENGTH = 250  # what Lightning truncates parameter values to
_PARAMS_PER_BATCH = 100  # MLflow's limit for one log_batch call


def _require_mlflow() -> None:
    if importlib.util.find_spec("mlflow") is None:
        raise ModuleNotFoundError(
            "MLFlowLogger needs the `mlflow` package: `pip install mlflow` (or `pip install mlflow-skinny`)."
        )


class MLFlowLogger(Logger):
    """Log metrics, hyperparameters and (optionally) checkpoints to an MLflow tracking store.

    Args:
        experiment_name: MLflow experiment to log to (created if missing).
        run_name: name of the new run (stored as the ``mlflow.runName`` tag).
        tracking_uri: tracking server or store. Default: env ``MLFLOW_TRACKING_URI``, else ``file:<save_dir>``.
        tags: tags for the new run.
        save_dir: local folder for the file store when no ``tracking_uri`` is given.
        log_model: ``False`` (no checkpoints), ``True`` (the checkpoints at the end of training; every one if
            the ModelCheckpoint has ``save_top_k=-1``) or ``"all"`` (each checkpoint when it is saved).
        prefix: put in front of every metric key, joined with ``"-"``.
        artifact_location: where a newly created experiment stores its artifacts.
        run_id: continue this existing run instead of starting a new one.
        synchronous: passed to ``MlflowClient.log_batch`` (mlflow >= 2.8) when not ``None``.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        experiment_name: str = "lightning_logs",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        save_dir: str | None = "./mlruns",
        log_model: Literal[True, False, "all"] = False,
        prefix: str = "",
        artifact_location: str | None = None,
        run_id: str | None = None,
        synchronous: bool | None = None,
    ) -> None:
        _require_mlflow()
        super().__init__()
        if not tracking_uri:
            tracking_uri = os.getenv("MLFLOW_TRACKING_URI") or f"{LOCAL_FILE_URI_PREFIX}{save_dir}"
        self._experiment_name = experiment_name
        self._experiment_id: str | None = None
        self._tracking_uri = tracking_uri
        self._run_name = run_name
        self._run_id = run_id
        self.tags = tags
        self._log_model = log_model
        self._logged_model_time: dict[str, float] = {}
        self._checkpoint_callback: Any = None
        self._prefix = prefix
        self._artifact_location = artifact_location
        self._log_batch_kwargs = {} if synchronous is None else {"synchronous": synchronous}
        self._initialized = False
        self._client: MlflowClient | None = None

    # ------------------------------------------------------------------ the run
    def _get_client(self) -> MlflowClient:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self._tracking_uri)
        return self._client

    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        """The ``MlflowClient``; the first access finds/creates the experiment and starts (or attaches to) the run."""
        client = self._get_client()
        if self._initialized:
            return client
        import mlflow

        mlflow.set_tracking_uri(self._tracking_uri)  # so mlflow's fluent API in user code hits the same store
        if self._run_id is not None:
            self._experiment_id = client.get_run(self._run_id).info.experiment_id
            self._initialized = True
            return client

        if self._experiment_id is None:
            existing = client.get_experiment_by_name(self._experiment_name)
            if existing is not None and existing.lifecycle_stage != "deleted":
                self._experiment_id = existing.experiment_id
            else:
                log.warning(f"Experiment with name {self._experiment_name} not found. Creating it.")
                self._experiment_id = client.create_experiment(
                    name=self._experiment_name, artifact_location=self._artifact_location
                )

        if self._run_name is not None:
            from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

            self.tags = dict(self.tags or {})
            if MLFLOW_RUN_NAME in self.tags:
                log.warning(
                    f"The tag {MLFLOW_RUN_NAME} is found in tags. The value will be overridden by {self._run_name}."
                )
            self.tags[MLFLOW_RUN_NAME] = self._run_name
        run = client.create_run(experiment_id=self._experiment_id, tags=_resolve_tags(self.tags))
        self._run_id = run.info.run_id
        self._initialized = True
        return client

    @property
    def run_id(self) -> str | None:
        _ = self.experiment
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        _ = self.experiment
        return self._experiment_id

    @property
    def name(self) -> str | None:
        """The experiment id (what ModelCheckpoint uses as the folder under ``save_dir``)."""
        return self.experiment_id

    @property
    def version(self) -> str | None:
        """The run id."""
        return self.run_id

    @property
    def save_dir(self) -> str | None:
        """The local folder of a ``file:`` tracking URI; ``None`` for a remote store."""
        if self._tracking_uri.startswith(LOCAL_FILE_URI_PREFIX):
            return self._tracking_uri[len(LOCAL_FILE_URI_PREFIX) :]
        return None

    # ------------------------------------------------------------------ logging
    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace | None) -> None:  # type: ignore[override]
        from mlflow.entities import Param

        flat = _flatten_dict(_convert_params(params))
        batch = [Param(key=key, value=str(value)[:_MAX_PARAM_LENGTH]) for key, value in flat.items()]
        for start in range(0, len(batch), _PARAMS_PER_BATCH):
            self.experiment.log_batch(
                run_id=self.run_id, params=batch[start : start + _PARAMS_PER_BATCH], **self._log_batch_kwargs
            )

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        from mlflow.entities import Metric

        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        now_ms = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            if isinstance(value, str):
                log.warning(f"Discarding metric with string value {key}={value}.")
                continue
            clean = _BAD_METRIC_CHARS.sub("", key)
            if clean != key:
                rank_zero_warn(
                    "MLFlow only allows '_', '/', '.' and ' ' special characters in metric name."
                    f" Replacing {key} with {clean}.",
                    category=RuntimeWarning,
                )
            batch.append(Metric(key=clean, value=float(_to_python(value)), timestamp=now_ms, step=step or 0))
        self.experiment.log_batch(run_id=self.run_id, metrics=batch, **self._log_batch_kwargs)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if not self._initialized:
            return
        status = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED"}.get(status, status)
        if self._checkpoint_callback is not None:
            self._scan_and_log_checkpoints(self._checkpoint_callback)
        if self.experiment.get_run(self.run_id):
            self.experiment.set_terminated(self.run_id, status)

    # ------------------------------------------------------------------ checkpoints
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self._log_model == "all" or (self._log_model is True and checkpoint_callback.save_top_k == -1):
            self._scan_and_log_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callback = checkpoint_callback

    def _scan_and_log_checkpoints(self, checkpoint_callback: Any) -> None:
        """Upload each new/changed checkpoint under an artifact folder named after the file's stem, with a
        ``metadata.yaml`` (score, file name, the callback's settings) and ``aliases.txt`` ("latest"/"best")."""
        settings = (
            "monitor",
            "mode",
            "save_last",
            "save_top_k",
            "save_weights_only",
            "_every_n_train_steps",
            "_every_n_val_epochs",
        )
        for mtime, path, score, _ in _scan_checkpoints(checkpoint_callback, self._logged_model_time):
            metadata = {
                "score": _to_python(score),
                "original_filename": Path(path).name,
                "Checkpoint": {
                    k: getattr(checkpoint_callback, k) for k in settings if hasattr(checkpoint_callback, k)
                },
            }
            aliases = ["latest", "best"] if path == checkpoint_callback.best_model_path else ["latest"]
            artifact_path = Path(path).stem
            self.experiment.log_artifact(self._run_id, path, artifact_path)
            with tempfile.TemporaryDirectory() as tmp_dir:
                with open(os.path.join(tmp_dir, "metadata.yaml"), "w") as fp:
                    yaml.dump(metadata, fp, default_flow_style=False)
                with open(os.path.join(tmp_dir, "aliases.txt"), "w") as fp:
                    fp.write(str(aliases))
                self.experiment.log_artifacts(self._run_id, tmp_dir, artifact_path)
            self._logged_model_time[path] = mtime

    def __getstate__(self) -> dict[str, Any]:
        # a copy (e.g. on a Ray worker) builds its own client; the experiment and run ids travel with it
        state = self.__dict__.copy()
        state["_client"] = None
        return state


def _resolve_tags(tags: dict[str, Any] | None) -> dict[str, Any] | None:
    """Add MLflow's context tags (user, source...) the way ``mlflow.start_run`` does, where available."""
    try:
        from mlflow.tracking.context.registry import resolve_tags
    except ImportError:
        return tags
    return resolve_tags(tags)
