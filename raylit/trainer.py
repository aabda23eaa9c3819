"""Trainer: Lightning's arguments, properties and four entry points.

``Trainer(...)`` validates its arguments into a frozen ``TrainerConfig`` (raylit/config.py). ``fit`` /
``validate`` / ``test`` / ``predict`` build a ``RunSpec`` (raylit/launch/spec.py) and either execute it
in-process as a ``Run`` (raylit/run.py) or hand it to Ray Train workers (raylit/launch/ray.py). Every property
below reads the current run — or, on the driver after a Ray run, what the workers handed back.
"""

import dataclasses
import os
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from raylit import checkpoint as ckpt_io
from raylit import fs
from raylit.callbacks.base import Callback
from raylit.callbacks.checkpoint import Checkpoint
from raylit.callbacks.early_stopping import EarlyStopping
from raylit.callbacks.progress.progress_bar import ProgressBar
from raylit.config import TrainerConfig
from raylit.datamodule import LightningDataModule
from raylit.launch.local import build_run
from raylit.launch.spec import RunSpec
from raylit.loggers.base import Logger
from raylit.loops import attached
from raylit.loops.progress import LoopViews
from raylit.module import LightningModule
from raylit.precision import Precision
from raylit.profilers import select_profiler
from raylit.runtime import Runtime
from raylit.state import RunningStage, TrainerState, TrainerStatus
from raylit.strategies import Strategy
from raylit.trainer_args import build_callbacks, build_loggers
from raylit.utilities.combined_loader import CombinedLoader
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.parsing import clean_namespace


class _Setting:
    """A Trainer attribute backed by the config; assigning it (as callbacks such as
    GradientAccumulationScheduler do) replaces the config with one that has the new value."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, trainer: Any, owner: type) -> Any:
        return self if trainer is None else getattr(trainer.config, self.name)

    def __set__(self, trainer: Any, value: Any) -> None:
        trainer.config = dataclasses.replace(trainer.config, **{self.name: value})


def _stage_flag(stage: RunningStage) -> property:
    """``trainer.training`` and friends: whether the run is in ``stage``; assigning True enters it."""
    def get(self: "Trainer") -> bool:
        return self.state.stage == stage

    def set_(self: "Trainer", value: bool) -> None:
        if value:
            self.state.stage = stage
        elif self.state.stage == stage:
            self.state.stage = None

    return property(get, set_)


class Trainer:
    def __init__(
        self, *, accelerator: str = "auto", strategy: Any = "auto", devices: Any = "auto", num_nodes: int = 1,
        precision: Any = None, logger: Any = None, callbacks: Any = None, fast_dev_run: int | bool = False,
        max_epochs: int | None = None, min_epochs: int | None = None, max_steps: int = -1,
        min_steps: int | None = None, max_time: Any = None, limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None, limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None, overfit_batches: int | float = 0.0,
        val_check_interval: int | float | None = None, check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None, log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None, enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None, accumulate_grad_batches: int = 1,
        gradient_clip_val: int | float | None = None, gradient_clip_algorithm: str | None = None,
        deterministic: bool | str | None = None, benchmark: bool | None = None, inference_mode: bool = True,
        use_distributed_sampler: bool = True, profiler: Any = None, detect_anomaly: bool = False,
        barebones: bool = False, plugins: Any = None, sync_batchnorm: bool = False,
        reload_dataloaders_every_n_epochs: int = 0, default_root_dir: str | os.PathLike | None = None,
        enable_autolog_hparams: bool = True, model_registry: str | None = None, scaling_config: Any = None,
        run_config: Any = None, elastic: tuple[int, int] | None = None,
    ) -> None:
        """Lightning's Trainer arguments, with their meanings. ``scaling_config`` / ``run_config`` take Ray
        Train's ``ScalingConfig`` / ``RunConfig`` for full control of a Ray run; they win over the values
        raylit derives from ``accelerator``, ``devices`` and ``num_nodes``. ``elastic=(min_workers,
        max_workers)`` lets Ray run between min and max workers while every optimizer step keeps the global
        batch of max_workers (docs/elastic.md)."""
        config = TrainerConfig.from_kwargs(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        root = config.default_root_dir if config.default_root_dir is not None else os.getcwd()
        self._setup(config, build_callbacks(callbacks, config.enable_checkpointing, config.enable_progress_bar,
                                            config.enable_model_summary, max_time),
                    build_loggers(config.logger, root, config.fast_dev_run))

    def _setup(self, config: TrainerConfig, callbacks: list[Callback], loggers: list[Logger]) -> None:
        self.config = config
        self.callbacks = callbacks
        self.loggers = loggers
        self.strategy = Strategy(self)
        self.profiler = select_profiler(config.profiler)  # on a Ray worker: the driver's profiler, unpickled
        self.ckpt_path: str | None = None
        self._run: Any = None  # the current or last Run
        self._idle_runtime = Runtime(config.device)
        self._idle_state = TrainerState()
        self._idle_datamodule: Any = None
        if config.deterministic:  # process-wide torch settings, applied wherever a Trainer is built
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=config.deterministic == "warn")
        if config.benchmark is not None:
            torch.backends.cudnn.benchmark = config.benchmark

    @classmethod
    def _for_spec(cls, spec: RunSpec) -> "Trainer":
        """The Trainer a Ray worker's callbacks and module see: the driver's settings, callbacks and loggers."""
        trainer = cls.__new__(cls)
        trainer._setup(spec.config, spec.callbacks, spec.loggers)
        return trainer

    # --- settings (Lightning's plain attributes; assignable) --------------------------------------------------
    # read-only progress views, as Lightning's loop objects (loops/progress.py)
    fit_loop, validate_loop, test_loop, predict_loop = LoopViews(), LoopViews(), LoopViews(), LoopViews()
    fast_dev_run = _Setting()
    barebones = _Setting()
    max_epochs = _Setting()
    min_epochs = _Setting()
    max_steps = _Setting()
    min_steps = _Setting()
    limit_train_batches = _Setting()
    limit_val_batches = _Setting()
    limit_test_batches = _Setting()
    limit_predict_batches = _Setting()
    overfit_batches = _Setting()
    val_check_interval = _Setting()
    check_val_every_n_epoch = _Setting()
    num_sanity_val_steps = _Setting()
    log_every_n_steps = _Setting()
    accumulate_grad_batches = _Setting()
    gradient_clip_val = _Setting()
    gradient_clip_algorithm = _Setting()
    reload_dataloaders_every_n_epochs = _Setting()
    inference_mode = _Setting()
    detect_anomaly = _Setting()
    deterministic = _Setting()
    benchmark = _Setting()
    sync_batchnorm = _Setting()
    use_distributed_sampler = _Setting()
    enable_autolog_hparams = _Setting()
    num_nodes = _Setting()
    accelerator = _Setting()
    precision = _Setting()

    # --- the run's objects and progress ---------------------------------------------------------------------
    @property
    def _runtime(self) -> Runtime:
        return self._run.runtime if self._run is not None else self._idle_runtime

    @property
    def _metrics(self) -> Any:
        return self._run.metrics

    @property
    def _logger_step(self) -> int:
        return self._run.state.batches_that_stepped if self._run is not None else 0

    @property
    def state(self) -> TrainerState:
        return self._run.status if self._run is not None else self._idle_state

    @property
    def lightning_module(self) -> Any:
        return self._run.module if self._run is not None else None

    @property
    def model(self) -> Any:
        return self._run.model if self._run is not None else None

    @property
    def datamodule(self) -> Any:
        return self._run.datamodule if self._run is not None else self._idle_datamodule

    @datamodule.setter
    def datamodule(self, datamodule: Any) -> None:
        if self._run is not None:
            self._run.datamodule = datamodule
        self._idle_datamodule = datamodule

    @property
    def optimizers(self) -> list[Any]:
        return self._run.optimizers if self._run is not None else []

    @optimizers.setter
    def optimizers(self, value: list[Any]) -> None:
        self._run.optimizers = list(value)

    @property
    def _lightning_optimizers(self) -> list[Any]:
        return self._run.lightning_optimizers

    @property
    def lr_scheduler_configs(self) -> list[Any]:
        return self._run.lr_scheduler_configs if self._run is not None else []

    @lr_scheduler_configs.setter
    def lr_scheduler_configs(self, value: list[Any]) -> None:
        self._run.lr_scheduler_configs = list(value)

    @property
    def precision_plugin(self) -> Precision:
        return self._run.precision if self._run is not None else Precision(self.config.precision, self.config.device)

    @property
    def scaler(self) -> Any:
        return self.precision_plugin.scaler

    @property
    def default_root_dir(self) -> str:
        return self.config.default_root_dir if self.config.default_root_dir is not None else os.getcwd()

    num_devices = property(lambda self: len(self.config.device_ids))
    device_ids = property(lambda self: list(self.config.device_ids))
    global_rank = property(lambda self: self._runtime.global_rank)
    local_rank = property(lambda self: self._runtime.local_rank)
    node_rank = property(lambda self: self._runtime.node_rank)
    world_size = property(lambda self: self._runtime.world_size)
    is_global_zero = property(lambda self: self._runtime.global_rank == 0)
    current_epoch = property(lambda self: self._run.state.current_epoch if self._run is not None else 0)
    global_step = property(lambda self: self._run.state.global_step if self._run is not None else 0)
    is_last_batch = property(lambda self: self._run is not None and self._run.state.is_last_batch)
    received_sigterm = property(lambda self: False)
    enable_validation = property(lambda self: self._run is not None and self._run.loaders.validation_enabled())

    @property
    def should_stop(self) -> bool:
        return self._run is not None and self._run.state.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self._run.state.should_stop = value

    # what self.log produced: (callback_metrics, logged_metrics, progress_bar_metrics) of the current run
    callback_metrics = property(lambda self: self._run.metrics.views()[0] if self._run is not None else {})
    logged_metrics = property(lambda self: self._run.metrics.views()[1] if self._run is not None else {})
    progress_bar_metrics = property(lambda self: self._run.metrics.views()[2] if self._run is not None else {})

    # --- loggers and callbacks --------------------------------------------------------------------------------
    @property
    def logger(self) -> Logger | None:
        return self.loggers[0] if self.loggers else None

    @logger.setter
    def logger(self, logger: Logger | None) -> None:
        self.loggers = [logger] if logger else []

    @property
    def log_dir(self) -> str | None:
        if not self.loggers:
            return self.default_root_dir
        lg = self.loggers[0]
        d = getattr(lg, "log_dir", None) or getattr(lg, "save_dir", None)
        return d if d is not None else self.default_root_dir

    checkpoint_callbacks = property(lambda self: [cb for cb in self.callbacks if isinstance(cb, Checkpoint)])
    checkpoint_callback = property(lambda self: next(iter(self.checkpoint_callbacks), None))
    early_stopping_callbacks = property(lambda self: [cb for cb in self.callbacks if isinstance(cb, EarlyStopping)])
    early_stopping_callback = property(lambda self: next(iter(self.early_stopping_callbacks), None))
    progress_bar_callback = property(lambda self: next((cb for cb in self.callbacks if isinstance(cb, ProgressBar)),
                                                       None))

    # --- stages ---------------------------------------------------------------------------------------------
    training = _stage_flag(RunningStage.TRAINING)
    validating = _stage_flag(RunningStage.VALIDATING)
    testing = _stage_flag(RunningStage.TESTING)
    predicting = _stage_flag(RunningStage.PREDICTING)
    sanity_checking = _stage_flag(RunningStage.SANITY_CHECKING)
    evaluating = property(lambda self: self.state.stage in (RunningStage.VALIDATING, RunningStage.TESTING))
    interrupted = property(lambda self: self.state.status == TrainerStatus.INTERRUPTED)

    # --- data -----------------------------------------------------------------------------------------------
    @property
    def train_dataloader(self) -> Any:
        """The training loader, or the collection of loaders the user returned (as in Lightning)."""
        loader = self._run.loaders.train if self._run is not None else None
        return loader.iterables if isinstance(loader, CombinedLoader) else loader

    val_dataloaders = property(lambda self: _single_or_list(self._run and self._run.loaders.val))
    test_dataloaders = property(lambda self: _single_or_list(self._run and self._run.loaders.test))
    predict_dataloaders = property(lambda self: _single_or_list(self._run and self._run.loaders.predict))

    @property
    def num_training_batches(self) -> int | float:
        return self._run.loaders.num_training_batches if self._run is not None else float("inf")

    def _eval_batches(self, fn: str) -> list[int | float]:
        loaders = self._run and self._run.loaders
        if not loaders or getattr(loaders, {"validate": "val"}.get(fn, fn)) is None:
            return list(loaders.reported.get(fn, [])) if loaders else []
        return loaders.eval_limits(fn)

    num_val_batches = property(lambda self: self._eval_batches("validate"))
    num_test_batches = property(lambda self: self._eval_batches("test"))
    num_predict_batches = property(lambda self: self._eval_batches("predict"))

    @property
    def num_sanity_val_batches(self) -> list[int | float]:
        return [min(self.config.num_sanity_val_steps, n) for n in self.num_val_batches]

    @property
    def val_check_batch(self) -> int | float | None:
        return self._run.loaders.val_check_batch if self._run is not None else float("inf")

    @property
    def estimated_stepping_batches(self) -> int | float:
        """Optimizer steps the whole fit will take (for OneCycleLR-style schedulers)."""
        return self._run.loaders.estimated_stepping_batches()

    # --- entry points ---------------------------------------------------------------------------------------
    def fit(self, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None, datamodule: Any = None,
            ckpt_path: Any = None, weights_only: bool | None = None) -> None:
        if isinstance(train_dataloaders, LightningDataModule):
            if datamodule is not None:
                raise MisconfigurationException("You passed a LightningDataModule twice (train_dataloaders and "
                                                "datamodule)")
            datamodule, train_dataloaders = train_dataloaders, None
        if datamodule is not None and (train_dataloaders is not None or val_dataloaders is not None):
            raise MisconfigurationException(
                "You cannot pass `train_dataloader` or `val_dataloaders` to `trainer.fit(datamodule=...)`")
        spec = self._spec("fit", model, datamodule, {"train": train_dataloaders, "validate": val_dataloaders},
                          ckpt_path=ckpt_path, weights_only=weights_only)
        # executed here rather than in a helper: fit → Run.execute → loop is the whole call stack
        return self._launch_ray(spec) if self.config.uses_ray else build_run(spec, self).execute()

    def validate(self, model: Any = None, dataloaders: Any = None, ckpt_path: Any = None, verbose: bool = True,
                 datamodule: Any = None, weights_only: bool | None = None) -> list[dict[str, float]]:
        return self._evaluate("validate", model, dataloaders, datamodule, ckpt_path=ckpt_path,
                              weights_only=weights_only, verbose=verbose)

    def test(self, model: Any = None, dataloaders: Any = None, ckpt_path: Any = None, verbose: bool = True,
             datamodule: Any = None, weights_only: bool | None = None) -> list[dict[str, float]]:
        return self._evaluate("test", model, dataloaders, datamodule, ckpt_path=ckpt_path, weights_only=weights_only,
                              verbose=verbose)

    def predict(self, model: Any = None, dataloaders: Any = None, datamodule: Any = None,
                return_predictions: bool | None = None, ckpt_path: Any = None,
                weights_only: bool | None = None) -> list | None:
        return self._evaluate("predict", model, dataloaders, datamodule, ckpt_path=ckpt_path,
                              weights_only=weights_only,
                              return_predictions=True if return_predictions is None else return_predictions)

    def _evaluate(self, fn: str, model: Any, dataloaders: Any, datamodule: Any, **options: Any) -> Any:
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        if dataloaders is not None and datamodule is not None:
            raise MisconfigurationException("You cannot pass both `dataloaders` and `datamodule`")
        spec = self._spec(fn, model, datamodule, {fn: dataloaders}, **options)
        return self._launch_ray(spec) if self.config.uses_ray else build_run(spec, self).execute()

    def _spec(self, fn: str, model: Any, datamodule: Any = None, data: dict | None = None,
              ckpt_path: Any = None, **options: Any) -> RunSpec:
        """The ``RunSpec`` of ``trainer.<fn>(model, ...)``, after the checks that need no run."""
        model_given, compile_kwargs = model is not None, None
        if isinstance(getattr(model, "_orig_mod", None), LightningModule):  # trainer.fit(torch.compile(model))
            model, compile_kwargs = model._orig_mod, model.dynamo_ctx  # torch.compile's settings, to apply again
        if model is None:
            model = self.lightning_module
            if model is None:
                raise TypeError(f"`Trainer.{fn}()` requires a `LightningModule` when it hasn't been passed in a "
                                "previous run")
        elif not isinstance(model, LightningModule):
            raise TypeError(f"`model` must be a `raylit.LightningModule`, got `{type(model).__qualname__}`")
        clean_namespace(model.hparams)  # as Lightning's Trainer does before each call: the spec must pickle
        previous = self._run
        return RunSpec(
            config=self.config, fn=fn, module=model, datamodule=datamodule, callbacks=self.callbacks,
            loggers=self.loggers, data=data or {}, ckpt_path=ckpt_path if ckpt_path is not None else self.ckpt_path,
            model_given=model_given, compile=compile_kwargs, state=previous.state if previous else None,
            eval_log_steps=previous.eval_log_steps if previous else None, trainer_cls=type(self),
            **{k: v for k, v in options.items() if v is not None or k == "weights_only"})

    # Lightning's way to attach a model and data without running (raylit/loops/attached.py)
    _connect = attached.connect
    _data_connector = property(attached.DataConnector)
    _checkpoint_connector = property(attached.CheckpointConnector)
    _setup_data = attached.setup_data

    def _launch_ray(self, spec: RunSpec) -> Any:
        from raylit.launch.ray import launch

        return launch(self, spec)

    # --- checkpoints ----------------------------------------------------------------------------------------
    def save_checkpoint(self, filepath: str | os.PathLike, weights_only: bool = False,
                        storage_options: Any = None) -> None:
        """Write a Lightning-format checkpoint. Call on every rank: global rank 0 writes, atomically."""
        if self.lightning_module is None:
            raise AttributeError("Saving a checkpoint is only possible if a model is attached to the Trainer. Did "
                                 "you call `Trainer.save_checkpoint()` before calling `Trainer.{fit,validate,test,"
                                 "predict}`?")
        if storage_options is not None:
            raise TypeError("`Trainer.save_checkpoint(..., storage_options=...)` is not supported")
        checkpoint = ckpt_io.dump_checkpoint(self._run, weights_only)
        if self.is_global_zero:
            fs.save_torch(checkpoint, os.fspath(filepath))
        self._runtime.barrier("save_checkpoint")

    # --- misc -----------------------------------------------------------------------------------------------
    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.local_rank == 0:
            print(*args, **kwargs)

    @contextmanager
    def init_module(self, empty_init: bool | None = None) -> Iterator[None]:
        """Create the module's parameters directly in the precision's dtype (on CPU; moved at fit)."""
        with self.precision_plugin.init_context():
            yield

    def __getstate__(self) -> dict[str, Any]:
        # a pickled Trainer (e.g. inside a callback that keeps it) carries its settings, callbacks and loggers;
        # the live run (module, loaders, optimizers) stays behind
        return {**{k: v for k, v in self.__dict__.items() if k != "_loop_views"}, "_run": None}

    def _clone(self, **overrides: Any) -> "Trainer":
        """A new Trainer with the same constructor arguments, except ``overrides``."""
        return Trainer(**{**self.config.kwargs, **overrides})


def _single_or_list(loaders: list | None) -> Any:
    if not loaders:
        return None if loaders is None else loaders
    return loaders[0] if len(loaders) == 1 else loaders
