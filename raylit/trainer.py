"""Trainer: Lightning's arguments and properties; runs in-process or hands the run to the Ray launcher."""

import math
import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterator

import torch

from raylit import checkpoint as ckpt_io
from raylit.callbacks.base import Callback
from raylit.callbacks.checkpoint import Checkpoint
from raylit.data import as_eval_list, as_train_loader, limit_batches, without_shuffle
from raylit.hooks import HookDispatcher, is_overridden
from raylit.loggers.base import Logger
from raylit.loop import Loop
from raylit.metrics import MetricsConnector, ResultStore
from raylit.optim import LightningOptimizer, LRSchedulerConfig, normalize_configure_optimizers
from raylit.precision import Precision, canonical_precision
from raylit.profilers import PassThroughProfiler, select_profiler
from raylit.runtime import Runtime
from raylit.state import RunningStage, TrainerFn, TrainerState, TrainerStatus, TrainState
from raylit.trainer_args import build_callbacks, build_loggers, check_limit, parse_devices, reorder_callbacks
from raylit.utilities.clock import SharedDeadline
from raylit.utilities.exceptions import MisconfigurationException

_STRATEGIES = {"auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "single_device", "fsdp",
               "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false",
               "ddp_spawn_find_unused_parameters_true", "ddp_spawn_find_unused_parameters_false"}
_ACCELERATORS = ("auto", "cpu", "gpu", "cuda")



class _StrategyView:
    """``trainer.strategy``: the collectives callbacks use, over the runtime."""

    def __init__(self, trainer: "Trainer", name: str) -> None:
        self._trainer, self.name = trainer, name

    @property
    def root_device(self) -> torch.device:
        return self._trainer._runtime.device

    @property
    def world_size(self) -> int:
        return self._trainer._runtime.world_size

    def barrier(self, name: str | None = None) -> None:
        self._trainer._runtime.barrier(name)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self._trainer._runtime.broadcast(obj, src)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return self._trainer._runtime.reduce_boolean_decision(decision, all)

    def reduce(self, tensor: torch.Tensor, reduce_op: str = "mean") -> torch.Tensor:
        return self._trainer._runtime.reduce(tensor, reduce_op)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._trainer._runtime.all_gather(tensor)

    def __repr__(self) -> str:
        return f"Strategy({self.name!r})"


class Trainer:
    def __init__(
        self,
        *,
        accelerator: str = "auto",
        strategy: Any = "auto",
        devices: Any = "auto",
        num_nodes: int = 1,
        precision: Any = None,
        logger: Any = None,
        callbacks: Any = None,
        fast_dev_run: int | bool = False,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        min_steps: int | None = None,
        max_time: Any = None,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        overfit_batches: int | float = 0.0,
        val_check_interval: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
        deterministic: bool | str | None = None,
        benchmark: bool | None = None,
        inference_mode: bool = True,
        use_distributed_sampler: bool = True,
        profiler: Any = None,
        detect_anomaly: bool = False,
        barebones: bool = False,
        plugins: Any = None,
        sync_batchnorm: bool = False,
        reload_dataloaders_every_n_epochs: int = 0,
        default_root_dir: str | os.PathLike | None = None,
        enable_autolog_hparams: bool = True,
        model_registry: str | None = None,
        scaling_config: Any = None,
        run_config: Any = None,
    ) -> None:
        """Lightning's Trainer arguments, with their meanings. ``scaling_config`` / ``run_config`` take Ray
        Train's ``ScalingConfig`` / ``RunConfig`` for full control of a Ray run; they win over the values
        raylit derives from ``accelerator``, ``devices`` and ``num_nodes``."""
        # the constructor arguments, so that Tune trials and Ray workers can rebuild this Trainer with overrides
        self._init_kwargs = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self._init_flags = dict(accelerator=accelerator, strategy=strategy, devices=devices, num_nodes=num_nodes)
        # --- hardware and distribution ---------------------------------------------------------------
        if not isinstance(accelerator, str) or accelerator.lower() not in _ACCELERATORS:
            raise ValueError(
                f"`Trainer(accelerator={accelerator!r})` is not a valid value. Expected one of {list(_ACCELERATORS)}")
        accelerator = accelerator.lower()
        if accelerator == "auto":
            accelerator = "cuda" if torch.cuda.is_available() else "cpu"
        elif accelerator == "gpu":
            accelerator = "cuda"
        self._accelerator_flag = accelerator
        if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 1:
            raise MisconfigurationException(f"`Trainer(num_nodes={num_nodes!r})`: num_nodes must be an int >= 1")
        self._num_nodes = num_nodes
        self._devices_flag = devices
        self._device_ids = parse_devices(devices, accelerator)
        self._strategy_flag = strategy
        if not isinstance(strategy, str) or strategy not in _STRATEGIES:
            raise ValueError(
                f"`Trainer(strategy={strategy!r})` is not supported. Expected one of {sorted(_STRATEGIES)}")
        self._scaling_config = scaling_config
        self._run_config = run_config
        self._num_workers = len(self._device_ids) * num_nodes
        if scaling_config is not None and getattr(scaling_config, "num_workers", None):
            self._num_workers = int(scaling_config.num_workers)
        if strategy == "single_device" and self._num_workers > 1:
            raise MisconfigurationException(
                f"`strategy='single_device'` runs one process, but devices={devices!r} x num_nodes={num_nodes} asks "
                f"for {self._num_workers}. Use strategy='ddp' or devices=1.")
        if accelerator == "cuda" and self._num_workers == 1 and scaling_config is None and \
                not torch.cuda.is_available():
            raise MisconfigurationException(
                "`Trainer(accelerator='gpu')` was requested but no CUDA GPU is available in this process. "
                "Available accelerators: ['cpu']. Use accelerator='cpu', or ask for several workers so the run goes "
                "to a Ray cluster that has GPUs.")
        device = torch.device("cuda", self._device_ids[0]) if accelerator == "cuda" and \
            torch.cuda.is_available() else torch.device("cpu")
        self._runtime: Runtime = Runtime(device)
        self._precision_name = canonical_precision(precision, "cuda" if accelerator == "cuda" else "cpu")
        self._precision = Precision(self._precision_name, device)
        self.strategy = _StrategyView(self, "ddp" if self._num_workers > 1 and strategy == "auto" else strategy)
        self.sync_batchnorm = sync_batchnorm
        self.use_distributed_sampler = use_distributed_sampler
        if plugins:
            raise MisconfigurationException(f"`Trainer(plugins={plugins!r})` is not supported by raylit")

        # --- debugging flags --------------------------------------------------------------------------
        if isinstance(fast_dev_run, bool):
            fast_dev_run = int(fast_dev_run)
        if not isinstance(fast_dev_run, int) or fast_dev_run < 0:
            raise MisconfigurationException(
                f"fast_dev_run={fast_dev_run!r} is not a valid configuration. It should be >= 0.")
        self.fast_dev_run: int | bool = True if fast_dev_run == 1 else fast_dev_run
        self.barebones = barebones
        if barebones:
            for name, value in (("enable_checkpointing", enable_checkpointing), ("logger", logger),
                                ("enable_progress_bar", enable_progress_bar),
                                ("enable_model_summary", enable_model_summary)):
                if value:
                    raise ValueError(f"`Trainer(barebones=True)` was configured. `{name}={value!r}` is incompatible")
            if fast_dev_run or detect_anomaly or profiler:
                raise ValueError("`Trainer(barebones=True)` is incompatible with fast_dev_run, detect_anomaly and "
                                 "profiler")
            enable_checkpointing = enable_progress_bar = enable_model_summary = False
            logger = False
            log_every_n_steps = 0
            num_sanity_val_steps = 0

        # --- loop limits --------------------------------------------------------------------------------
        for name, value in (("max_epochs", max_epochs), ("min_epochs", min_epochs), ("min_steps", min_steps)):
            if value is not None and (not isinstance(value, int) or value < -1):
                raise MisconfigurationException(f"`Trainer({name}={value!r})` must be None or an int >= -1")
        if not isinstance(max_steps, int) or max_steps < -1:
            raise MisconfigurationException(f"`Trainer(max_steps={max_steps!r})` must be -1 or an int >= 0")
        if max_epochs is None:
            max_epochs = 1000 if max_steps == -1 and max_time is None else -1
        self.max_epochs, self.min_epochs = max_epochs, (0 if min_epochs is None else min_epochs)
        self.max_steps, self.min_steps = max_steps, min_steps
        self.limit_train_batches = check_limit(limit_train_batches, "limit_train_batches")
        self.limit_val_batches = check_limit(limit_val_batches, "limit_val_batches")
        self.limit_test_batches = check_limit(limit_test_batches, "limit_test_batches")
        self.limit_predict_batches = check_limit(limit_predict_batches, "limit_predict_batches")
        self.overfit_batches = check_limit(overfit_batches, "overfit_batches")
        if self.overfit_batches > 0:
            self.limit_train_batches = self.limit_val_batches = self.overfit_batches
        if val_check_interval is None:
            val_check_interval = 1.0
        self._val_check_seconds = _val_check_seconds(val_check_interval)  # time-based (Lightning 2.6), or None
        if self._val_check_seconds is None and (
                isinstance(val_check_interval, bool) or not isinstance(val_check_interval, (int, float))
                or val_check_interval <= 0 or (isinstance(val_check_interval, float) and val_check_interval > 1.0)):
            raise MisconfigurationException(
                f"`val_check_interval` should be an int > 0 (every N training batches), a float in (0.0, 1.0] "
                f"(a fraction of the training epoch) or a time interval ('DD:HH:MM:SS', a timedelta or a dict of "
                f"timedelta arguments), got {val_check_interval!r}.")
        self.val_check_interval = val_check_interval
        self._val_deadline: SharedDeadline | None = None
        if check_val_every_n_epoch is not None and (not isinstance(check_val_every_n_epoch, int) or
                                                    check_val_every_n_epoch < 1):
            raise MisconfigurationException(
                f"`check_val_every_n_epoch` should be an integer >= 1 or None, found {check_val_every_n_epoch!r}.")
        self.check_val_every_n_epoch = check_val_every_n_epoch
        if num_sanity_val_steps is None:
            num_sanity_val_steps = 2
        if not isinstance(num_sanity_val_steps, int) or num_sanity_val_steps < -1:
            raise MisconfigurationException(
                f"`num_sanity_val_steps` must be -1 (all batches) or an int >= 0, got {num_sanity_val_steps!r}")
        self.num_sanity_val_steps: int | float = math.inf if num_sanity_val_steps == -1 else num_sanity_val_steps
        self.log_every_n_steps = 50 if log_every_n_steps is None else log_every_n_steps
        if not isinstance(accumulate_grad_batches, int) or accumulate_grad_batches < 1:
            raise MisconfigurationException(
                f"`Trainer(accumulate_grad_batches={accumulate_grad_batches!r})` must be an int >= 1")
        self.accumulate_grad_batches = accumulate_grad_batches
        if gradient_clip_val is not None and (isinstance(gradient_clip_val, bool) or
                                              not isinstance(gradient_clip_val, (int, float))):
            raise TypeError(f"`gradient_clip_val` should be an int or a float. Got {gradient_clip_val!r}.")
        if gradient_clip_algorithm is not None and (not isinstance(gradient_clip_algorithm, str) or
                                                    gradient_clip_algorithm.lower() not in ("norm", "value")):
            raise MisconfigurationException(
                f"`gradient_clip_algorithm` {gradient_clip_algorithm!r} is invalid. Allowed algorithms: "
                "['value', 'norm'].")
        self.gradient_clip_val = gradient_clip_val
        # None means "norm" at clipping time, as in Lightning
        self.gradient_clip_algorithm = gradient_clip_algorithm.lower() if gradient_clip_algorithm else None
        if not isinstance(reload_dataloaders_every_n_epochs, int) or reload_dataloaders_every_n_epochs < 0:
            raise MisconfigurationException(
                f"`reload_dataloaders_every_n_epochs` should be an int >= 0, got {reload_dataloaders_every_n_epochs!r}.")
        self.reload_dataloaders_every_n_epochs = reload_dataloaders_every_n_epochs
        self.inference_mode = inference_mode
        self.detect_anomaly = detect_anomaly
        self.enable_autolog_hparams = enable_autolog_hparams
        self.profiler = select_profiler(profiler)
        if deterministic not in (None, True, False, "warn"):
            raise MisconfigurationException(f"`deterministic={deterministic!r}`: expected True, False, 'warn' or None")
        self.deterministic = deterministic
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=deterministic == "warn")
            benchmark = False if benchmark is None else benchmark
        if benchmark is not None:
            torch.backends.cudnn.benchmark = benchmark
        self.benchmark = benchmark
        if self.fast_dev_run:
            n = int(self.fast_dev_run)
            if self.overfit_batches <= 0:
                self.limit_train_batches = self.limit_val_batches = n
            self.limit_test_batches = self.limit_predict_batches = n
            self.max_steps, self.max_epochs = n, 1
            self.num_sanity_val_steps = 0
            self.val_check_interval, self.check_val_every_n_epoch = 1.0, 1
            self._val_check_seconds = None  # time is not applicable in fast_dev_run

        # --- where things go ----------------------------------------------------------------------------
        self._default_root_dir = os.fspath(default_root_dir) if default_root_dir is not None else None
        self.loggers = build_loggers(logger, self.default_root_dir, self.fast_dev_run)
        self.callbacks = build_callbacks(callbacks, enable_checkpointing, enable_progress_bar,
                                               enable_model_summary, max_time)

        # --- run state ------------------------------------------------------------------------------------
        self.state = TrainerState()
        self._state = TrainState()
        self._metrics = MetricsConnector(self)
        self._train_store = ResultStore(training=True, runtime=self._runtime)
        self._eval_log_steps: dict[tuple, int] = {}
        self._model: Any = None
        self._lightning_module: Any = None
        self.datamodule: Any = None
        self.optimizers: list[Any] = []
        self._lightning_optimizers: list[LightningOptimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self._hooks: HookDispatcher | None = None
        self._engine: Loop | None = None
        self.sanity_checking = False
        self.ckpt_path: str | None = None
        self._reset_data()

    # ------------------------------------------------------------------------------------------------------
    # properties users read
    # ------------------------------------------------------------------------------------------------------
    @property
    def default_root_dir(self) -> str:
        return self._default_root_dir if self._default_root_dir is not None else os.getcwd()

    @property
    def lightning_module(self) -> Any:
        return self._lightning_module

    @property
    def model(self) -> Any:
        return self._model

    @property
    def precision(self) -> str:
        return self._precision_name

    @property
    def precision_plugin(self) -> Precision:
        return self._precision

    @property
    def scaler(self) -> Any:
        return self._precision.scaler

    @property
    def accelerator(self) -> str:
        return self._accelerator_flag

    @property
    def num_nodes(self) -> int:
        return self._num_nodes

    @property
    def num_devices(self) -> int:
        return len(self._device_ids)

    @property
    def device_ids(self) -> list[int]:
        return list(self._device_ids)

    @property
    def global_rank(self) -> int:
        return self._runtime.global_rank

    @property
    def local_rank(self) -> int:
        return self._runtime.local_rank

    @property
    def node_rank(self) -> int:
        return self._runtime.node_rank

    @property
    def world_size(self) -> int:
        return self._runtime.world_size

    @property
    def is_global_zero(self) -> bool:
        return self._runtime.global_rank == 0

    @property
    def current_epoch(self) -> int:
        return self._state.current_epoch

    @property
    def global_step(self) -> int:
        return self._state.global_step

    @property
    def _logger_step(self) -> int:
        return self._state.batches_that_stepped

    @property
    def should_stop(self) -> bool:
        return self._state.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self._state.should_stop = value

    @property
    def is_last_batch(self) -> bool:
        return self._state.is_last_batch

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        return self._metrics.views()[0]

    @property
    def logged_metrics(self) -> dict[str, torch.Tensor]:
        return self._metrics.views()[1]

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        return self._metrics.views()[2]

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

    @property
    def checkpoint_callbacks(self) -> list[Checkpoint]:
        return [cb for cb in self.callbacks if isinstance(cb, Checkpoint)]

    @property
    def checkpoint_callback(self) -> Checkpoint | None:
        cbs = self.checkpoint_callbacks
        return cbs[0] if cbs else None

    @property
    def early_stopping_callbacks(self) -> list[Callback]:
        from raylit import callbacks as cbs

        es = getattr(cbs, "EarlyStopping", None)
        return [cb for cb in self.callbacks if es is not None and isinstance(cb, es)]

    @property
    def early_stopping_callback(self) -> Callback | None:
        cbs = self.early_stopping_callbacks
        return cbs[0] if cbs else None

    @property
    def progress_bar_callback(self) -> Callback | None:
        from raylit import callbacks as cbs

        pb = getattr(cbs, "ProgressBar", None)
        return next((cb for cb in self.callbacks if pb is not None and isinstance(cb, pb)), None)

    @property
    def training(self) -> bool:
        return self.state.stage == RunningStage.TRAINING

    @training.setter
    def training(self, value: bool) -> None:
        if value:
            self.state.stage = RunningStage.TRAINING
        elif self.training:
            self.state.stage = None

    @property
    def validating(self) -> bool:
        return self.state.stage == RunningStage.VALIDATING

    @validating.setter
    def validating(self, value: bool) -> None:
        if value:
            self.state.stage = RunningStage.VALIDATING
        elif self.validating:
            self.state.stage = None

    @property
    def testing(self) -> bool:
        return self.state.stage == RunningStage.TESTING

    @property
    def predicting(self) -> bool:
        return self.state.stage == RunningStage.PREDICTING

    @property
    def sanity_checking(self) -> bool:
        return self.state.stage == RunningStage.SANITY_CHECKING

    @sanity_checking.setter
    def sanity_checking(self, value: bool) -> None:
        if value:
            self.state.stage = RunningStage.SANITY_CHECKING
        elif self.sanity_checking:
            self.state.stage = None

    @property
    def evaluating(self) -> bool:
        return self.state.stage in (RunningStage.VALIDATING, RunningStage.TESTING)

    @property
    def interrupted(self) -> bool:
        return self.state.status == TrainerStatus.INTERRUPTED

    @property
    def received_sigterm(self) -> bool:
        return False

    @property
    def train_dataloader(self) -> Any:
        return self._train_loader

    @property
    def val_dataloaders(self) -> Any:
        return _single_or_list(self._val_loaders)

    @property
    def test_dataloaders(self) -> Any:
        return _single_or_list(self._test_loaders)

    @property
    def predict_dataloaders(self) -> Any:
        return _single_or_list(self._predict_loaders)

    @property
    def num_training_batches(self) -> int | float:
        return self._num_training_batches

    @property
    def num_val_batches(self) -> list[int | float]:
        return self._eval_limits("validate") if self._val_loaders is not None else []

    @property
    def num_sanity_val_batches(self) -> list[int | float]:
        return [min(self.num_sanity_val_steps, n) for n in self.num_val_batches]

    @property
    def num_test_batches(self) -> list[int | float]:
        return self._eval_limits("test") if self._test_loaders is not None else []

    @property
    def num_predict_batches(self) -> list[int | float]:
        return self._eval_limits("predict") if self._predict_loaders is not None else []

    @property
    def val_check_batch(self) -> int | float | None:
        return self._val_check_batch

    @property
    def estimated_stepping_batches(self) -> int | float:
        """Optimizer steps the whole fit will take (for OneCycleLR-style schedulers)."""
        if self.max_epochs == -1:
            return math.inf if self.max_steps == -1 else self.max_steps
        if self._train_loader is None and self._hooks is not None:
            self._load_train_data()
        n = self._num_training_batches
        if n == math.inf:
            return self.max_steps
        total = math.ceil(n / self.accumulate_grad_batches) * max(self.max_epochs, 1)
        return min(total, self.max_steps) if self.max_steps != -1 else total

    # ------------------------------------------------------------------------------------------------------
    # entry points
    # ------------------------------------------------------------------------------------------------------
    def fit(self, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None, datamodule: Any = None,
            ckpt_path: Any = None, weights_only: bool | None = None) -> None:
        from raylit.datamodule import LightningDataModule

        if isinstance(train_dataloaders, LightningDataModule):
            if datamodule is not None:
                raise MisconfigurationException("You passed a LightningDataModule twice (train_dataloaders and "
                                                "datamodule)")
            datamodule, train_dataloaders = train_dataloaders, None
        if datamodule is not None and (train_dataloaders is not None or val_dataloaders is not None):
            raise MisconfigurationException(
                "You cannot pass `train_dataloader` or `val_dataloaders` to `trainer.fit(datamodule=...)`")
        return self._dispatch("fit", model, dict(train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders,
                                                 datamodule=datamodule, ckpt_path=ckpt_path,
                                                 weights_only=weights_only))

    def validate(self, model: Any = None, dataloaders: Any = None, ckpt_path: Any = None, verbose: bool = True,
                 datamodule: Any = None, weights_only: bool | None = None) -> list[dict[str, float]]:
        return self._dispatch("validate", model, self._eval_kwargs(dataloaders, datamodule, ckpt_path, weights_only,
                                                                   verbose=verbose))

    def test(self, model: Any = None, dataloaders: Any = None, ckpt_path: Any = None, verbose: bool = True,
             datamodule: Any = None, weights_only: bool | None = None) -> list[dict[str, float]]:
        return self._dispatch("test", model, self._eval_kwargs(dataloaders, datamodule, ckpt_path, weights_only,
                                                               verbose=verbose))

    def predict(self, model: Any = None, dataloaders: Any = None, datamodule: Any = None,
                return_predictions: bool | None = None, ckpt_path: Any = None,
                weights_only: bool | None = None) -> list | None:
        return self._dispatch("predict", model, self._eval_kwargs(
            dataloaders, datamodule, ckpt_path, weights_only,
            return_predictions=True if return_predictions is None else return_predictions))

    @staticmethod
    def _eval_kwargs(dataloaders: Any, datamodule: Any, ckpt_path: Any, weights_only: Any, **extra: Any) -> dict:
        from raylit.datamodule import LightningDataModule

        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        if dataloaders is not None and datamodule is not None:
            raise MisconfigurationException("You cannot pass both `dataloaders` and `datamodule`")
        return dict(dataloaders=dataloaders, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=weights_only,
                    **extra)

    def _dispatch(self, fn: str, model: Any, kwargs: dict) -> Any:
        from raylit.module import LightningModule

        if model is None:
            model = self._lightning_module
            if model is None:
                raise TypeError(f"`Trainer.{fn}()` requires a `LightningModule` when it hasn't been passed in a "
                                "previous run")
            kwargs["_model_given"] = False
        elif not isinstance(model, LightningModule):
            raise TypeError(f"`model` must be a `raylit.LightningModule`, got `{type(model).__qualname__}`")
        if self._uses_ray():
            from raylit.launch.ray import launch

            return launch(self, fn, model, kwargs)
        return self._run(fn, model, **kwargs)

    def _uses_ray(self) -> bool:
        return self._runtime.world_size == 1 and (self._num_workers > 1 or self._scaling_config is not None) \
            and not getattr(self, "_on_worker", False)

    # ------------------------------------------------------------------------------------------------------
    # the run: setup → stage → teardown (Lightning's order; see raylit/hooks.py)
    # ------------------------------------------------------------------------------------------------------
    def _run(self, fn: str, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None,
             dataloaders: Any = None, datamodule: Any = None, ckpt_path: Any = None, weights_only: bool | None = None,
             verbose: bool = True, return_predictions: bool = True, _model_given: bool = True) -> Any:
        self.state = TrainerState(status=TrainerStatus.RUNNING, fn=TrainerFn(fn))
        self._attach(model, datamodule, fn, train_dataloaders, val_dataloaders, dataloaders)
        if not isinstance(self.profiler, PassThroughProfiler):  # the report goes to log_dir unless given a dirpath
            self.profiler.setup(fn, local_rank=self.local_rank if self.world_size > 1 else None, log_dir=self.log_dir)
        self.state.stage = {"fit": RunningStage.TRAINING, "validate": RunningStage.VALIDATING,
                            "test": RunningStage.TESTING, "predict": RunningStage.PREDICTING}[fn]
        hooks = self._hooks
        try:
            result = self._setup_and_run(fn, ckpt_path if ckpt_path is not None else self.ckpt_path,
                                         weights_only, verbose, return_predictions, _model_given)
            self._teardown(fn, "success")
            self.state.status = TrainerStatus.FINISHED
            return result
        except BaseException as exc:
            self.state.status = TrainerStatus.INTERRUPTED
            hooks.callbacks_hook("on_exception", exc)
            if datamodule is not None:
                hooks.datamodule_hook("on_exception", exc)
            # as in Lightning: no teardown hooks after a failure, but loggers are closed as "failed"
            self._model = self._lightning_module
            if self.is_global_zero:
                for lg in self.loggers:
                    lg.finalize("failed")
            if isinstance(exc, KeyboardInterrupt):
                # Lightning's behaviour: a Ctrl-C ends the program with exit code 1 once the hooks have run
                raise SystemExit(1) from exc
            raise
        finally:
            self.state.stage = None

    def _attach(self, model: Any, datamodule: Any, fn: str, train_dataloaders: Any, val_dataloaders: Any,
                dataloaders: Any) -> None:
        model.trainer = self
        self._lightning_module = model
        self._model = model
        self.datamodule = datamodule
        if datamodule is not None:
            datamodule.trainer = self
        self._reset_data()
        self._data_args = {"train": train_dataloaders, "validate": val_dataloaders if fn == "fit" else dataloaders,
                           "test": dataloaders if fn == "test" else None,
                           "predict": dataloaders if fn == "predict" else None}
        self._metrics.reset_views()
        self._train_store = ResultStore(training=True, runtime=self._runtime)
        if fn == "fit":
            self._state = TrainState()
        self._eval_log_steps = {k: v for k, v in self._eval_log_steps.items() if k[0] != fn}
        self._hooks = HookDispatcher(model, datamodule, self.callbacks, self)

    def _setup_and_run(self, fn: str, ckpt_path: Any, weights_only: bool | None, verbose: bool,
                       return_predictions: bool, model_given: bool) -> Any:
        hooks, module, runtime = self._hooks, self._lightning_module, self._runtime
        self._merge_model_callbacks()
        hooks = self._hooks
        if runtime.local_rank == 0:
            hooks.datamodule_hook("prepare_data")
            hooks.module_hook("prepare_data")
        runtime.barrier("prepare_data")
        hooks.datamodule_hook("setup", fn)
        hooks.callbacks_hook("setup", fn)
        hooks.module_hook("setup", fn)
        from raylit.module import LightningModule

        if is_overridden(module, "configure_model", LightningModule):
            with self._precision.init_context():
                hooks.module_hook("configure_model")
        if self._precision.device != runtime.device:  # e.g. built on a CPU driver, running on a GPU worker
            self._precision = Precision(self._precision_name, runtime.device)
        path = ckpt_io.resolve_ckpt_path(self, ckpt_path, fn, model_given)
        checkpoint = ckpt_io.load_checkpoint_file(path, weights_only=weights_only) if path else None
        if checkpoint is not None:
            ckpt_io.restore_model_and_callbacks(self, checkpoint)
        module.to(runtime.device)
        self._precision.convert_module(module)
        if fn == "fit":
            self._model = runtime.wrap_model(
                module, find_unused_parameters=self.strategy.name.endswith("find_unused_parameters_true"))
            self._configure_optimizers()
            hooks.both("on_fit_start")
        self._log_hyperparams()
        if checkpoint is not None and fn == "fit":
            ckpt_io.restore_training_state(self, checkpoint)
        runtime.barrier("run-stage")
        module.zero_grad()
        self._engine = loop = Loop(self)
        if fn == "fit":
            self.training = True
            with torch.autograd.set_detect_anomaly(self.detect_anomaly):
                loop.run_fit()
            return None
        if fn in ("validate", "test"):
            self.state.stage = RunningStage.VALIDATING if fn == "validate" else RunningStage.TESTING
            results = loop.run_evaluation(fn)
            if verbose and self.is_global_zero and results:
                _print_results(results, fn)
            return results
        self.state.stage = RunningStage.PREDICTING
        return loop.run_predict(return_predictions)

    def _teardown(self, fn: str, status: str) -> None:
        hooks, module = self._hooks, self._lightning_module
        if fn == "fit" and status == "success":
            module_device = module.device
            if module_device.type != "cpu":
                module.to("cpu")
            self._model = module
            hooks.both("on_fit_end")
        else:
            self._model = module
        hooks.datamodule_hook("teardown", fn)
        hooks.callbacks_hook("teardown", fn)
        hooks.module_hook("teardown", fn)
        if self.is_global_zero:
            for lg in self.loggers:
                lg.finalize(status)
        self.profiler.describe()  # the profiler's report, after the teardown hooks (as in Lightning)

    def _merge_model_callbacks(self) -> None:
        extra = self._hooks.module_hook("configure_callbacks")
        if not extra:
            return
        extra = [extra] if isinstance(extra, Callback) else list(extra)
        types = {type(cb) for cb in extra}
        kept = [cb for cb in self.callbacks if not any(isinstance(cb, t) for t in types)]
        self.callbacks = reorder_callbacks(kept + extra)
        self._hooks = HookDispatcher(self._lightning_module, self.datamodule, self.callbacks, self)

    def _configure_optimizers(self) -> None:
        module = self._lightning_module
        for removed in ("training_epoch_end", "validation_epoch_end", "test_epoch_end"):
            if callable(getattr(module, removed, None)):
                hook = {"training_epoch_end": "on_train_epoch_end", "validation_epoch_end":
                        "on_validation_epoch_end", "test_epoch_end": "on_test_epoch_end"}[removed]
                raise NotImplementedError(
                    f"Support for `{removed}` has been removed in v2.0.0. `{type(module).__name__}` implements this "
                    f"method. You can use the `{hook}` hook instead. To access outputs, save them in-memory as "
                    "instance attributes.")
        out = self._hooks.module_hook("configure_optimizers")
        self.optimizers, self.lr_scheduler_configs = normalize_configure_optimizers(
            out, module.automatic_optimization)
        if not self.optimizers:
            # like Lightning: the loop still runs (and counts steps) with an optimizer that does nothing
            self.optimizers = [_MockOptimizer()]
        if not module.automatic_optimization and self.gradient_clip_val:
            raise MisconfigurationException(
                "Automatic gradient clipping is not supported for manual optimization. Remove "
                f"`Trainer(gradient_clip_val={self.gradient_clip_val})` or switch to automatic optimization.")
        if not module.automatic_optimization and self.accumulate_grad_batches != 1:
            raise MisconfigurationException(
                "Automatic gradient accumulation is not supported for manual optimization. Remove "
                f"`Trainer(accumulate_grad_batches={self.accumulate_grad_batches})` or switch to automatic "
                "optimization.")
        self._lightning_optimizers = [LightningOptimizer(o, self._engine_proxy) for o in self.optimizers]

    @property
    def _engine_proxy(self) -> Any:
        trainer = self

        class _Proxy:
            def optimizer_step(self, lopt: Any, closure: Any, **kwargs: Any) -> Any:
                return trainer._engine.optimizer_step(lopt, closure, **kwargs)

        return _Proxy()

    def _log_hyperparams(self) -> None:
        if not self.loggers or not self.enable_autolog_hparams:
            return
        module, dm = self._lightning_module, self.datamodule
        hparams = None
        module_log = module._log_hyperparams and bool(getattr(module, "_hparams", None))
        dm_log = dm is not None and dm._log_hyperparams and bool(getattr(dm, "_hparams", None))
        if module_log and dm_log:
            a, b = dict(module.hparams_initial), dict(dm.hparams_initial)
            clash = [k for k in set(a) & set(b) if a[k] != b[k]]
            if clash:
                raise RuntimeError(f"Error while merging hparams: the keys {clash} are present in both the "
                                   "LightningModule's and LightningDataModule's hparams but have different values.")
            hparams = {**a, **b}
        elif module_log:
            hparams = module.hparams_initial
        elif dm_log:
            hparams = dm.hparams_initial
        if not self.is_global_zero:
            return
        for lg in self.loggers:
            if hparams is not None:
                lg.log_hyperparams(hparams)
            lg.log_graph(module)
            lg.save()

    # ------------------------------------------------------------------------------------------------------
    # data
    # ------------------------------------------------------------------------------------------------------
    def _reset_data(self) -> None:
        self._train_loader: Any = None
        self._val_loaders: list | None = None
        self._test_loaders: list | None = None
        self._predict_loaders: list | None = None
        self._num_training_batches: int | float = math.inf
        self._val_check_batch: int | float = math.inf
        self._last_train_load_epoch = 0
        self._last_val_load_epoch = 0
        self._data_args: dict[str, Any] = {}
        self._val_enabled: bool | None = None

    def _data_source_defined(self, stage: str) -> bool:
        if self._data_args.get(stage) is not None:
            return True
        hook = {"train": "train_dataloader", "validate": "val_dataloader", "test": "test_dataloader",
                "predict": "predict_dataloader"}[stage]
        from raylit.datamodule import LightningDataModule
        from raylit.module import LightningModule

        if self.datamodule is not None and is_overridden(self.datamodule, hook, LightningDataModule):
            return True
        return is_overridden(self._lightning_module, hook, LightningModule)

    def _request_loaders(self, stage: str) -> Any:
        given = self._data_args.get(stage)
        if given is not None:
            return given
        hook = {"train": "train_dataloader", "validate": "val_dataloader", "test": "test_dataloader",
                "predict": "predict_dataloader"}[stage]
        from raylit.datamodule import LightningDataModule

        if self.datamodule is not None and is_overridden(self.datamodule, hook, LightningDataModule):
            return self._hooks.datamodule_hook(hook)
        return self._hooks.module_hook(hook)

    def _prepare_loader(self, loader: Any, stage: str) -> Any:
        if os.environ.get("PL_SEED_WORKERS") == "1":
            from raylit.utilities.seed import add_worker_init_fn

            add_worker_init_fn(loader, self.global_rank)
        overfit = self.overfit_batches > 0 and stage in ("train", "val")
        if overfit:
            loader = without_shuffle(loader)
        if self.use_distributed_sampler and self._runtime.distributed:
            loader = self._runtime.setup_dataloader(loader, stage, shuffle=False if overfit else None)
        return loader

    def _load_train_data(self) -> None:
        if not self._data_source_defined("train"):
            raise MisconfigurationException(
                "No `train_dataloader()` method defined. Lightning `Trainer` expects as minimum a `training_step()`, "
                "`train_dataloader()` and `configure_optimizers()` to be defined.")
        loader = self._prepare_loader(as_train_loader(self._request_loaders("train")), "train")
        self._train_loader = loader
        self._last_train_load_epoch = self._state.current_epoch
        self._num_training_batches = limit_batches(loader, self.limit_train_batches, "train")
        interval = self.val_check_interval
        n = self._num_training_batches
        if self._val_check_seconds is not None:
            # time-based: validation when the interval has passed since the training data was loaded or since
            # the last validation ended (not at every epoch end); rank 0's clock decides for every rank
            self._val_check_batch = None
            self._val_deadline = SharedDeadline(self._val_check_seconds)
        elif isinstance(interval, int):
            if n != math.inf and interval > n and self.check_val_every_n_epoch is not None:
                raise ValueError(
                    f"`val_check_interval` ({interval}) must be less than or equal to the number of the training "
                    f"batches ({n}). If you want to disable validation set `limit_val_batches` to 0.0 instead. If you "
                    "want to validate based on the total training batches, set `check_val_every_n_epoch=None`.")
            self._val_check_batch = interval
        elif n == math.inf:
            if interval != 1.0:
                raise MisconfigurationException("When using an IterableDataset without `__len__`, "
                                                "`val_check_interval` must be 1.0 or an int.")
            self._val_check_batch = math.inf
        else:
            self._val_check_batch = max(1, int(n * interval))

    def _maybe_reload_train_data(self) -> None:
        n = self.reload_dataloaders_every_n_epochs
        if self._train_loader is None or (n and self.current_epoch - self._last_train_load_epoch >= n):
            self._load_train_data()

    def _should_reload_val_data(self) -> bool:
        n = self.reload_dataloaders_every_n_epochs
        return bool(n) and self.state.fn == TrainerFn.FITTING and \
            self.current_epoch - self._last_val_load_epoch >= n

    def _load_eval_data(self, fn: str) -> list:
        if fn != "fit" and not self._data_source_defined(fn):
            if fn == "validate" and self.state.fn == TrainerFn.FITTING:
                return []
            hook = {"validate": "val_dataloader", "test": "test_dataloader", "predict": "predict_dataloader"}[fn]
            raise MisconfigurationException(f"No `{hook}()` method defined to run `Trainer.{fn}`.")
        stage = {"validate": "val", "test": "test", "predict": "predict"}[fn]
        loaders = [self._prepare_loader(dl, stage) for dl in as_eval_list(self._request_loaders(fn))]
        if fn == "validate":
            self._val_loaders = loaders
            self._last_val_load_epoch = self.current_epoch
        elif fn == "test":
            self._test_loaders = loaders
        else:
            self._predict_loaders = loaders
        return loaders

    def _eval_limits(self, fn: str) -> list[int | float]:
        loaders, limit, name = {
            "validate": (self._val_loaders, self.limit_val_batches, "val"),
            "test": (self._test_loaders, self.limit_test_batches, "test"),
            "predict": (self._predict_loaders, self.limit_predict_batches, "predict"),
        }[fn]
        return [limit_batches(dl, limit, name) for dl in (loaders or [])]

    def _validation_enabled(self) -> bool:
        if self._val_enabled is None:
            self._val_enabled = self._compute_validation_enabled()
        return self._val_enabled

    def _compute_validation_enabled(self) -> bool:
        from raylit.module import LightningModule

        return self.limit_val_batches != 0 and self._data_source_defined("validate") and \
            is_overridden(self._lightning_module, "validation_step", LightningModule)

    def _should_sanity_check(self) -> bool:
        return self._validation_enabled() and self.num_sanity_val_steps > 0 and \
            (self._state.pending_resume is None or self._state.epoch_batches == 0)

    def _should_validate(self, batch_idx: int, is_last: bool, total_batches: int) -> bool:
        if not self._validation_enabled():
            return False
        every = self.check_val_every_n_epoch
        if every is not None and (self.current_epoch + 1) % every != 0:
            return False
        vcb = self._val_check_batch
        if is_last and vcb == math.inf:
            return True
        if self.should_stop and self._engine._can_stop_early():
            return True
        if self._val_deadline is not None:
            return self._val_deadline.due(total_batches, self.strategy)
        if isinstance(self.limit_train_batches, int) and vcb == math.inf:
            return (batch_idx + 1) % self.limit_train_batches == 0
        if vcb != math.inf:
            current = total_batches - 1 if every is None else batch_idx
            return (current + 1) % vcb == 0
        return is_last

    def _should_log_step(self) -> bool:
        n = self.log_every_n_steps
        if n == 0:
            return False
        return (self._state.batches_that_stepped + 1) % n == 0 or self.should_stop

    # ------------------------------------------------------------------------------------------------------
    # checkpoints and results
    # ------------------------------------------------------------------------------------------------------
    def save_checkpoint(self, filepath: str | os.PathLike, weights_only: bool = False,
                        storage_options: Any = None) -> None:
        """Write a Lightning-format checkpoint. Call on every rank: global rank 0 writes, atomically."""
        if self._lightning_module is None:
            raise AttributeError("Saving a checkpoint is only possible if a model is attached to the Trainer. Did "
                                 "you call `Trainer.save_checkpoint()` before calling `Trainer.{fit,validate,test,"
                                 "predict}`?")
        if storage_options is not None:
            raise TypeError("`Trainer.save_checkpoint(..., storage_options=...)` is not supported")
        checkpoint = ckpt_io.dump_checkpoint(self, weights_only)
        if self.is_global_zero:
            from raylit import fs

            fs.save_torch(checkpoint, os.fspath(filepath))
        self._runtime.barrier("save_checkpoint")

    def _resume_state(self) -> dict[str, Any]:
        """raylit's checkpoint entry. Every rank's RNG streams are gathered (a collective, like the save
        itself), so each rank continues its own streams after a restore."""
        state = self._state.resume_state()
        per_rank = self._runtime.all_gather_object((state["rng"], state["epoch_start_rng"]))
        state["rng_per_rank"] = [r for r, _ in per_rank]
        state["epoch_start_rng_per_rank"] = [e for _, e in per_rank]
        return state

    def _export_results(self) -> dict[str, Any]:
        """What a worker sends back to the driver when a run ends (picklable, tensors on CPU)."""
        module = self._lightning_module
        to_cpu = lambda d: {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in d.items()}  # noqa
        state = {k: getattr(self._state, k) for k in ("current_epoch", "global_step", "batches_that_stepped",
                                                       "total_batches", "should_stop")}
        return {
            "state_dict": to_cpu(module.state_dict()),
            "callback_metrics": to_cpu(self.callback_metrics),
            "logged_metrics": to_cpu(self.logged_metrics),
            "progress_bar_metrics": dict(self.progress_bar_metrics),
            "state": state,
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_dict()},
        }

    def _import_results(self, results: dict[str, Any], model: Any) -> None:
        model.load_state_dict(results["state_dict"])
        model.trainer = self
        self._lightning_module = self._model = model
        self._metrics.callback_metrics = dict(results["callback_metrics"])
        self._metrics.logged_metrics = dict(results["logged_metrics"])
        self._metrics.progress_bar_metrics = dict(results["progress_bar_metrics"])
        self._metrics.store = None
        for k, v in results["state"].items():
            setattr(self._state, k, v)
        states = results.get("callbacks", {})
        for cb in self.callbacks:
            if cb.state_key in states:
                state = states[cb.state_key]
                # directories are resolved in setup() on the worker; take them over before the state, so
                # callbacks that compare them (ModelCheckpoint) restore everything
                if getattr(cb, "dirpath", "") is None and state.get("dirpath") is not None:
                    cb.dirpath = state["dirpath"]
                cb.load_state_dict(state)

    # ------------------------------------------------------------------------------------------------------
    # misc
    # ------------------------------------------------------------------------------------------------------
    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.local_rank == 0:
            print(*args, **kwargs)

    @contextmanager
    def init_module(self, empty_init: bool | None = None) -> Iterator[None]:
        """Create the module's parameters directly in the precision's dtype (on CPU; moved at fit)."""
        with self._precision.init_context():
            yield

    def _clone(self, **overrides: Any) -> "Trainer":
        """A new Trainer with the same constructor arguments, except ``overrides``."""
        return Trainer(**{**self._init_kwargs, **overrides})

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # run-time objects are rebuilt on the worker
        for k in ("_hooks", "_engine", "_model", "_lightning_module", "datamodule", "optimizers",
                  "_lightning_optimizers", "lr_scheduler_configs", "_train_loader", "_val_loaders", "_test_loaders",
                  "_predict_loaders", "_data_args"):
            state[k] = [] if k in ("optimizers", "_lightning_optimizers", "lr_scheduler_configs") else None
        state["_data_args"] = {}
        return state


class _MockOptimizer(torch.optim.Optimizer):
    """Stands in when ``configure_optimizers`` returns None."""

    def __init__(self) -> None:
        super().__init__([torch.zeros(1)], {})

    def add_param_group(self, param_group: dict) -> None:
        pass  # it optimizes nothing: no param groups

    def load_state_dict(self, state_dict: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def step(self, closure: Any = None) -> Any:
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def __repr__(self) -> str:
        return "No Optimizer"


def _single_or_list(loaders: list | None) -> Any:
    if loaders is None:
        return None
    return loaders[0] if len(loaders) == 1 else loaders


def _print_results(results: list[dict[str, float]], fn: str) -> None:
    keys = sorted({k for r in results for k in r})
    if not keys:
        return
    header = f"{fn.capitalize()} metric"
    width = max(len(header), *(len(k) for k in keys))
    cols = [f"DataLoader {i}" for i in range(len(results))]
    line = "─" * (width + 2 + sum(len(c) + 3 for c in cols))
    print(line)
    print(f"{header:<{width}}  " + "   ".join(cols))
    print(line)
    for k in keys:
        vals = "   ".join(f"{results[i][k]:<{len(c)}.6g}" if isinstance(results[i].get(k), float) else
                         f"{str(results[i].get(k, '')):<{len(c)}}" for i, c in enumerate(cols))
        print(f"{k:<{width}}  {vals}")
    print(line)


def _val_check_seconds(value: Any) -> float | None:
    """Seconds of a time-based ``val_check_interval`` ("DD:HH:MM:SS", a timedelta, or a dict of timedelta
    arguments); None for a batch count or fraction."""
    if not isinstance(value, (str, dict, timedelta)):
        return None
    try:
        if isinstance(value, str):
            days, hours, minutes, seconds = (int(part) for part in value.split(":"))
            value = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        elif isinstance(value, dict):
            value = timedelta(**value)
    except (TypeError, ValueError) as err:
        raise MisconfigurationException(
            f"`val_check_interval={value!r}` is not a valid time interval: expected 'DD:HH:MM:SS' (integers), a "
            "datetime.timedelta, or a dict of timedelta arguments such as {'minutes': 30}.") from err
    if value.total_seconds() < 0:
        raise MisconfigurationException(f"`val_check_interval={value!r}`: a time interval must not be negative.")
    return value.total_seconds()
