"""The training, evaluation and prediction loops: the whole algorithm, as plain code.

``Loop`` belongs to a ``Run`` (raylit/run.py) and mutates only the run's progress state (``run.state``), its
stage and its metric views. It decides *when* things happen — validation, logging, the sanity check, stopping —
next to the loop that does them. It never imports Ray: rank, collectives and DDP come from ``run.runtime``.
See ``raylit/hooks.py`` for the hook order in pseudocode.
"""

import math
import sys
import warnings
from typing import Any

import torch

from raylit.data import lookahead, set_sampler_epoch, train_batches
from raylit.evaluation import run_evaluation
from raylit.hooks import HookDispatcher
from raylit.optim import NONE_IN_DDP, manual_training_output, split_training_output
from raylit.runtime import Runtime
from raylit.state import RunningStage
from raylit.utilities.apply_func import move_data_to_device
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.model_helpers import accepts_arg
from raylit.utilities.seed import isolate_rng, rng_state, set_rng_state

# hooks of a training batch that the step skips outright when neither a callback nor the module overrides them
_BATCH_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_zero_grad", "on_before_backward",
                "on_after_backward", "on_before_optimizer_step")
# torch's own registry of global step pre-hooks (a torch without it: never call the closure before the step)
_OPTIM_PRE_HOOKS = getattr(sys.modules["torch.optim.optimizer"], "_global_optimizer_pre_hooks", {None: None})
_PROBE = (torch.zeros(()),)  # Precision.convert_input returns it unchanged when inputs are not converted


class _StopEpoch(Exception):
    """``on_train_batch_start`` returned -1: end the epoch early."""


class Loop:
    def __init__(self, run: Any) -> None:
        self.run = run
        self.hooks = run.hooks
        self.module = run.module
        self.runtime = run.runtime
        self.precision = run.precision
        self.metrics = run.metrics
        self._step_takes_idx: dict[str, bool] = {}
        self._hooked: dict[str, bool] = {}
        self._default: dict[str, bool] = {}
        self._elastic: Any = None  # the run's ElasticPlan (set per epoch in _cache_decisions)
        self._cpu_batches = False
        self._bare_step = False
        self._eager: Any = None  # the optimizer whose closure may be called before its step (_cache_decisions)

    # --- shared pieces ----------------------------------------------------------------------------------
    def _transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self._cpu_batches and type(batch) in (tuple, list):
            for t in batch:  # the common CPU batch, a tuple/list of CPU tensors: nothing to convert or move
                if type(t) is not torch.Tensor or not t.is_cpu:
                    break
            else:
                return batch
        hooks = self.hooks
        batch = self.precision.convert_input(batch)
        if self._plain_transfer:
            return move_data_to_device(batch, self.runtime.device)
        batch = hooks.data_hook("on_before_batch_transfer", batch, dataloader_idx)
        batch = hooks.data_hook("transfer_batch_to_device", batch, self.runtime.device, dataloader_idx)
        return hooks.data_hook("on_after_batch_transfer", batch, dataloader_idx)

    def _takes_idx(self, name: str) -> bool:
        takes = self._step_takes_idx.get(name)
        if takes is None:
            takes = self._step_takes_idx[name] = accepts_arg(getattr(self.module, name), "batch_idx", 2)
        return takes

    def _step(self, name: str, *args: Any) -> Any:
        """Run a step method (training_step, validation_step, ...) through the runtime (DDP) and precision."""
        if not self._takes_idx(name):
            args = args[:1] + args[2:]
        fx = self.module.__dict__
        prev, fx["_current_fx_name"] = fx["_current_fx_name"], name
        try:
            with self.precision.step_context(), self.hooks.profile_step(name):  # [Strategy]X.{name} when profiled
                return self.runtime.call_step(self.run.model, self.module, name, *args)
        finally:
            fx["_current_fx_name"] = prev

    def _cache_decisions(self) -> None:
        """Per-epoch answers the batch loop asks every step (callbacks may change settings at epoch start)."""
        hooks = self.hooks
        uses_default = hooks.uses_default
        self._default = {name: uses_default(name) for name in (
            "transfer_batch_to_device", "optimizer_step", "optimizer_zero_grad", "backward",
            "configure_gradient_clipping", "on_before_batch_transfer", "on_after_batch_transfer")}
        d = self._default
        self._plain_transfer = d["transfer_batch_to_device"] and d["on_before_batch_transfer"] and \
            d["on_after_batch_transfer"]  # no transfer hook overridden: batches are just moved
        precision = self.precision
        self._cpu_batches = self._plain_transfer and self.runtime.device.type == "cpu" and \
            precision.convert_input(_PROBE) is _PROBE  # no dtype conversion of inputs either
        # 32-bit, not profiled: training_step needs no context around it
        self._bare_step = precision.name == "32-true" and type(hooks).profile_step is HookDispatcher.profile_step
        self._wrapped_step = type(self.runtime).call_step is not Runtime.call_step  # through DDP's forward
        self._ts_idx = self._takes_idx("training_step")
        opt = self.run.optimizers[0] if self.run.optimizers else None  # torch's own optimizers call the closure
        self._eager = opt if type(opt).__module__.startswith("torch.optim.") and not isinstance(
            opt, torch.optim.LBFGS) else None  # once, first: calling it before the step is the same
        self._hooked = h = {name: hooks.overridden(name) for name in _BATCH_HOOKS}
        self._plain_backward = d["backward"] and precision.scaler is None and not (
            h["on_before_backward"] or h["on_after_backward"])
        config = self.run.config
        self._clip = config.gradient_clip_val or not d["configure_gradient_clipping"]
        # an elastic run below max_workers trains k virtual ranks per process: k times the micro-batches per step
        self._elastic = elastic = self.runtime.elastic
        self._acc = config.accumulate_grad_batches * (elastic.virtual_per_rank if elastic is not None else 1)

    # --- when things happen -------------------------------------------------------------------------------
    def validation_enabled(self) -> bool:
        return self.run.loaders.validation_enabled()

    def should_sanity_check(self) -> bool:
        st = self.run.state
        return self.validation_enabled() and self.run.config.num_sanity_val_steps > 0 and \
            (st.pending_resume is None or st.epoch_batches == 0)

    def should_validate(self, batch_idx: int, is_last: bool) -> bool:
        run, config = self.run, self.run.config
        if not run.loaders.validation_enabled():
            return False
        every = config.check_val_every_n_epoch
        if every is not None and (run.state.current_epoch + 1) % every != 0:
            return False
        vcb, loaders = run.loaders.val_check_batch, run.loaders
        if is_last and vcb == math.inf:
            return True
        if run.state.should_stop and self._can_stop_early():
            return True
        if loaders.val_deadline is not None:
            return loaders.val_deadline.due(run.state.total_batches, run.trainer.strategy)
        if isinstance(config.limit_train_batches, int) and vcb == math.inf:
            return (batch_idx + 1) % config.limit_train_batches == 0
        if vcb != math.inf:
            current = run.state.total_batches - 1 if every is None else batch_idx
            return (current + 1) % vcb == 0
        return is_last

    def should_log_step(self) -> bool:
        n, st = self.run.config.log_every_n_steps, self.run.state
        return n != 0 and ((st.batches_that_stepped + 1) % n == 0 or st.should_stop)

    def _can_stop_early(self) -> bool:
        config, st = self.run.config, self.run.state
        return (not config.min_epochs or st.current_epoch >= config.min_epochs) and \
            (not config.min_steps or st.global_step >= config.min_steps)

    def _max_steps_reached(self) -> bool:
        max_steps = self.run.config.max_steps
        return max_steps != -1 and self.run.state.global_step >= max_steps

    def _fit_done(self) -> bool:
        config, st = self.run.config, self.run.state
        if self.run.loaders.num_training_batches == 0 or self._max_steps_reached():
            return True
        if config.max_epochs is not None and config.max_epochs != -1 and st.current_epoch >= config.max_epochs:
            return True
        return st.should_stop and self._can_stop_early()

    # --- fit --------------------------------------------------------------------------------------------
    def run_fit(self) -> None:
        hooks, loaders = self.hooks, self.run.loaders
        self._cache_decisions()
        if self.should_sanity_check():
            self.run_sanity_check()
        loaders.load_train()
        if loaders.is_val_epoch() and loaders.val is None:  # for the progress bar's totals, as in Lightning
            loaders.load_eval("validate")
        if self._fit_done():
            return
        self.metrics.store = self.run.train_store  # what on_train_start logs belongs to the first epoch
        hooks.both("on_train_start")
        while not self._fit_done():
            self.run_train_epoch()
        hooks.both("on_train_end")

    def run_sanity_check(self) -> None:
        status, hooks = self.run.status, self.hooks
        stage = status.stage
        self.metrics.reset_views()
        status.stage = RunningStage.SANITY_CHECKING
        with isolate_rng():  # the sanity check must not change what training draws
            hooks.callbacks_hook("on_sanity_check_start")
            run_evaluation(self, "validate", sanity=True)
            hooks.callbacks_hook("on_sanity_check_end")
        status.stage = stage
        self.metrics.reset_views()

    def run_train_epoch(self) -> None:
        run, hooks, st, metrics = self.run, self.hooks, self.run.state, self.metrics
        run.loaders.maybe_reload_train()
        loader = run.loaders.train
        set_sampler_epoch(loader, st.current_epoch)
        metrics.store = run.train_store
        metrics.in_batch = False
        st.epoch_finished = False
        st.in_epoch = True
        hooks.both("on_train_epoch_start")
        self._cache_decisions()

        resume, st.pending_resume = st.pending_resume, None
        skip = st.epoch_batches if resume is not None else 0
        if skip and resume.get("epoch_start_rng") is not None:
            # replay this epoch's data order, skip the batches already trained, then continue with the RNG
            # exactly as it was when the checkpoint was written
            set_rng_state(resume["epoch_start_rng"])
        else:
            skip, st.epoch_batches = 0, 0
            if "fit" in run.eval_batches:  # fit_loop's val_loop counts the batches validated per epoch
                run.eval_batches["fit"].total = 0
            if resume is not None and resume.get("rng") is not None:
                set_rng_state(resume["rng"])  # before the iterator exists: creating it draws a seed
        st.epoch_start_rng = rng_state()
        batches = lookahead(train_batches(loader), run.loaders.num_training_batches, skip=skip)
        if skip:
            set_rng_state(resume["rng"])
            if resume.get("batch_pending") is not None:
                # the checkpoint was written inside the end phase of its last batch: finish that phase once
                self._finish_batch(*resume["batch_pending"])

        for batch_idx, batch, is_last in batches:
            st.is_last_batch = is_last
            try:
                self.train_step(batch, batch_idx, is_last)
            except _StopEpoch:
                break
            if self._max_steps_reached() or (st.should_stop and self._can_stop_early()):
                break
        st.epoch_finished = True

        metrics.end_epoch()
        hooks.callbacks_hook("on_train_epoch_end", after_module=False)
        hooks.module_hook("on_train_epoch_end")
        hooks.callbacks_hook("on_train_epoch_end", after_module=True)
        # epoch-level rows use the logger step of the epoch's last batch (Lightning's convention)
        metrics.send_to_loggers(metrics.epoch_log_metrics(), default_step=st.batches_that_stepped - 1)
        run.train_store.reset()
        st.current_epoch += 1
        run.last_epoch_batches, st.epoch_batches = st.epoch_batches, 0
        st.epoch_finished = False
        st.in_epoch = False
        self.update_lr_schedulers("epoch", plateau=True)

    def train_step(self, batch: Any, batch_idx: int, is_last: bool) -> None:
        """One training batch, every precision, with or without accumulation:
        transfer → on_train_batch_start → optimizer step around the closure (training_step → zero_grad →
        backward) → schedulers → on_train_batch_end → logging and, when due, validation."""
        run, hooks, st, module, hooked = self.run, self.hooks, self.run.state, self.module, self._hooked
        batch = self._transfer(batch, 0)
        self.metrics.begin_batch(batch)
        if self._elastic is not None and self._elastic.loss_weight(batch_idx) == 0:
            self.metrics.store.batch_size = 0  # a padding micro-batch: no weight in epoch means either
        if hooked["on_train_batch_start"] and hooks.both("on_train_batch_start", batch, batch_idx) == -1:
            self.update_lr_schedulers("epoch", plateau=False)
            raise _StopEpoch
        acc, elastic = self._acc, self._elastic
        # gradients are applied every `acc` batches and at the epoch's last batch
        accumulate = acc > 1 and not ((batch_idx + 1) % acc == 0 or is_last)
        outputs: dict[str, Any] = {}
        if not module.automatic_optimization:
            out = self._step("training_step", batch, batch_idx)
            if out is None and self.runtime.world_size > 1:
                raise RuntimeError(NONE_IN_DDP)
            outputs, accumulate = manual_training_output(out), False
        else:
            optimizer, args = run.optimizers[0], (batch, batch_idx) if self._ts_idx else (batch,)
            precision, runtime, default, bare = self.precision, self.runtime, self._default, self._bare_step
            plain_backward, wrapped_step = self._plain_backward, self._wrapped_step
            zero_grad = batch_idx % acc == 0  # the first batch of an accumulation window clears the gradients
            # the default optimizer_step without a scaler: the closure itself ends with _after_closure (what
            # Precision.optimizer_step's wrapper would add), and the optimizer is called directly
            direct = not accumulate and default["optimizer_step"] and precision.scaler is None

            def closure() -> torch.Tensor | None:
                # training_step → zero_grad → backward: Lightning's order, so the previous window's gradients
                # are cleared only once this batch's loss exists
                fx = module.__dict__
                prev, fx["_current_fx_name"] = fx["_current_fx_name"], "training_step"
                try:
                    if bare:
                        out = runtime.call_step(run.model, module, "training_step", *args) if wrapped_step else \
                            module.training_step(*args)
                    else:
                        with precision.step_context(), hooks.profile_step("training_step"):
                            out = runtime.call_step(run.model, module, "training_step", *args)
                finally:
                    fx["_current_fx_name"] = prev
                if out is None and runtime.world_size > 1:
                    raise RuntimeError(NONE_IN_DDP)
                loss, extra = (out, None) if type(out) is torch.Tensor else split_training_output(out)
                if loss is not None and elastic is not None:
                    loss = loss * elastic.loss_weight(batch_idx)  # by sample counts: the global batch's mean
                elif loss is not None and acc != 1:
                    loss = loss / acc
                if zero_grad:
                    if hooked["on_before_zero_grad"]:
                        hooks.both("on_before_zero_grad", optimizer)
                    if default["optimizer_zero_grad"]:
                        optimizer.zero_grad()
                    else:
                        hooks.module_hook("optimizer_zero_grad", st.current_epoch, batch_idx, optimizer)
                if loss is None:
                    if direct:
                        self._after_closure(optimizer)
                    return None
                if plain_backward:
                    loss.backward()
                else:
                    self.backward(loss)
                detached = loss.detach().clone()
                outputs["loss"] = detached
                if extra:
                    outputs.update(extra)
                if direct:
                    self._after_closure(optimizer)
                return detached

            if accumulate:
                # gradients are synchronised across ranks only on the batch that steps: skip it while accumulating
                if runtime.world_size == 1:
                    closure()
                else:
                    with runtime.no_sync(run.model):
                        closure()
            else:
                eager = direct and optimizer is self._eager
                if eager and not (getattr(optimizer, "_optimizer_step_pre_hooks", True) or _OPTIM_PRE_HOOKS or
                                  _profiling()):
                    closure()  # what the optimizer's step would do first
                    optimizer.step()
                elif direct:
                    optimizer.step(closure=closure)
                elif default["optimizer_step"]:  # what the default hook does: lopt.step(closure=closure)
                    precision.optimizer_step(optimizer, closure, self._after_closure, skip_if_no_loss=True)
                else:
                    hooks.module_hook("optimizer_step", st.current_epoch, batch_idx, run.lightning_optimizers[0],
                                      closure)
                st.global_step += 1
        if run.lr_scheduler_configs:
            if not accumulate:
                self.update_lr_schedulers("step", plateau=False, batch_idx=batch_idx)
            if is_last:
                self.update_lr_schedulers("epoch", plateau=False)
        # the batch is trained: a checkpoint written from here on resumes after it, and records that its
        # validation and logger step are still to come (see _finish_batch)
        st.epoch_batches += 1
        st.total_batches += 1
        st.batch_pending = (batch_idx, is_last, accumulate)
        if hooked["on_train_batch_end"]:
            hooks.both("on_train_batch_end", outputs, batch, batch_idx)
        log = self.metrics.end_batch()
        if not accumulate and log and (self.should_log_step() or run.config.fast_dev_run):
            self.metrics.send_to_loggers(log)
        self.metrics.in_batch = False
        self._finish_batch(batch_idx, is_last, accumulate)

    def _after_closure(self, optimizer: Any = None) -> None:
        """After backward, before the optimizer steps: hooks, then gradient clipping."""
        optimizer = self.run.optimizers[0] if optimizer is None else optimizer
        if self._hooked["on_before_optimizer_step"]:
            self.hooks.both("on_before_optimizer_step", optimizer)
        if self._clip and self.module.automatic_optimization:  # the default hook clips nothing without a value
            config = self.run.config
            self.hooks.module_hook("configure_gradient_clipping", optimizer, gradient_clip_val=config.gradient_clip_val,
                                   gradient_clip_algorithm=config.gradient_clip_algorithm)

    def _finish_batch(self, batch_idx: int, is_last: bool, accumulate: bool) -> None:
        """Validation when due, plateau schedulers, and the loggers' step: the end of a training batch."""
        run, st = self.run, self.run.state
        if self.should_validate(batch_idx, is_last):
            run.status.stage = RunningStage.VALIDATING
            if not accumulate:
                self.hooks.module_hook("on_validation_model_zero_grad")
            run_evaluation(self, "validate")
            run.status.stage = RunningStage.TRAINING
            self.metrics.store = run.train_store
        if not accumulate:
            if run.lr_scheduler_configs:
                self.update_lr_schedulers("step", plateau=True, batch_idx=batch_idx)
            st.batches_that_stepped += 1
        st.batch_pending = None

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        hooks, hooked = self.hooks, self._hooked
        if self.precision.scaler is not None:
            loss = self.precision.scale_loss(loss)
        if hooked.get("on_before_backward", True):
            hooks.both("on_before_backward", loss)
        if self._default["backward"]:
            loss.backward(*args, **kwargs)
        else:
            hooks.module_hook("backward", loss, *args, **kwargs)
        if hooked.get("on_after_backward", True):
            hooks.both("on_after_backward")

    def optimizer_step(self, lightning_optimizer: Any, closure: Any, **kwargs: Any) -> Any:
        """What ``LightningOptimizer.step`` does: closure, hooks, clipping, then the real step."""
        optimizer = lightning_optimizer.optimizer
        automatic = self.module.automatic_optimization
        out = self.precision.optimizer_step(optimizer, closure if closure is not None else _do_nothing,
                                            lambda: self._after_closure(optimizer), skip_if_no_loss=automatic,
                                            **kwargs)
        if not automatic:
            self.run.state.global_step += 1
        return out

    def update_lr_schedulers(self, interval: str, plateau: bool, batch_idx: int = 0) -> None:
        run = self.run
        if not run.lr_scheduler_configs or not self.module.automatic_optimization:
            return
        st = run.state
        if interval == "step" and self._elastic is not None:  # count the full-size run's batches at any W
            batch_idx = (batch_idx + 1) // self._elastic.virtual_per_rank - 1
        idx = (batch_idx if interval == "step" else st.current_epoch) + 1
        for cfg in run.lr_scheduler_configs:
            if cfg.reduce_on_plateau != plateau or cfg.interval != interval or idx % cfg.frequency != 0:
                continue
            metric = None
            if cfg.reduce_on_plateau:
                metric = run.trainer.callback_metrics.get(cfg.monitor)
                if metric is None:
                    if cfg.strict:
                        raise MisconfigurationException(
                            f"ReduceLROnPlateau conditioned on metric {cfg.monitor} which is not available. "
                            f"Available metrics are: {list(run.trainer.callback_metrics)}. Condition can be set "
                            "using `monitor` key in lr scheduler dict")
                    warnings.warn(f"ReduceLROnPlateau conditioned on metric {cfg.monitor} which is not available "
                                  "but strict is set to `False`. Skipping learning rate update.", RuntimeWarning)
                    continue
            self.hooks.module_hook("lr_scheduler_step", cfg.scheduler, metric)
            st.scheduler_steps += 1

def _profiling() -> bool:
    return getattr(torch.autograd.profiler, "_is_profiler_enabled", True)


def _do_nothing() -> None:
    return None
