"""Weights & Biases logger (optional: ``pip install wandb``). Mirror of ``lightning.pytorch.loggers.wandb``.

``wandb`` is imported the first time a run is needed, never by ``import raylit.loggers``.

Under Ray, a logger is pickled to the workers. Pickling does not start a run: the rank-0 worker starts it
(``wandb.init``) on first use. If a run had already been started in the sending process, the copy first tries
to attach to it (same machine) and otherwise resumes it by id.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from raylit.loggers._utils import _add_prefix, _convert_params, _is_tensor, _scan_checkpoints, _to_python
from raylit.loggers.base import Logger, rank_zero_experiment
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.rank_zero import rank_zero_only, rank_zero_warn

if TYPE_CHECKING:
    from wandb import Artifact
    from wandb.wandb_run import Run

__all__ = ["WandbLogger"]

_STEP_KEY = "trainer/global_step"


def _require_wandb() -> None:
    if importlib.util.find_spec("wandb") is None:
        raise ModuleNotFoundError("WandbLogger needs the `wandb` package: `pip install wandb`.")


class WandbLogger(Logger):
    """Log to Weights & Biases.

    Args:
        name: display name of the run.
        save_dir: folder where wandb writes its ``wandb/`` run folders (``"."`` by default).
        version: id of the run (to resume it); same as ``id``.
        offline: log locally only (``wandb sync`` uploads later). Cannot be combined with ``log_model``.
        dir: same as ``save_dir`` (used when ``save_dir`` is ``None``).
        id: same as ``version``.
        anonymous: allow anonymous logging.
        project: W&B project; default env ``WANDB_PROJECT``, else ``"lightning_logs"``.
        log_model: upload ModelCheckpoint files as ``model`` artifacts: ``True`` at the end of training (every
            checkpoint if ``save_top_k=-1``), ``"all"`` as they are saved, ``False`` never.
        experiment: an existing ``wandb`` run to log to.
        prefix: put in front of every metric key, joined with ``"-"``.
        checkpoint_name: artifact name for checkpoints (default ``model-<run id>``).
        add_file_policy: ``"mutable"`` or ``"immutable"``, how checkpoint files are added to artifacts.
        **kwargs: passed to ``wandb.init`` (``entity``, ``group``, ``tags``, ``config``, ``mode``...).
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | os.PathLike = ".",
        version: str | None = None,
        offline: bool = False,
        dir: str | os.PathLike | None = None,
        id: str | None = None,
        anonymous: bool | None = None,
        project: str | None = None,
        log_model: Literal["all"] | bool = False,
        experiment: Any = None,
        prefix: str = "",
        checkpoint_name: str | None = None,
        add_file_policy: Literal["mutable", "immutable"] = "mutable",
        **kwargs: Any,
    ) -> None:
        _require_wandb()
        if offline and log_model:
            raise MisconfigurationException(
                f"Providing log_model={log_model} and offline={offline} is an invalid configuration"
                " since model checkpoints cannot be uploaded in offline mode.\n"
                "Hint: Set `offline=False` to log your model."
            )
        super().__init__()
        self._offline = offline
        self._log_model = log_model
        self._prefix = prefix
        self._experiment = experiment
        self._attach_id: str | None = None
        self._logged_model_time: dict[str, float] = {}
        self._checkpoint_callbacks: dict[int, Any] = {}
        self._checkpoint_name = checkpoint_name
        self.add_file_policy = add_file_policy

        folder = save_dir if save_dir is not None else dir
        self._wandb_init: dict[str, Any] = {
            "name": name,
            "project": project or os.environ.get("WANDB_PROJECT", "lightning_logs"),
            "dir": None if folder is None else os.fspath(folder),
            "id": version or id,
            "resume": "allow",
            "anonymous": "allow" if anonymous else None,
        }
        if offline:
            self._wandb_init["mode"] = "offline"
        self._wandb_init.update(kwargs)
        self._project = self._wandb_init.get("project")
        self._save_dir = self._wandb_init.get("dir")
        self._name = self._wandb_init.get("name")
        self._id = self._wandb_init.get("id")

    # ------------------------------------------------------------------ the run
    @property
    @rank_zero_experiment
    def experiment(self) -> Run:
        """The ``wandb`` run, started on first access (an already active ``wandb.run`` is reused, with a warning)."""
        if self._experiment is not None:
            return self._experiment
        import wandb

        if wandb.run is not None:
            rank_zero_warn(
                "There is a wandb run already in progress and newly created instances of `WandbLogger` will reuse"
                " this run. If this is not desired, call `wandb.finish()` before instantiating `WandbLogger`."
            )
            self._experiment = wandb.run
            return self._experiment

        if self._attach_id is not None and hasattr(wandb, "_attach"):
            try:
                self._experiment = wandb._attach(self._attach_id)
            except Exception:  # noqa: BLE001 - the run lives in another machine's service: resume it by id
                self._experiment = None
        if self._experiment is None:
            init_kwargs = dict(self._wandb_init)
            if self._id is not None:
                init_kwargs["id"] = self._id
            self._experiment = wandb.init(**init_kwargs)
            self._define_step_metric()
        return self._experiment

    def _define_step_metric(self) -> None:
        define_metric = getattr(self._experiment, "define_metric", None)
        if define_metric is None:
            return
        if self._wandb_init.get("sync_tensorboard"):
            define_metric("*", step_metric="global_step")
        else:
            define_metric(_STEP_KEY)
            define_metric("*", step_metric=_STEP_KEY, step_sync=True)

    @property
    def save_dir(self) -> str | None:
        return self._save_dir

    @property
    def name(self) -> str | None:
        """The project (what ModelCheckpoint uses as the folder under ``save_dir``)."""
        return self._project

    @property
    def version(self) -> str | None:
        """The run id once the run exists, else the id given (or ``None``)."""
        return self._experiment.id if self._experiment else self._id

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._experiment is not None:
            state["_id"] = getattr(self._experiment, "id", None)
            state["_attach_id"] = getattr(self._experiment, "_attach_id", None)
            state["_name"] = getattr(self._experiment, "name", self._name)
        state["_experiment"] = None
        return state

    # ------------------------------------------------------------------ logging
    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace | None) -> None:  # type: ignore[override]
        params = _convert_params(params)
        clean = {key: _json_or_str(_callable_to_value(value)) for key, value in params.items()}
        self.experiment.config.update(clean, allow_val_change=True)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        metrics = {key: _scalar(value) for key, value in metrics.items()}
        if step is not None and not self._wandb_init.get("sync_tensorboard"):
            self.experiment.log({**metrics, _STEP_KEY: step})
        else:
            self.experiment.log(metrics)

    @rank_zero_only
    def log_table(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[Any]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Log a ``wandb.Table`` from ``columns`` + ``data`` or a pandas ``dataframe``."""
        import wandb

        self.log_metrics({key: wandb.Table(columns=columns, data=data, dataframe=dataframe)}, step)

    @rank_zero_only
    def log_text(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[str]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Log text as a ``wandb.Table``."""
        self.log_table(key, columns, data, dataframe, step)

    @rank_zero_only
    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        """Log a list of images; each keyword (``caption=[...]``...) is a list with one value per image."""
        import wandb

        self._log_media(key, images, step, wandb.Image, "images", kwargs)

    @rank_zero_only
    def log_audio(self, key: str, audios: list[Any], step: int | None = None, **kwargs: Any) -> None:
        """Log a list of audio clips; keywords (``sample_rate=[...]``...) are per-clip lists."""
        import wandb

        self._log_media(key, audios, step, wandb.Audio, "audios", kwargs)

    @rank_zero_only
    def log_video(self, key: str, videos: list[Any], step: int | None = None, **kwargs: Any) -> None:
        """Log a list of videos; keywords (``fps=[...]``...) are per-video lists."""
        import wandb

        self._log_media(key, videos, step, wandb.Video, "videos", kwargs)

    def _log_media(
        self, key: str, items: list[Any], step: int | None, media: Any, what: str, kwargs: dict[str, list]
    ) -> None:
        if not isinstance(items, list):
            raise TypeError(f'Expected a list as "{what}", found {type(items)}')
        for arg, values in kwargs.items():
            if len(values) != len(items):
                raise ValueError(f"Expected {len(items)} items but only found {len(values)} for {arg}")
        per_item = [{arg: values[i] for arg, values in kwargs.items()} for i in range(len(items))]
        self.log_metrics({key: [media(item, **extra) for item, extra in zip(items, per_item)]}, step)

    def watch(
        self, model: Any, log: str | None = "gradients", log_freq: int = 100, log_graph: bool = True
    ) -> None:
        self.experiment.watch(model, log=log, log_freq=log_freq, log_graph=log_graph)

    # ------------------------------------------------------------------ artifacts and checkpoints
    def use_artifact(self, artifact: str, artifact_type: str | None = None) -> Artifact:
        return self.experiment.use_artifact(artifact, type=artifact_type)

    @staticmethod
    @rank_zero_only
    def download_artifact(
        artifact: str,
        save_dir: str | os.PathLike | None = None,
        artifact_type: str | None = None,
        use_artifact: bool | None = True,
    ) -> str:
        """Download an artifact (through the active run when there is one and ``use_artifact``); its folder."""
        import wandb

        if wandb.run is not None and use_artifact:
            found = wandb.run.use_artifact(artifact)
        else:
            found = wandb.Api().artifact(artifact, type=artifact_type)
        return found.download(root=None if save_dir is None else os.fspath(save_dir))

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self._log_model == "all" or (self._log_model is True and checkpoint_callback.save_top_k == -1):
            self._scan_and_log_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """On success, upload the checkpoints remembered for ``log_model=True``. The run itself stays open (as
        in Lightning): ``logger.experiment.finish()`` ends it."""
        if status != "success" or self._experiment is None:
            return
        for checkpoint_callback in self._checkpoint_callbacks.values():
            self._scan_and_log_checkpoints(checkpoint_callback)

    def _scan_and_log_checkpoints(self, checkpoint_callback: Any) -> None:
        import wandb

        settings = ("monitor", "mode", "save_last", "save_top_k", "save_weights_only", "_every_n_train_steps")
        for mtime, path, score, _ in _scan_checkpoints(checkpoint_callback, self._logged_model_time):
            metadata = {
                "score": _to_python(score),
                "original_filename": Path(path).name,
                type(checkpoint_callback).__name__: {
                    k: getattr(checkpoint_callback, k) for k in settings if hasattr(checkpoint_callback, k)
                },
            }
            if not self._checkpoint_name:
                self._checkpoint_name = f"model-{self.experiment.id}"
            artifact = wandb.Artifact(name=self._checkpoint_name, type="model", metadata=metadata)
            artifact.add_file(path, name="model.ckpt", policy=self.add_file_policy)
            aliases = ["latest", "best"] if path == checkpoint_callback.best_model_path else ["latest"]
            self.experiment.log_artifact(artifact, aliases=aliases)
            self._logged_model_time[path] = mtime


def _scalar(value: Any) -> Any:
    if _is_tensor(value) and value.numel() == 1:
        return value.item()
    return value


def _callable_to_value(value: Any) -> Any:
    """Classes become their name; other callables get a chance to produce a value (else their name)."""
    if inspect.isclass(value):
        return value.__name__
    if callable(value):
        try:
            produced = value()
        except Exception:  # noqa: BLE001 - any failure: fall back to the name
            return getattr(value, "__name__", None)
        return getattr(value, "__name__", None) if callable(produced) else produced
    return value


def _json_or_str(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str, list, dict)):
        return value
    try:
        json.dumps(value)
    except (TypeError, OverflowError):
        return str(value)
    return value
