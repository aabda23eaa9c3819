"""When hooks fire, and the one place that calls them.

The fit loop, in pseudocode (CB = every callback in order, then LM = the module; DM = the datamodule)::

    configure_callbacks → prepare_data (DM, LM) → setup("fit") (DM, CB, LM) → configure_model
    → [restore weights + callback states from ckpt_path] → configure_optimizers → on_fit_start
    → [restore optimizer/scheduler/loop state] → sanity check (on_sanity_check_start, a short validation,
      on_sanity_check_end; RNG isolated) → train_dataloader → on_train_start
    → per epoch: on_train_epoch_start
        → per batch: on_before_batch_transfer → transfer_batch_to_device → on_after_batch_transfer
                     → on_train_batch_start (returning -1 ends the epoch)
                     → optimizer_step(closure) where closure = training_step → on_before_zero_grad
                       → optimizer_zero_grad (first batch of an accumulation window) → on_before_backward
                       → backward → on_after_backward; then on_before_optimizer_step → configure_gradient_clipping
                     → lr_scheduler_step (interval "step"; interval "epoch" on the last batch)
                     → on_train_batch_end → [validation when due: on_validation_model_zero_grad,
                       val_dataloader (first time), on_validation_model_eval, on_validation_start,
                       on_validation_epoch_start, per batch (transfer hooks, on_validation_batch_start,
                       validation_step, on_validation_batch_end), on_validation_epoch_end,
                       on_validation_end, on_validation_model_train]
        → on_train_epoch_end (callbacks, then LM, then monitoring callbacks: checkpoints/early stopping)
    → on_train_end → on_fit_end → teardown("fit") (DM, CB, LM) → loggers finalize.

Callbacks run before the module's hook of the same name. A callback with ``runs_after_module_epoch_end``
runs its ``on_train_epoch_end`` after the module's.
"""

from contextlib import nullcontext
from typing import Any

from raylit.callbacks.base import Callback
from raylit.datamodule import LightningDataModule
from raylit.module import LightningModule
from raylit.utilities.model_helpers import is_overridden, overrides

_NO_PROFILE = nullcontext()

# Module hooks whose default does nothing: skipping them when not overridden is invisible to users and
# keeps the per-batch cost of the loop down.
_NOOP_MODULE_HOOKS = frozenset(
    name for name in (
        "on_fit_start on_fit_end on_train_start on_train_end on_validation_start on_validation_end on_test_start "
        "on_test_end on_predict_start on_predict_end on_train_batch_start on_train_batch_end "
        "on_validation_batch_start on_validation_batch_end on_test_batch_start on_test_batch_end "
        "on_predict_batch_start on_predict_batch_end on_train_epoch_start on_train_epoch_end "
        "on_validation_epoch_start on_validation_epoch_end on_test_epoch_start on_test_epoch_end "
        "on_predict_epoch_start on_predict_epoch_end on_before_zero_grad on_before_backward on_after_backward "
        "on_before_optimizer_step on_save_checkpoint on_load_checkpoint prepare_data setup teardown "
        "on_before_batch_transfer on_after_batch_transfer"
    ).split()
)


class HookDispatcher:
    """Calls hooks by name on callbacks, the module and the datamodule, tracking the current hook name so
    that ``self.log`` knows where it is called from."""

    def profile_step(self, name: str) -> Any:
        """Context around a ``*_step`` call (the profiled dispatcher records it)."""
        return _NO_PROFILE

    def __init__(self, module: Any, datamodule: Any, callbacks: list[Callback], trainer: Any) -> None:
        self.module = module
        self.datamodule = datamodule
        self.callbacks = callbacks
        self.trainer = trainer
        self._lm_base = LightningModule
        self._dm_base = LightningDataModule
        self._cb_cache: dict[tuple[str, bool | None], list] = {}
        self._lm_skip = {n for n in _NOOP_MODULE_HOOKS if not overrides(module, n, LightningModule)}

    def uses_default(self, name: str) -> bool:
        """True when neither the module nor the datamodule overrides ``name``, so the loop may run the
        default behaviour inline (the defaults never log, so skipping the dispatch is invisible)."""
        return not overrides(self.module, name, LightningModule) and \
            not overrides(self.datamodule, name, LightningDataModule)

    def overridden(self, name: str) -> bool:
        """Whether calling ``both(name, ...)`` would run any code (a callback's or the module's own hook)."""
        return bool(self._callback_methods(name, None)) or name not in self._lm_skip

    def _callback_methods(self, name: str, after_module: bool | None) -> list:
        key = (name, after_module)
        methods = self._cb_cache.get(key)
        if methods is None:
            methods = [
                getattr(cb, name) for cb in self.callbacks
                if overrides(cb, name, Callback)
                and (after_module is None or cb.runs_after_module_epoch_end == after_module)
            ]
            self._cb_cache[key] = methods
        return methods

    def callbacks_hook(self, name: str, *args: Any, after_module: bool | None = None, **kwargs: Any) -> None:
        methods = self._callback_methods(name, after_module)
        if not methods:
            return
        module, trainer = self.module, self.trainer
        prev = module._current_fx_name
        module.__dict__["_current_fx_name"] = name
        try:
            for m in methods:
                m(trainer, module, *args, **kwargs)
        finally:
            module.__dict__["_current_fx_name"] = prev

    def module_hook(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in self._lm_skip:
            return None
        module = self.module
        fn = getattr(module, name)
        if fn is None:  # `model.on_validation_model_train = None`: Lightning's way to switch a hook off
            return None
        prev = module._current_fx_name
        module.__dict__["_current_fx_name"] = name
        try:
            return fn(*args, **kwargs)
        finally:
            module.__dict__["_current_fx_name"] = prev

    def both(self, name: str, *args: Any) -> Any:
        """Callbacks, then the module."""
        self.callbacks_hook(name, *args)
        return self.module_hook(name, *args)

    def datamodule_hook(self, name: str, *args: Any, **kwargs: Any) -> Any:
        dm = self.datamodule
        if dm is None or not overrides(dm, name, self._dm_base):
            return None
        prev = self.module._current_fx_name
        self.module.__dict__["_current_fx_name"] = name
        try:
            return getattr(dm, name)(*args, **kwargs)
        finally:
            self.module.__dict__["_current_fx_name"] = prev

    def data_hook(self, name: str, *args: Any) -> Any:
        """A data hook (transfer hooks): the datamodule's when it overrides it, else the module's."""
        dm = self.datamodule
        if dm is not None and is_overridden(name, dm, self._dm_base):  # Lightning decides with is_overridden
            return self.datamodule_hook(name, *args)
        if name in self._lm_skip:
            return args[0]
        return self.module_hook(name, *args)


def prepares_data(obj: Any, local_rank: int, node_rank: int) -> bool:
    """Whether this process calls ``obj.prepare_data()``: local rank 0 of every node, or only node 0's when
    ``obj.prepare_data_per_node`` is False (e.g. a download to shared storage)."""
    return local_rank == 0 and (getattr(obj, "prepare_data_per_node", True) or node_rank == 0)
