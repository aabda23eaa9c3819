"""Run: one ``fit`` / ``validate`` / ``test`` / ``predict`` call, and everything it owns.

A ``Run`` is built from a ``RunSpec`` (what the user handed the Trainer) and a ``Runtime`` (where it executes:
in-process, or one Ray worker of several). It owns the module and datamodule for the call, the hook
dispatcher, the precision (built once, for the runtime's device), the progress state, the metrics, the
optimizers and the loaders, and runs Lightning's sequence: setup → the stage (``raylit/loop.py``) → teardown.
The ``Trainer`` object users and callbacks hold is a view: its properties read the current run.
"""

import inspect
from typing import Any

import torch

from raylit import checkpoint as ckpt_io
from raylit.callbacks.base import Callback, running_module
from raylit.callbacks.timer import Timer
from raylit.evaluation import run_evaluation, run_predict
from raylit.hooks import HookDispatcher, prepares_data
from raylit.loaders import Loaders
from raylit.loop import Loop
from raylit.loops import evaluation_loop
from raylit.loops.progress import EvalCounter
from raylit.metrics import MetricsConnector
from raylit.module import LightningModule
from raylit.optim import LightningOptimizer, is_torch_scheduler, normalize_configure_optimizers
from raylit.precision import Precision
from raylit.profilers import PassThroughProfiler
from raylit.profilers._hooks import ProfiledHookDispatcher
from raylit.result_store import ResultStore
from raylit.state import RunningStage, TrainerFn, TrainerState, TrainerStatus, TrainState
from raylit.trainer_args import reorder_callbacks
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.model_helpers import is_overridden, overrides
from raylit.utilities.rank_zero import rank_zero_warn
from raylit.utilities.warnings import PossibleUserWarning

_STAGES = {"fit": RunningStage.TRAINING, "validate": RunningStage.VALIDATING, "test": RunningStage.TESTING,
           "predict": RunningStage.PREDICTING}


class Run:
    def __init__(self, spec: Any, runtime: Any, trainer: Any, previous: "Run | None" = None) -> None:
        self.spec, self.runtime, self.trainer, self.fn = spec, runtime, trainer, spec.fn
        self.module = spec.module
        self.datamodule = spec.datamodule
        self.model = spec.module  # what steps are called through: the DDP/FSDP-wrapped module during fit
        self.precision = Precision(trainer.config.precision, runtime.device)
        self.status = TrainerState(status=TrainerStatus.RUNNING, fn=TrainerFn(spec.fn))
        # fit starts from zero; validate/test/predict after a fit keep its counters (as Lightning's loops do)
        self.state = spec.state if spec.state is not None and spec.fn != "fit" else TrainState()
        self.eval_log_steps = {k: v for k, v in (spec.eval_log_steps or {}).items() if k[0] != spec.fn}
        self.eval_batches = previous.eval_batches if previous is not None else {}  # fn -> EvalCounter
        self.last_epoch_batches = 0  # batches of the last finished epoch (fit_loop's view until the next one)
        self.metrics = MetricsConnector(trainer)
        self.train_store = ResultStore(training=True, runtime=runtime)
        self.optimizers: list[Any] = []
        self.lightning_optimizers: list[LightningOptimizer] = []
        self.lr_scheduler_configs: list[Any] = []
        self.hooks = self._dispatcher()
        self.loaders = Loaders(self, spec.data, previous.loaders if previous is not None else None)
        self.loop = Loop(self)

    @property
    def config(self) -> Any:
        return self.trainer.config  # read live: callbacks may change settings (GradientAccumulationScheduler)

    # --- the call ---------------------------------------------------------------------------------------------
    def execute(self) -> Any:
        """setup → the stage → teardown (Lightning's order, see raylit/hooks.py); returns what the Trainer
        method returns."""
        spec, trainer, status, loop = self.spec, self.trainer, self.status, self.loop
        trainer._run = self
        self.module.trainer = trainer
        if self.datamodule is not None:
            self.datamodule.trainer = trainer
        status.stage = _STAGES[self.fn]
        module_token = running_module.set(self.module)  # Callback.log logs through it
        profiler = trainer.profiler
        if not isinstance(profiler, PassThroughProfiler):  # its report goes to log_dir unless it has a dirpath
            profiler.setup(self.fn, local_rank=self.runtime.local_rank if self.runtime.world_size > 1 else None,
                           log_dir=trainer.log_dir)
        compiled = _compile_steps(self.module, spec.compile) if spec.compile is not None else ()
        try:
            self._setup()
            if self.fn == "fit":
                with torch.autograd.set_detect_anomaly(self.config.detect_anomaly):
                    result = loop.run_fit()
            elif self.fn == "predict":
                result = run_predict(loop, spec.return_predictions)
            else:
                result = run_evaluation(loop, self.fn)
                if spec.verbose and self.runtime.is_global_zero and result:
                    evaluation_loop._EvaluationLoop._print_results(result, self.fn)
            self._teardown("success")
            status.status = TrainerStatus.FINISHED
            return result
        except BaseException as exc:
            status.status = TrainerStatus.INTERRUPTED
            self.hooks.callbacks_hook("on_exception", exc)
            if self.datamodule is not None:
                self.hooks.datamodule_hook("on_exception", exc)
            # as in Lightning: no teardown hooks after a failure, but loggers are closed as "failed"
            self.model = self.module
            if self.runtime.is_global_zero:
                for lg in trainer.loggers:
                    lg.finalize("failed")
            if isinstance(exc, KeyboardInterrupt):
                # Lightning's behaviour: a Ctrl-C ends the program with exit code 1 once the hooks have run
                raise SystemExit(1) from exc
            raise
        finally:
            status.stage = None
            running_module.reset(module_token)
            for name in compiled:  # the user's module is plain again (and picklable for a later Ray run)
                self.module.__dict__.pop(name, None)

    def _setup(self) -> None:
        spec, hooks, module, runtime, fn = self.spec, self.hooks, self.module, self.runtime, self.fn
        if fn == "fit" and self.config.kwargs.get("max_epochs", 0) is None and self.config.max_steps == -1:
            if any(isinstance(cb, Timer) for cb in self.trainer.callbacks):
                self.trainer.max_epochs = -1  # the Timer ends the run
            elif self.config.max_epochs == 1000:
                rank_zero_warn("`max_epochs` was not set. Setting it to 1000 epochs. To train without an epoch "
                               "limit, set `max_epochs=-1`.", category=PossibleUserWarning)
        self._merge_model_callbacks()
        hooks = self.hooks
        for obj, call in ((self.datamodule, hooks.datamodule_hook), (module, hooks.module_hook)):
            if obj is not None and prepares_data(obj, runtime.local_rank, runtime.node_rank):
                call("prepare_data")
        runtime.barrier("prepare_data")
        hooks.datamodule_hook("setup", stage=fn)  # by keyword, as Lightning calls them
        hooks.callbacks_hook("setup", stage=fn)
        hooks.module_hook("setup", stage=fn)
        if is_overridden("configure_model", module, LightningModule):
            with self.precision.init_context():
                hooks.module_hook("configure_model")
        path = ckpt_io.resolve_ckpt_path(self.trainer, spec.ckpt_path, fn, spec.model_given)
        checkpoint = ckpt_io.load_checkpoint_file(path, weights_only=spec.weights_only) if path else None
        if checkpoint is not None:
            ckpt_io.restore_model_and_callbacks(self, checkpoint)
        module.to(runtime.device)
        self.precision.convert_module(module)
        if fn == "fit":
            self.model = runtime.wrap_model(
                module, find_unused_parameters=self.config.strategy_name.endswith("find_unused_parameters_true"))
            self._configure_optimizers()
            hooks.both("on_fit_start")
        self._log_hyperparams()
        if checkpoint is not None and fn == "fit":
            ckpt_io.restore_training_state(self, checkpoint)
        runtime.barrier("run-stage")
        module.zero_grad()

    def _teardown(self, status: str) -> None:
        hooks, module, fn = self.hooks, self.module, self.fn
        self.model = module
        if fn == "fit":
            if module.device.type != "cpu":
                module.to("cpu")
            hooks.both("on_fit_end")
        hooks.datamodule_hook("teardown", stage=fn)
        hooks.callbacks_hook("teardown", stage=fn)
        hooks.module_hook("teardown", stage=fn)
        if self.runtime.is_global_zero:
            for lg in self.trainer.loggers:
                lg.finalize(status)
        self.trainer.profiler.describe()  # the profiler's report, after the teardown hooks (as in Lightning)

    def _merge_model_callbacks(self) -> None:
        extra = self.hooks.module_hook("configure_callbacks")
        if not extra:
            return
        extra = [extra] if isinstance(extra, Callback) else list(extra)
        types = {type(cb) for cb in extra}
        kept = [cb for cb in self.trainer.callbacks if not any(isinstance(cb, t) for t in types)]
        self.trainer.callbacks = reorder_callbacks(kept + extra)
        self.hooks = self._dispatcher()
        self.loop.hooks = self.hooks

    def _dispatcher(self) -> HookDispatcher:
        """The hook dispatcher; with a real profiler, the one that records every hook (raylit/profilers/_hooks.py)."""
        trainer = self.trainer
        profiled = not isinstance(trainer.profiler, PassThroughProfiler)
        cls = ProfiledHookDispatcher if profiled else HookDispatcher
        return cls(self.module, self.datamodule, trainer.callbacks, trainer)

    def _configure_optimizers(self) -> None:
        module, config = self.module, self.config
        for removed, hook in (("training_epoch_end", "on_train_epoch_end"),
                              ("validation_epoch_end", "on_validation_epoch_end"),
                              ("test_epoch_end", "on_test_epoch_end")):
            if callable(getattr(module, removed, None)):
                raise NotImplementedError(
                    f"Support for `{removed}` has been removed in v2.0.0. `{type(module).__name__}` implements this "
                    f"method. You can use the `{hook}` hook instead. To access outputs, save them in-memory as "
                    "instance attributes.")
        if "optimizer_idx" in inspect.signature(module.training_step).parameters:
            raise RuntimeError(
                "Training with multiple optimizers is only supported with manual optimization. Remove the "
                "`optimizer_idx` argument from `training_step`, set `self.automatic_optimization = False` and access "
                "your optimizers in `training_step` with `opt1, opt2, ... = self.optimizers()`.")
        out = self.hooks.module_hook("configure_optimizers")
        self.optimizers, self.lr_scheduler_configs = normalize_configure_optimizers(out, module.automatic_optimization)
        custom_step = overrides(module, "lr_scheduler_step", LightningModule)
        for cfg in self.lr_scheduler_configs:
            if module.automatic_optimization and not custom_step and not is_torch_scheduler(cfg.scheduler):
                raise MisconfigurationException(
                    f"The provided lr scheduler `{type(cfg.scheduler).__name__}` doesn't follow PyTorch's LRScheduler "
                    "API. You should override the `LightningModule.lr_scheduler_step` hook with your own logic if you "
                    "are using a custom LR scheduler.")
        if not self.optimizers:
            # like Lightning: the loop still runs (and counts steps) with an optimizer that does nothing
            self.optimizers = [_MockOptimizer()]
        if not module.automatic_optimization and config.gradient_clip_val:
            raise MisconfigurationException(
                "Automatic gradient clipping is not supported for manual optimization. Remove "
                f"`Trainer(gradient_clip_val={config.gradient_clip_val})` or switch to automatic optimization.")
        if not module.automatic_optimization and config.accumulate_grad_batches != 1:
            raise MisconfigurationException(
                "Automatic gradient accumulation is not supported for manual optimization. Remove "
                f"`Trainer(accumulate_grad_batches={config.accumulate_grad_batches})` or switch to automatic "
                "optimization.")
        self.lightning_optimizers = [LightningOptimizer(o, self.loop) for o in self.optimizers]

    def _log_hyperparams(self) -> None:
        trainer = self.trainer
        if not trainer.loggers or not self.config.enable_autolog_hparams:
            return
        module, dm = self.module, self.datamodule
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
        if not self.runtime.is_global_zero:
            return
        for lg in trainer.loggers:
            if hparams is not None:
                lg.log_hyperparams(hparams)
            lg.log_graph(module)
            lg.save()

    # --- checkpoints and results ------------------------------------------------------------------------------
    def resume_state(self) -> dict[str, Any]:
        """raylit's checkpoint entry. Every rank's RNG streams are gathered (a collective, like the save
        itself), so each rank continues its own streams after a restore."""
        state = self.state.resume_state()
        per_rank = self.runtime.all_gather_object((state["rng"], state["epoch_start_rng"]))
        state["rng_per_rank"] = [r for r, _ in per_rank]
        state["epoch_start_rng_per_rank"] = [e for _, e in per_rank]
        if self.runtime.elastic is not None:  # the unit of the batch counters: micro-batches per optimizer step
            state["elastic"] = self.runtime.elastic.checkpoint_info()
        return state

    def export_results(self) -> dict[str, Any]:
        """What a worker sends back to the driver when a run ends (picklable, tensors on CPU)."""
        to_cpu = lambda d: {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in d.items()}  # noqa
        callback, logged, pbar = self.metrics.views()
        return {
            "state_dict": to_cpu(self.module.state_dict()),
            "callback_metrics": to_cpu(callback),
            "logged_metrics": to_cpu(logged),
            "progress_bar_metrics": dict(pbar),
            "state": {k: getattr(self.state, k) for k in ("current_epoch", "global_step", "batches_that_stepped",
                                                          "total_batches", "should_stop")},
            "num_training_batches": self.loaders.num_training_batches,
            "num_eval_batches": {fn: self.trainer._eval_batches(fn) for fn in ("validate", "test", "predict")},
            "progress": {"eval": {fn: (c.total, c.current) for fn, c in self.eval_batches.items()},
                         "last_epoch_batches": self.last_epoch_batches},
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.trainer.callbacks if cb.state_dict()},
        }

    def adopt(self, results: dict[str, Any]) -> None:
        """On the driver after a Ray run: take over what the workers' rank 0 exported."""
        module, metrics = self.module, self.metrics
        module.load_state_dict(results["state_dict"])
        module.trainer = self.trainer
        self.trainer._run = self
        metrics.callback_metrics = dict(results["callback_metrics"])
        metrics.logged_metrics = dict(results["logged_metrics"])
        metrics.progress_bar_metrics = dict(results["progress_bar_metrics"])
        metrics.store = None
        for k, v in results["state"].items():
            setattr(self.state, k, v)
        self.loaders.num_training_batches = results.get("num_training_batches", self.loaders.num_training_batches)
        self.loaders.reported = {fn: n for fn, n in results.get("num_eval_batches", {}).items() if n}
        progress = results.get("progress", {})
        for fn, (total, current) in progress.get("eval", {}).items():
            counter = self.eval_batches.setdefault(fn, EvalCounter())
            counter.total, counter.current = total, current
        self.last_epoch_batches = progress.get("last_epoch_batches", 0)
        self.status.status = TrainerStatus.FINISHED
        states = results.get("callbacks", {})
        for cb in self.trainer.callbacks:
            if cb.state_key in states:
                state = states[cb.state_key]
                # directories are resolved in setup() on the worker; take them over before the state, so
                # callbacks that compare them (ModelCheckpoint) restore everything
                if getattr(cb, "dirpath", "") is None and state.get("dirpath") is not None:
                    cb.dirpath = state["dirpath"]
                cb.load_state_dict(state)


_COMPILED = ("forward", "training_step", "validation_step", "test_step", "predict_step")


def _compile_steps(module: Any, dynamo_ctx: Any) -> tuple[str, ...]:
    """``trainer.fit(torch.compile(model))``: as in Lightning, the module's ``forward`` and step methods run
    through the compiler context ``torch.compile`` made (its backend and options), while hooks, checkpoints and
    ``state_dict`` keys are the plain module's. Applied here, so on Ray each worker compiles for itself."""
    for name in _COMPILED:
        module.__dict__[name] = dynamo_ctx(getattr(module, name))
    return _COMPILED


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
