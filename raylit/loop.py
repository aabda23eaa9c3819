"""The training, evaluation and prediction loops: the whole algorithm, as plain code.

``Loop`` reads its configuration from the Trainer and mutates only ``trainer._state`` (progress counters)
and the metric views. It never imports Ray: rank, collectives and DDP come from ``trainer._runtime``.
See ``raylit/hooks.py`` for the hook order in pseudocode.
"""

import inspect
from contextlib import nullcontext
from typing import Any

import torch

from raylit.data import lookahead, sequential_lookahead
from raylit.metrics import ResultStore
from raylit.state import RunningStage
from raylit.utilities.apply_func import move_data_to_device
from raylit.utilities.exceptions import MisconfigurationException
from raylit.utilities.seed import isolate_rng, rng_state, set_rng_state


def _accepts(fn: Any, name: str, min_args: int) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    if name in params or any(p.kind is p.VAR_POSITIONAL for p in params.values()):
        return True
    return len(params) >= min_args


class _StopEpoch(Exception):
    """``on_train_batch_start`` returned -1: end the epoch early."""


class Loop:
    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.hooks = trainer._hooks
        self.module = trainer.lightning_module
        self.runtime = trainer._runtime
        self.precision = trainer._precision
        self.metrics = trainer._metrics
        self._step_takes_idx: dict[str, bool] = {}
        # hooks whose default behaviour the hot path runs inline when the user did not override them
        self._default = {name: self.hooks.uses_default(name) for name in (
            "transfer_batch_to_device", "optimizer_step", "optimizer_zero_grad", "backward",
            "configure_gradient_clipping", "on_before_batch_transfer", "on_after_batch_transfer")}
        d = self._default
        self._plain_transfer = d["transfer_batch_to_device"] and d["on_before_batch_transfer"] and \
            d["on_after_batch_transfer"]  # no transfer hook overridden: batches are just moved

    # --- shared pieces ----------------------------------------------------------------------------------
    def _transfer(self, batch: Any, dataloader_idx: int) -> Any:
        hooks = self.hooks
        batch = self.precision.convert_input(batch)
        if self._plain_transfer:
            return move_data_to_device(batch, self.runtime.device)
        batch = hooks.data_hook("on_before_batch_transfer", batch, dataloader_idx)
        batch = hooks.data_hook("transfer_batch_to_device", batch, self.runtime.device, dataloader_idx)
        return hooks.data_hook("on_after_batch_transfer", batch, dataloader_idx)

    def _step(self, name: str, *args: Any) -> Any:
        """Run a step method (training_step, validation_step, ...) through the runtime (DDP) and precision."""
        takes = self._step_takes_idx.get(name)
        if takes is None:
            takes = self._step_takes_idx[name] = _accepts(getattr(self.module, name), "batch_idx", 2)
        if not takes:
            args = args[:1] + args[2:]
        module = self.module
        prev = module._current_fx_name
        module.__dict__["_current_fx_name"] = name
        try:
            with self.precision.step_context(), self.hooks.profile_step(name):  # [Strategy]X.{name} when profiled
                return self.runtime.call_step(self.trainer.model, module, name, *args)
        finally:
            module.__dict__["_current_fx_name"] = prev

    # --- fit --------------------------------------------------------------------------------------------
    def run_fit(self) -> None:
        trainer, hooks = self.trainer, self.hooks
        if trainer._should_sanity_check():
            self.run_sanity_check()
        trainer._load_train_data()
        if trainer._validation_enabled() and trainer._val_loaders is None:
            trainer._load_eval_data("validate")
        if self._fit_done():
            return
        self.module.train()
        hooks.both("on_train_start")
        while not self._fit_done():
            self.run_train_epoch()
        hooks.both("on_train_end")

    def run_sanity_check(self) -> None:
        trainer, hooks = self.trainer, self.hooks
        stage = trainer.state.stage
        self.metrics.reset_views()
        trainer.sanity_checking = True
        with isolate_rng():  # the sanity check must not change what training draws
            hooks.callbacks_hook("on_sanity_check_start")
            self.run_evaluation("validate", sanity=True)
            hooks.callbacks_hook("on_sanity_check_end")
        trainer.sanity_checking = False
        trainer.state.stage = stage
        self.metrics.reset_views()

    def _can_stop_early(self) -> bool:
        t, st = self.trainer, self.trainer._state
        return (not t.min_epochs or st.current_epoch >= t.min_epochs) and \
            (not t.min_steps or st.global_step >= t.min_steps)

    def _max_steps_reached(self) -> bool:
        t = self.trainer
        return t.max_steps != -1 and t._state.global_step >= t.max_steps

    def _fit_done(self) -> bool:
        t, st = self.trainer, self.trainer._state
        if t.num_training_batches == 0 or self._max_steps_reached():
            return True
        if t.max_epochs is not None and t.max_epochs != -1 and st.current_epoch >= t.max_epochs:
            return True
        return t.should_stop and self._can_stop_early()

    def run_train_epoch(self) -> None:
        trainer, hooks, st, metrics = self.trainer, self.hooks, self.trainer._state, self.metrics
        trainer._maybe_reload_train_data()
        loader = trainer.train_dataloader
        _set_sampler_epoch(loader, st.current_epoch)
        metrics.store = trainer._train_store
        metrics.in_batch = False
        st.epoch_finished = False
        st.in_epoch = True
        hooks.both("on_train_epoch_start")

        resume, st.pending_resume = st.pending_resume, None
        skip = st.epoch_batches if resume is not None else 0
        if skip and resume.get("epoch_start_rng") is not None:
            # replay this epoch's data order, skip the batches already trained, then continue with the RNG
            # exactly as it was when the checkpoint was written
            set_rng_state(resume["epoch_start_rng"])
        else:
            skip, st.epoch_batches = 0, 0
            if resume is not None and resume.get("rng") is not None:
                set_rng_state(resume["rng"])  # before the iterator exists: creating it draws a seed
        st.epoch_start_rng = rng_state()
        batches = lookahead(loader, trainer.num_training_batches, skip=skip)
        if skip:
            set_rng_state(resume["rng"])
            if resume.get("batch_pending") is not None:
                # the checkpoint was written inside the end phase of its last batch: finish that phase once
                self._finish_batch(*resume["batch_pending"])

        run_batch = self._fast_train_batch if self._fast_path_applies() else self.run_train_batch
        for batch_idx, batch, is_last in batches:
            st.is_last_batch = is_last
            try:
                run_batch(batch, batch_idx, is_last)
            except _StopEpoch:
                break
            if self._max_steps_reached() or (trainer.should_stop and self._can_stop_early()):
                break
        st.epoch_finished = True

        metrics.end_epoch()
        hooks.callbacks_hook("on_train_epoch_end", after_module=False)
        hooks.module_hook("on_train_epoch_end")
        hooks.callbacks_hook("on_train_epoch_end", after_module=True)
        # epoch-level rows reuse the step of the epoch's last batch (Lightning's convention)
        st.batches_that_stepped -= 1
        metrics.send_to_loggers(metrics.epoch_log_metrics())
        st.batches_that_stepped += 1
        trainer._train_store.reset()
        st.current_epoch += 1
        st.epoch_batches = 0
        st.epoch_finished = False
        st.in_epoch = False
        self._update_lr_schedulers("epoch", plateau=True)

    def _should_accumulate(self, batch_idx: int, is_last: bool) -> bool:
        acc = self.trainer.accumulate_grad_batches
        return not ((batch_idx + 1) % acc == 0 or is_last)

    def run_train_batch(self, batch: Any, batch_idx: int, is_last: bool) -> None:
        hooks, metrics = self.hooks, self.metrics
        batch = self._transfer(batch, 0)
        metrics.begin_batch(batch)
        hooks.callbacks_hook("on_train_batch_start", batch, batch_idx)
        if hooks.module_hook("on_train_batch_start", batch, batch_idx) == -1:
            self._update_lr_schedulers("epoch", plateau=False)
            raise _StopEpoch
        accumulate = self._should_accumulate(batch_idx, is_last)
        if self.module.automatic_optimization:
            outputs = self._automatic_step(batch, batch_idx, accumulate)
        else:
            outputs = self._manual_step(batch, batch_idx)
            accumulate = False
        if not accumulate:
            self._update_lr_schedulers("step", plateau=False, batch_idx=batch_idx)
        if is_last:
            self._update_lr_schedulers("epoch", plateau=False)
        self._batch_trained(batch_idx, is_last, accumulate)
        hooks.callbacks_hook("on_train_batch_end", outputs, batch, batch_idx)
        hooks.module_hook("on_train_batch_end", outputs, batch, batch_idx)
        self._log_and_finish_batch(batch_idx, is_last, accumulate)

    def _batch_trained(self, batch_idx: int, is_last: bool, accumulate: bool) -> None:
        """The batch is trained: a checkpoint written from here on resumes after it, and records that its
        validation and logger step are still to come (see _finish_batch)."""
        st = self.trainer._state
        st.epoch_batches += 1
        st.total_batches += 1
        st.batch_pending = (batch_idx, is_last, accumulate)

    def _log_and_finish_batch(self, batch_idx: int, is_last: bool, accumulate: bool) -> None:
        """After ``on_train_batch_end``: the batch's step row to the loggers, then ``_finish_batch``."""
        trainer, metrics = self.trainer, self.metrics
        log = metrics.end_batch()
        if not accumulate and log and (trainer._should_log_step() or trainer.fast_dev_run):
            metrics.send_to_loggers(log)
        metrics.in_batch = False
        self._finish_batch(batch_idx, is_last, accumulate)

    # --- the common case, fused ------------------------------------------------------------------------
    # One optimizer, automatic optimization, no accumulation, 32-bit precision and the default
    # optimizer_step / optimizer_zero_grad / backward / configure_gradient_clipping hooks: ``run_train_batch``
    # then does nothing but call no-op hooks around ``optimizer.step(closure)``. ``_fast_train_batch`` does the
    # same work in the same order without the layers (~2x less per-step overhead on a tiny model); batch hooks
    # that a callback or the module does override are still called, in their place. Decided per epoch, after
    # ``on_train_epoch_start`` (GradientAccumulationScheduler changes ``accumulate_grad_batches`` there).
    _FAST_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_zero_grad", "on_before_backward",
                   "on_after_backward", "on_before_optimizer_step")

    def _fast_path_applies(self) -> bool:
        trainer, precision, default = self.trainer, self.precision, self._default
        if not (self.module.automatic_optimization and trainer.accumulate_grad_batches == 1
                and len(trainer.optimizers) == 1 and not trainer.gradient_clip_val
                and default["optimizer_step"] and default["optimizer_zero_grad"] and default["backward"]
                and default["configure_gradient_clipping"]
                and precision.scaler is None and precision._true_dtype is None
                and precision.name not in ("16-mixed", "bf16-mixed")):
            return False
        hooks = self.hooks
        self._fast_callbacks = {name: hooks._callback_methods(name, None) for name in self._FAST_HOOKS}
        self._fast_module = {name: name not in hooks._lm_skip for name in self._FAST_HOOKS}
        takes = self._step_takes_idx.get("training_step")
        if takes is None:
            takes = self._step_takes_idx["training_step"] = _accepts(self.module.training_step, "batch_idx", 2)
        self._fast_takes_idx = takes
        cbs, mods = self._fast_callbacks, self._fast_module
        self._fast_grad_hooked = any(cbs[n] or mods[n] for n in ("on_before_zero_grad", "on_before_backward",
                                                                  "on_after_backward"))
        return True

    def _fast_hook(self, name: str, *args: Any) -> Any:
        """Callbacks' then the module's ``name``, for a hook that at least one of them overrides."""
        if self._fast_callbacks[name]:
            self.hooks.callbacks_hook(name, *args)
        if self._fast_module[name]:
            return self.hooks.module_hook(name, *args)
        return None

    def _fast_train_batch(self, batch: Any, batch_idx: int, is_last: bool) -> None:
        """``run_train_batch`` for the common case (see above): the same hooks, state and order."""
        trainer, st, metrics, module = self.trainer, self.trainer._state, self.metrics, self.module
        cbs, mods = self._fast_callbacks, self._fast_module
        runtime = self.runtime
        # 32-bit only (see above): no dtype conversion, so a plain transfer is just the move
        batch = move_data_to_device(batch, runtime.device) if self._plain_transfer else self._transfer(batch, 0)
        metrics.begin_batch(batch)
        if cbs["on_train_batch_start"] or mods["on_train_batch_start"]:
            if self._fast_hook("on_train_batch_start", batch, batch_idx) == -1:
                self._update_lr_schedulers("epoch", plateau=False)
                raise _StopEpoch
        optimizer, wrapped = trainer.optimizers[0], trainer._model
        args = (batch, batch_idx) if self._fast_takes_idx else (batch,)
        result: dict[str, Any] = {}
        hooked = self._fast_grad_hooked

        def closure() -> torch.Tensor | None:
            fx = module.__dict__
            prev = fx["_current_fx_name"]
            fx["_current_fx_name"] = "training_step"
            try:
                out = runtime.call_step(wrapped, module, "training_step", *args)
            finally:
                fx["_current_fx_name"] = prev
            if out is None and trainer.world_size > 1:
                raise RuntimeError("Skipping the `training_step` by returning None in distributed training is not "
                                   "supported: all ranks must run backward so gradients can be synchronised.")
            loss, extra = (out, None) if type(out) is torch.Tensor else _split_training_output(out)
            if hooked:
                self._fast_hook("on_before_zero_grad", optimizer)
            optimizer.zero_grad()
            detached = None
            if loss is not None:
                if hooked:
                    self._fast_hook("on_before_backward", loss)
                loss.backward()
                if hooked:
                    self._fast_hook("on_after_backward")
                detached = loss.detach().clone()
                result["loss"] = detached
                if extra:
                    result.update(extra)
            if cbs["on_before_optimizer_step"] or mods["on_before_optimizer_step"]:
                self._fast_hook("on_before_optimizer_step", optimizer)
            return detached

        optimizer.step(closure=closure)
        st.global_step += 1
        if trainer.lr_scheduler_configs:
            self._update_lr_schedulers("step", plateau=False, batch_idx=batch_idx)
            if is_last:
                self._update_lr_schedulers("epoch", plateau=False)
        self._batch_trained(batch_idx, is_last, False)
        if cbs["on_train_batch_end"] or mods["on_train_batch_end"]:
            self._fast_hook("on_train_batch_end", result, batch, batch_idx)
        self._log_and_finish_batch(batch_idx, is_last, False)

    def _finish_batch(self, batch_idx: int, is_last: bool, accumulate: bool) -> None:
        """Validation when due, plateau schedulers, and the loggers' step: the end of a training batch."""
        trainer, hooks, st = self.trainer, self.hooks, self.trainer._state
        if trainer._should_validate(batch_idx, is_last, st.total_batches):
            trainer.validating = True
            if not accumulate:
                hooks.module_hook("on_validation_model_zero_grad")
            self.run_evaluation("validate")
            if trainer._val_deadline is not None:
                trainer._val_deadline.restart()  # a time-based interval counts from the end of the last validation
            trainer.training = True
            self.metrics.store = trainer._train_store
        if not accumulate:
            self._update_lr_schedulers("step", plateau=True, batch_idx=batch_idx)
            st.batches_that_stepped += 1
        st.batch_pending = None

    def _automatic_step(self, batch: Any, batch_idx: int, accumulate: bool) -> dict[str, Any]:
        trainer, hooks, st = self.trainer, self.hooks, self.trainer._state
        acc = trainer.accumulate_grad_batches
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        zero_grad = batch_idx % acc == 0
        default_zero_grad = self._default["optimizer_zero_grad"]
        result: dict[str, Any] = {}

        def closure() -> torch.Tensor | None:
            # training_step → zero_grad (first batch of an accumulation window) → backward; Lightning's order,
            # so gradients of the previous window are cleared only once this batch's loss exists
            out = self._step("training_step", batch, batch_idx)
            if out is None and trainer.world_size > 1:
                raise RuntimeError("Skipping the `training_step` by returning None in distributed training is not "
                                   "supported: all ranks must run backward so gradients can be synchronised.")
            loss, extra = _split_training_output(out)
            if loss is not None:
                loss = loss / acc if acc != 1 else loss
            if zero_grad and optimizer is not None:
                hooks.both("on_before_zero_grad", optimizer)
                if default_zero_grad:
                    optimizer.zero_grad()
                else:
                    hooks.module_hook("optimizer_zero_grad", st.current_epoch, batch_idx, optimizer)
            if loss is not None:
                self.backward(loss)
                detached = loss.detach().clone()
                result.update({"loss": detached, **extra})
                return detached
            return None

        if accumulate or optimizer is None:
            # gradient sync across ranks happens only on the batch that steps: skip it while accumulating
            with self.runtime.no_sync(trainer.model) if accumulate else nullcontext():
                closure()
        else:
            lopt = trainer._lightning_optimizers[0]
            if self._default["optimizer_step"]:
                self.optimizer_step(lopt, closure)  # what the default hook does: lopt.step(closure=closure)
            else:
                hooks.module_hook("optimizer_step", st.current_epoch, batch_idx, lopt, closure)
            st.global_step += 1
        return result

    def _manual_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        out = self._step("training_step", batch, batch_idx)
        if out is None and self.trainer.world_size > 1:
            raise RuntimeError("Skipping the `training_step` by returning None in distributed training is not "
                               "supported.")
        if isinstance(out, dict):
            extra = dict(out)
        elif isinstance(out, torch.Tensor):
            extra = {"loss": out}
        elif out is None:
            extra = {}
        else:
            raise MisconfigurationException(
                "In manual optimization, `training_step` must either return a Tensor or have no return.")
        if "loss" in extra and isinstance(extra["loss"], torch.Tensor):
            extra["loss"] = extra["loss"].detach()
        return extra

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        hooks = self.hooks
        loss = self.precision.scale_loss(loss)
        hooks.both("on_before_backward", loss)
        if self._default["backward"]:
            loss.backward(*args, **kwargs)
        else:
            hooks.module_hook("backward", loss, *args, **kwargs)
        hooks.both("on_after_backward")

    def optimizer_step(self, lightning_optimizer: Any, closure: Any, **kwargs: Any) -> Any:
        """What ``LightningOptimizer.step`` does: closure, hooks, clipping, then the real step."""
        trainer, hooks = self.trainer, self.hooks
        optimizer = lightning_optimizer.optimizer
        automatic = self.module.automatic_optimization

        clip = automatic and (trainer.gradient_clip_val or not self._default["configure_gradient_clipping"])

        def after_closure() -> None:
            hooks.both("on_before_optimizer_step", optimizer)
            if clip:  # the default hook clips nothing without gradient_clip_val
                hooks.module_hook("configure_gradient_clipping", optimizer, trainer.gradient_clip_val,
                                  trainer.gradient_clip_algorithm)

        out = self.precision.optimizer_step(optimizer, closure if closure is not None else _do_nothing,
                                            after_closure, skip_if_no_loss=automatic, **kwargs)
        if not automatic:
            trainer._state.global_step += 1
        return out

    def _update_lr_schedulers(self, interval: str, plateau: bool, batch_idx: int = 0) -> None:
        trainer = self.trainer
        if not trainer.lr_scheduler_configs or not self.module.automatic_optimization:
            return
        st = trainer._state
        idx = (batch_idx if interval == "step" else st.current_epoch) + 1
        for cfg in trainer.lr_scheduler_configs:
            if cfg.reduce_on_plateau != plateau or cfg.interval != interval or idx % cfg.frequency != 0:
                continue
            metric = None
            if cfg.reduce_on_plateau:
                metric = trainer.callback_metrics.get(cfg.monitor)
                if metric is None:
                    if cfg.strict:
                        raise MisconfigurationException(
                            f"ReduceLROnPlateau conditioned on metric {cfg.monitor} which is not available. "
                            f"Available metrics are: {list(trainer.callback_metrics)}. Condition can be set using "
                            "`monitor` key in lr scheduler dict")
                    import warnings

                    warnings.warn(f"ReduceLROnPlateau conditioned on metric {cfg.monitor} which is not available "
                                  "but strict is set to `False`. Skipping learning rate update.", RuntimeWarning)
                    continue
            self.hooks.module_hook("lr_scheduler_step", cfg.scheduler, metric)
            st.scheduler_steps += 1

    # --- evaluation ---------------------------------------------------------------------------------------
    def run_evaluation(self, fn: str, sanity: bool = False) -> list[dict[str, float]]:
        """One validation or test run over every eval dataloader; returns the epoch metrics per loader."""
        trainer, hooks, metrics = self.trainer, self.hooks, self.metrics
        name = "validation" if fn == "validate" else "test"
        loaders = trainer._load_eval_data(fn) if fn == "test" or trainer._val_loaders is None \
            or trainer._should_reload_val_data() else trainer._val_loaders
        limits = trainer.num_sanity_val_batches if sanity else trainer._eval_limits(fn)
        if not loaders or sum(limits) == 0:
            return []
        trainer.state.stage = RunningStage.SANITY_CHECKING if sanity else \
            (RunningStage.VALIDATING if fn == "validate" else RunningStage.TESTING)
        multi = len(loaders) > 1
        step_name = f"{name}_step"
        if multi and not _accepts(getattr(self.module, step_name), "dataloader_idx", 3):
            raise RuntimeError(f"You provided multiple {name} dataloaders, but your `{step_name}` does not "
                               "accept `dataloader_idx`: add `dataloader_idx=0` to its signature")
        prev_store = metrics.store
        store = metrics.store = ResultStore(training=False, runtime=self.runtime)
        metrics.in_batch = False
        batches = sequential_lookahead([(lambda dl=dl: iter(dl)) for dl in loaders], limits)
        modes = {m: m.training for m in self.module.modules()}
        # validation inside fit uses no_grad: tensors made under inference_mode cannot enter autograd later
        in_fit = trainer.state.fn == "fit"
        grad_ctx = torch.inference_mode() if trainer.inference_mode and not in_fit else torch.no_grad()
        outputs_per_loader: list[dict[str, Any]] = []
        with grad_ctx:
            hooks.module_hook(f"on_{name}_model_eval")
            hooks.both(f"on_{name}_start")
            hooks.both(f"on_{name}_epoch_start")
            current_dl = None
            for dl_idx, batch_idx, batch, _ in batches:
                if multi and dl_idx != current_dl:
                    if current_dl is not None:
                        outputs_per_loader.append(self._loader_epoch_end(store, sanity))
                    current_dl = dl_idx
                batch = self._transfer(batch, dl_idx)
                metrics.begin_batch(batch, dl_idx if multi else None)
                args = (batch, batch_idx, dl_idx) if multi else (batch, batch_idx)
                hooks.callbacks_hook(f"on_{name}_batch_start", *args)
                hooks.module_hook(f"on_{name}_batch_start", *args)
                out = self._step(step_name, *args)
                hooks.callbacks_hook(f"on_{name}_batch_end", out, *args)
                hooks.module_hook(f"on_{name}_batch_end", out, *args)
                log = metrics.end_batch()
                if not sanity and log:
                    key = (trainer.state.fn, fn, dl_idx)
                    step = trainer._eval_log_steps.get(key, 0)
                    metrics.send_to_loggers(log, step=step)
                    trainer._eval_log_steps[key] = step + 1
            outputs_per_loader.append(self._loader_epoch_end(store, sanity))
            store.dataloader_idx = None
            metrics.in_batch = False
            hooks.both(f"on_{name}_epoch_end")
            epoch_end_log = {} if sanity else metrics.epoch_log_metrics()
            for out in outputs_per_loader:
                out.update(epoch_end_log)
            if not sanity:
                combined: dict[str, Any] = {}
                for out in outputs_per_loader:
                    combined.update(out)
                metrics.send_to_loggers(combined)
            hooks.both(f"on_{name}_end")
            hooks.module_hook(f"on_{name}_model_train")
            for m, training in modes.items():
                m.training = training
        metrics.store = prev_store
        store.reset()  # also resets logged torchmetrics objects, so the next run starts clean
        return [{k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v) for k, v in out.items()}
                for out in outputs_per_loader]

    def _loader_epoch_end(self, store: ResultStore, sanity: bool) -> dict[str, Any]:
        self.metrics.end_epoch()  # all ranks: cross-rank reductions of this loader's values happen here
        if sanity:
            return {}
        return dict(self.metrics.epoch_log_metrics())

    # --- predict ------------------------------------------------------------------------------------------
    def run_predict(self, return_predictions: bool) -> list | None:
        trainer, hooks = self.trainer, self.hooks
        loaders = trainer._load_eval_data("predict")
        limits = trainer._eval_limits("predict")
        if not loaders or sum(limits) == 0:
            return [] if return_predictions else None
        multi = len(loaders) > 1
        if multi and not _accepts(self.module.predict_step, "dataloader_idx", 3):
            raise RuntimeError("You provided multiple predict dataloaders, but your `predict_step` does not accept "
                               "`dataloader_idx`")
        predictions: list[list[Any]] = [[] for _ in loaders]
        batches = sequential_lookahead([(lambda dl=dl: iter(dl)) for dl in loaders], limits)
        grad_ctx = torch.inference_mode() if trainer.inference_mode else torch.no_grad()
        modes = {m: m.training for m in self.module.modules()}
        with grad_ctx:
            hooks.module_hook("on_predict_model_eval")
            hooks.both("on_predict_start")
            hooks.both("on_predict_epoch_start")
            for dl_idx, batch_idx, batch, _ in batches:
                batch = self._transfer(batch, dl_idx)
                args = (batch, batch_idx, dl_idx) if multi else (batch, batch_idx)
                hooks.callbacks_hook("on_predict_batch_start", *args)
                hooks.module_hook("on_predict_batch_start", *args)
                out = self._step("predict_step", *args)
                hooks.callbacks_hook("on_predict_batch_end", out, *args)
                hooks.module_hook("on_predict_batch_end", out, *args)
                if return_predictions:
                    predictions[dl_idx].append(out)
            hooks.both("on_predict_epoch_end")
            hooks.both("on_predict_end")
        for m, training in modes.items():
            m.training = training
        if not return_predictions:
            return None
        return predictions if multi else predictions[0]


def _do_nothing() -> None:
    return None


def _split_training_output(out: Any) -> tuple[torch.Tensor | None, dict[str, Any]]:
    if out is None:
        return None, {}
    if isinstance(out, torch.Tensor):
        return out, {}
    if isinstance(out, dict):
        if out.get("loss") is None:
            raise MisconfigurationException("In automatic_optimization, when `training_step` returns a dict, the "
                                            "'loss' key needs to be present")
        return out["loss"], {k: v for k, v in out.items() if k != "loss"}
    raise MisconfigurationException("In automatic optimization, `training_step` must return a Tensor, a dict, or "
                                    f"None (where the step will be skipped); got {type(out).__name__}")


def _set_sampler_epoch(loader: Any, epoch: int) -> None:
    for obj in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
    inner = getattr(loader, "loaders", None)
    if inner is not None:
        for dl in (inner.values() if isinstance(inner, dict) else inner):
            _set_sampler_epoch(dl, epoch)


