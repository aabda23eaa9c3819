"""The hook dispatcher of a profiled run (``Trainer(profiler=...)`` other than the pass-through one).

A ``Run`` builds one of these instead of a ``HookDispatcher`` when the Trainer has a real profiler, so
unprofiled runs pay nothing per hook. A profiled run records every hook call
under Lightning's action names and, like Lightning, calls every hook, even the module's and callbacks' no-op
defaults that an unprofiled run skips (so the report lists the same actions). Loop phases that Lightning
profiles by name are derived from the hooks around them:

- ``run_training_epoch``: from the end of ``on_train_epoch_start`` to the start of ``on_train_epoch_end``;
- ``run_training_batch``: from the end of ``on_train_batch_start`` to the start of ``on_train_batch_end``
  (the optimization: ``training_step``, backward, optimizer step).
"""

from __future__ import annotations

import functools
from typing import Any

from raylit.hooks import HookDispatcher
from raylit.utilities.model_helpers import overrides

# Module hooks Lightning calls only when they are overridden (raylit's loop restores train/eval modes itself
# after an evaluation, so skipping the default ``on_*_model_train`` changes nothing); it calls every other one.
_SKIP_WHEN_DEFAULT = frozenset({"prepare_data", "on_validation_model_train", "on_test_model_train"})
# Module hooks that Lightning reaches through its strategy, so its report names them ``[Strategy]...``.
_STRATEGY_HOOKS = frozenset({"backward"})


def _strategy_class_name(trainer: Any) -> str:
    """The Lightning strategy class the run corresponds to, for ``[Strategy]...`` action names."""
    name = str(getattr(getattr(trainer, "strategy", None), "name", "") or "")
    if name.startswith("fsdp"):
        return "FSDPStrategy"
    if getattr(trainer, "world_size", 1) > 1 or name.startswith("ddp"):
        return "DDPStrategy"
    return "SingleDeviceStrategy"


class ProfiledHookDispatcher(HookDispatcher):
    def __init__(self, module: Any, datamodule: Any, callbacks: list, trainer: Any) -> None:
        super().__init__(module, datamodule, callbacks, trainer)
        self.profiler = trainer.profiler
        self._lm_skip = {n for n in _SKIP_WHEN_DEFAULT if not overrides(module, n, self._lm_base)}
        self._lm_prefix = f"[LightningModule]{type(module).__name__}."
        self._dm_prefix = f"[LightningDataModule]{type(datamodule).__name__}." if datamodule is not None else ""
        self._strategy_prefix = f"[Strategy]{_strategy_class_name(trainer)}."
        self._open: list[str] = []  # loop phases started and not yet stopped
        attach = getattr(self.profiler, "_attach_module", None)
        if attach is not None:
            attach(module)

    # --- what the loop asks -------------------------------------------------------------------------------
    def uses_default(self, name: str) -> bool:
        return False  # call every hook through the dispatcher, so that each one is recorded

    def profile_step(self, name: str) -> Any:
        return self.profiler.profile(self._strategy_prefix + name)

    # --- dispatch -------------------------------------------------------------------------------------------
    def _callback_methods(self, name: str, after_module: bool | None) -> list:
        key = (name, after_module)
        methods = self._cb_cache.get(key)
        if methods is None:
            methods = []
            for cb in self.callbacks:
                method = getattr(cb, name, None)
                if method is None or (after_module is not None and
                                      getattr(cb, "runs_after_module_epoch_end", False) != after_module):
                    continue
                methods.append(functools.partial(self._timed, f"[Callback]{cb.state_key}.{name}", method))
            self._cb_cache[key] = methods
        return methods

    def _timed(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with self.profiler.profile(action):
            return fn(*args, **kwargs)

    def callbacks_hook(self, name: str, *args: Any, after_module: bool | None = None, **kwargs: Any) -> None:
        if name == "on_train_batch_end":
            self._stop_phase("run_training_batch")
        elif name == "on_train_epoch_end" and after_module is not True:
            self._stop_phase("run_training_epoch")
        elif name == "on_exception":
            while self._open:
                self._stop_phase(self._open[-1])
        super().callbacks_hook(name, *args, after_module=after_module, **kwargs)

    def module_hook(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in self._lm_skip:
            return None
        if name in _STRATEGY_HOOKS:
            if not self.module.automatic_optimization:  # manual_backward: Lightning does not record it
                return super().module_hook(name, *args, **kwargs)
            prefix = self._strategy_prefix
        else:
            prefix = self._lm_prefix
        with self.profiler.profile(prefix + name):
            out = super().module_hook(name, *args, **kwargs)
        if name == "on_train_epoch_start":
            self._start_phase("run_training_epoch")
        elif name == "on_train_batch_start" and out != -1:
            self._start_phase("run_training_batch")
        return out

    def datamodule_hook(self, name: str, *args: Any, **kwargs: Any) -> Any:
        # as in Lightning: every datamodule hook is called (and recorded), prepare_data only when overridden
        dm = self.datamodule
        if dm is None or (name == "prepare_data" and not overrides(dm, name, self._dm_base)):
            return None
        prev = self.module._current_fx_name
        self.module.__dict__["_current_fx_name"] = name
        try:
            with self.profiler.profile(self._dm_prefix + name):
                return getattr(dm, name)(*args, **kwargs)
        finally:
            self.module.__dict__["_current_fx_name"] = prev

    def _start_phase(self, action: str) -> None:
        if action not in self._open:
            self._open.append(action)
            self.profiler.start(action)

    def _stop_phase(self, action: str) -> None:
        if action in self._open:
            self._open.remove(action)
            self.profiler.stop(action)
