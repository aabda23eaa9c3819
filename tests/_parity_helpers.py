"""Shared machinery for the differential (Lightning vs raylit) tests.

Every test program is a function ``program(pl, root) -> result`` that only touches the framework through the
module object ``pl`` (``pytorch_lightning`` or ``raylit``): ``pl.LightningModule``, ``pl.Trainer``,
``pl.Callback``, ``pl.LightningDataModule``, ``pl.seed_everything``. Classes are built from ``pl`` inside the
program (``make_classes(pl)``), so the very same source runs under both frameworks and the results can be
compared directly.

Run ``python tests/_parity_helpers.py [OUT]`` to write Lightning's observed hook sequences for every
configuration in ``HOOK_CONFIGS`` (default ``/tmp/lightning_hook_orders.txt``).
"""

from __future__ import annotations

import difflib
import importlib
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

REFERENCE = "pytorch_lightning"
FRAMEWORKS = (REFERENCE, "raylit")

# Trainer kwargs that keep both frameworks quiet and comparable.
QUIET = {
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "logger": False,
    "enable_checkpointing": False,
}

# Noise Lightning emits for tiny CPU programs; none of it is a failure.
NOISY_WARNINGS = (
    r".*does not have many workers.*",
    r".*The number of training batches.*",
    r".*smaller than the logging interval.*",
    r".*GPU available.*",
    r".*Trying to infer the `batch_size`.*",
    r".*LightningModule.configure_optimizers. returned .None.*",
    r".*`max_epochs` was not set.*",
    r".*You defined a `validation_step` but have no `val_dataloader`.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*You requested to overfit but enabled .* dataloader shuffling.*",
    r".*Total length of .* across ranks is zero.*",
    r".*is discouraged.*",
    r".*bf16.* is supported for historical reasons.*",
    r".*16-mixed.* is not supported .* CPU.*",
    r".*Consider setting `persistent_workers=True`.*",
    r".*`training_step` returned `None`.*",
    r".*The `srun` command is available.*",
    r".*You have overridden `.*` in .*LightningDataModule.*",
    r".*isinstance.treespec, LeafSpec.*",
)


def quiet_warnings() -> None:
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def quiet_logging() -> None:
    """Silence the INFO chatter ("GPU available ...") of both frameworks; call after importing them."""
    import logging

    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "raylit"):
        logging.getLogger(name).setLevel(logging.WARNING)


def import_framework(name: str):
    mod = importlib.import_module(name)
    return mod


def submodule(pl, name: str):
    """``pl.callbacks`` / ``pl.loggers`` imported explicitly (it may not be an attribute yet)."""
    return importlib.import_module(f"{pl.__name__}.{name}")


# ----------------------------------------------------------------------------------------------------------
# Data: plain torch, identical for both frameworks and independent of the global RNG.
# ----------------------------------------------------------------------------------------------------------
class TensorRows(Dataset):
    def __init__(self, length: int, size: int = 32, seed: int = 1234) -> None:
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randn(length, size, generator=g)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[i]


class IterableRows(torch.utils.data.IterableDataset):
    """The rows of ``TensorRows`` as an iterable dataset without ``__len__``."""

    def __init__(self, length: int, size: int = 32, seed: int = 1234) -> None:
        self.rows = TensorRows(length, size, seed)

    def __iter__(self):
        return iter(self.rows.data)


def loader(length: int = 8, batch_size: int = 2, seed: int = 1234, shuffle: bool = False, size: int = 32):
    return DataLoader(TensorRows(length, size, seed), batch_size=batch_size, shuffle=shuffle)


# ----------------------------------------------------------------------------------------------------------
# Recording
# ----------------------------------------------------------------------------------------------------------
class _Missing:
    def __repr__(self) -> str:
        return "-"


NOT_PASSED = _Missing()


def _fmt_value(v: Any) -> str:
    if v is NOT_PASSED:
        return "-"
    v = getattr(v, "value", v)  # str enums such as TrainerFn
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def fmt_call(who: str, name: str, **kw: Any) -> str:
    if not kw:
        return f"{who}.{name}"
    return f"{who}.{name}(" + ", ".join(f"{k}={_fmt_value(v)}" for k, v in kw.items()) + ")"


def _outputs_summary(outputs: Any) -> str:
    if outputs is None:
        return "None"
    if isinstance(outputs, dict):
        return "dict[" + ",".join(sorted(map(str, outputs))) + "]"
    if isinstance(outputs, torch.Tensor):
        return "Tensor"
    return type(outputs).__name__


# name -> names of the positional args after (trainer, pl_module) that we record; "*" marks an arg we
# summarise, "~" an arg we drop.
CALLBACK_HOOKS: dict[str, tuple[str, ...]] = {
    "setup": ("stage",),
    "teardown": ("stage",),
    "on_fit_start": (),
    "on_fit_end": (),
    "on_sanity_check_start": (),
    "on_sanity_check_end": (),
    "on_train_start": (),
    "on_train_end": (),
    "on_train_epoch_start": (),
    "on_train_epoch_end": (),
    "on_train_batch_start": ("~batch", "batch_idx"),
    "on_train_batch_end": ("*outputs", "~batch", "batch_idx"),
    "on_validation_start": (),
    "on_validation_end": (),
    "on_validation_epoch_start": (),
    "on_validation_epoch_end": (),
    "on_validation_batch_start": ("~batch", "batch_idx", "dataloader_idx"),
    "on_validation_batch_end": ("*outputs", "~batch", "batch_idx", "dataloader_idx"),
    "on_test_start": (),
    "on_test_end": (),
    "on_test_epoch_start": (),
    "on_test_epoch_end": (),
    "on_test_batch_start": ("~batch", "batch_idx", "dataloader_idx"),
    "on_test_batch_end": ("*outputs", "~batch", "batch_idx", "dataloader_idx"),
    "on_predict_start": (),
    "on_predict_end": (),
    "on_predict_epoch_start": (),
    "on_predict_epoch_end": (),
    "on_predict_batch_start": ("~batch", "batch_idx", "dataloader_idx"),
    "on_predict_batch_end": ("*outputs", "~batch", "batch_idx", "dataloader_idx"),
    "on_exception": ("*exception",),
    "on_save_checkpoint": ("~checkpoint",),
    "on_load_checkpoint": ("~checkpoint",),
    "on_before_backward": ("~loss",),
    "on_after_backward": (),
    "on_before_optimizer_step": ("~optimizer",),
    "on_before_zero_grad": ("~optimizer",),
}

# LightningModule hooks recorded generically (the step methods are written out in HookedModel).
MODULE_HOOKS: dict[str, tuple[str, ...]] = {
    "prepare_data": (),
    "setup": ("stage",),
    "teardown": ("stage",),
    "configure_model": (),
    "on_fit_start": (),
    "on_fit_end": (),
    "on_train_start": (),
    "on_train_end": (),
    "on_train_epoch_start": (),
    "on_train_epoch_end": (),
    "on_train_batch_start": ("~batch", "batch_idx"),
    "on_train_batch_end": ("*outputs", "~batch", "batch_idx"),
    "on_validation_start": (),
    "on_validation_end": (),
    "on_validation_epoch_start": (),
    "on_validation_epoch_end": (),
    "on_validation_batch_start": ("~batch", "batch_idx", "dataloader_idx"),
    "on_validation_batch_end": ("*outputs", "~batch", "batch_idx", "dataloader_idx"),
    "on_validation_model_eval": (),
    "on_validation_model_train": (),
    "on_validation_model_zero_grad": (),
    "on_test_start": (),
    "on_test_end": (),
    "on_test_epoch_start": (),
    "on_test_epoch_end": (),
    "on_test_batch_start": ("~batch", "batch_idx", "dataloader_idx"),
    "on_test_batch_end": ("*outputs", "~batch", "batch_idx", "dataloader_idx"),
    "on_test_model_eval": (),
    "on_test_model_train": (),
    "on_predict_start": (),
    "on_predict_end": (),
    "on_predict_epoch_start": (),
    "on_predict_epoch_end": (),
    "on_predict_batch_start": ("~batch", "batch_idx", "dataloader_idx"),
    "on_predict_batch_end": ("*outputs", "~batch", "batch_idx", "dataloader_idx"),
    "on_predict_model_eval": (),
    "on_before_batch_transfer": ("~batch", "dataloader_idx"),
    "transfer_batch_to_device": ("~batch", "~device", "dataloader_idx"),
    "on_after_batch_transfer": ("~batch", "dataloader_idx"),
    "on_before_backward": ("~loss",),
    "backward": ("~loss",),
    "on_after_backward": (),
    "on_before_optimizer_step": ("~optimizer",),
    "configure_gradient_clipping": ("~optimizer", "gradient_clip_val", "gradient_clip_algorithm"),
    "optimizer_step": ("epoch", "batch_idx", "~optimizer", "~optimizer_closure"),
    "optimizer_zero_grad": ("epoch", "batch_idx", "~optimizer"),
    "on_before_zero_grad": ("~optimizer",),
    "lr_scheduler_step": ("~scheduler", "*metric"),
    "on_save_checkpoint": ("~checkpoint",),
    "on_load_checkpoint": ("~checkpoint",),
}

DATAMODULE_HOOKS: dict[str, tuple[str, ...]] = {
    "prepare_data": (),
    "setup": ("stage",),
    "teardown": ("stage",),
    "on_exception": ("*exception",),
}

DATAMODULE_TRANSFER_HOOKS: dict[str, tuple[str, ...]] = {
    "on_before_batch_transfer": ("~batch", "dataloader_idx"),
    "transfer_batch_to_device": ("~batch", "~device", "dataloader_idx"),
    "on_after_batch_transfer": ("~batch", "dataloader_idx"),
}


def _bind(spec: tuple[str, ...], args: tuple, kwargs: dict) -> dict[str, Any]:
    """Map positional/keyword args onto ``spec`` names; args never passed show up as ``-``."""
    out: dict[str, Any] = {}
    for i, raw in enumerate(spec):
        marker, name = (raw[0], raw[1:]) if raw[0] in "*~" else ("", raw)
        if i < len(args):
            v = args[i]
        elif name in kwargs:
            v = kwargs[name]
        else:
            v = NOT_PASSED
        if marker == "~":
            continue
        if marker == "*":
            if name == "outputs":
                v = _outputs_summary(v)
            elif name == "metric":
                v = "None" if v is None or v is NOT_PASSED else "value"
            elif name == "exception":
                v = type(v).__name__
        out[name] = v
    return out


def _recording_method(who: str, name: str, spec: tuple[str, ...], call_super: Callable | None):
    skip = 2 if who == "CB" else 0  # callback hooks get (trainer, pl_module, ...)

    def method(self, *args, **kwargs):
        if self._record_hooks:
            self.calls.append(fmt_call(getattr(self, "_who", who), name, **_bind(spec, args[skip:], kwargs)))
        if call_super is None:
            return None
        return call_super(self, name, *args, **kwargs)

    method.__name__ = name
    return method


def _module_super(cls_getter):
    def call(self, name, *args, **kwargs):
        parent = getattr(super(cls_getter(), self), name, None)
        return parent(*args, **kwargs) if parent is not None else None

    return call


@cache
def make_classes(pl) -> SimpleNamespace:
    """Hook-recording LightningModule / Callback / DataModule built from the framework module ``pl``."""

    # ---------------------------------------------------------------- callback
    cb_ns: dict[str, Any] = {}
    for hook, spec in CALLBACK_HOOKS.items():
        cb_ns[hook] = _recording_method("CB", hook, spec, None)

    def cb_init(self, calls: list, record_state_dict: bool = False, who: str = "CB"):
        self.calls = calls
        self._record_hooks = True
        self.record_state_dict = record_state_dict
        self._who = who

    def cb_state_dict(self):
        if self.record_state_dict:
            self.calls.append(f"{self._who}.state_dict")
        return {}

    def cb_state_key(self):
        return f"{type(self).__qualname__}[{self._who}]"

    cb_ns["__init__"] = cb_init
    cb_ns["state_dict"] = cb_state_dict
    cb_ns["state_key"] = property(cb_state_key)
    HookedCallback = type("HookedCallback", (pl.Callback,), cb_ns)
    # a sibling type: returned from configure_callbacks it is added, not substituted for HookedCallback
    ExtraHookedCallback = type("ExtraHookedCallback", (pl.Callback,), dict(cb_ns))

    # ---------------------------------------------------------------- module
    class HookedModel(pl.LightningModule):
        """Linear(32, 2), MSE against ones; every hook appends to ``calls``.

        opt: "sgd" | "adam"; sched: None | "epoch" | "step" | "plateau"; manual: manual optimisation with
        one optimizer; n_val/n_test/n_predict: how many eval dataloaders (1 or 2)."""

        def __init__(
            self,
            calls: list,
            *,
            manual: bool = False,
            sched: str | None = "epoch",
            n_val: int = 1,
            n_test: int = 1,
            n_predict: int = 1,
            train_len: int = 8,
            eval_len: int = 8,
            batch_size: int = 2,
            raise_at: int | None = None,
            raise_interrupt: bool = False,
            extra_callback: str | None = None,
        ) -> None:
            super().__init__()
            self.calls = calls
            self._record_hooks = True
            self.raise_at = raise_at
            self.raise_interrupt = raise_interrupt
            self.extra_callback = extra_callback
            self.layer = nn.Linear(32, 2)
            self.sched = sched
            self.n_val, self.n_test, self.n_predict = n_val, n_test, n_predict
            self.train_len, self.eval_len, self.batch_size = train_len, eval_len, batch_size
            if manual:
                self.automatic_optimization = False

        def forward(self, x):
            return self.layer(x)

        def loss(self, batch):
            out = self(batch)
            return nn.functional.mse_loss(out, torch.ones_like(out))

        def _rec(self, name, **kw):
            if self._record_hooks:
                self.calls.append(fmt_call("LM", name, **kw))

        def training_step(self, batch, batch_idx):
            self._rec("training_step", batch_idx=batch_idx)
            if batch_idx == self.raise_at and self.raise_interrupt:
                raise KeyboardInterrupt  # Ctrl-C in the middle of training
            if batch_idx == self.raise_at:
                raise ValueError(f"training_step failed on purpose at batch {batch_idx}")
            loss = self.loss(batch)
            if not self.automatic_optimization:
                opt = self.optimizers()
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
            return {"loss": loss}

        def validation_step(self, batch, batch_idx, dataloader_idx=NOT_PASSED):
            self._rec("validation_step", batch_idx=batch_idx, dataloader_idx=dataloader_idx)
            loss = self.loss(batch)
            self.log("val_loss", loss)
            return {"x": loss}

        def test_step(self, batch, batch_idx, dataloader_idx=NOT_PASSED):
            self._rec("test_step", batch_idx=batch_idx, dataloader_idx=dataloader_idx)
            return {"y": self.loss(batch)}

        def predict_step(self, batch, batch_idx, dataloader_idx=NOT_PASSED):
            self._rec("predict_step", batch_idx=batch_idx, dataloader_idx=dataloader_idx)
            return self(batch)

        def configure_callbacks(self):
            self._rec("configure_callbacks")
            if self.extra_callback == "sibling":  # added after the Trainer's callbacks
                return [ExtraHookedCallback(self.calls, who="CB2")]
            if self.extra_callback == "same_type":  # replaces the Trainer's HookedCallback
                return HookedCallback(self.calls, who="CB2")
            return []

        def configure_optimizers(self):
            self._rec("configure_optimizers")
            opt = torch.optim.SGD(self.layer.parameters(), lr=0.1)
            if self.sched is None:
                return opt
            if self.sched == "epoch":
                return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1)]
            if self.sched == "step":
                sch = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "interval": "step"}}
            if self.sched == "plateau":
                sch = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
                return {"optimizer": opt, "lr_scheduler": sch, "monitor": "val_loss"}
            raise AssertionError(self.sched)

        def _loaders(self, n, seed):
            dls = [loader(self.eval_len, self.batch_size, seed=seed + i) for i in range(n)]
            return dls[0] if n == 1 else dls

        def train_dataloader(self):
            self._rec("train_dataloader")
            return loader(self.train_len, self.batch_size, seed=1)

        def val_dataloader(self):
            self._rec("val_dataloader")
            return self._loaders(self.n_val, 10)

        def test_dataloader(self):
            self._rec("test_dataloader")
            return self._loaders(self.n_test, 20)

        def predict_dataloader(self):
            self._rec("predict_dataloader")
            return self._loaders(self.n_predict, 30)

    call_super = _module_super(lambda: HookedModel)
    for hook, spec in MODULE_HOOKS.items():
        setattr(HookedModel, hook, _recording_method("LM", hook, spec, call_super))

    # ---------------------------------------------------------------- datamodule
    class HookedDataModule(pl.LightningDataModule):
        def __init__(
            self,
            calls: list,
            *,
            n_val: int = 1,
            n_test: int = 1,
            n_predict: int = 1,
            train_len: int = 8,
            eval_len: int = 8,
            batch_size: int = 2,
            record_state_dict: bool = False,
        ) -> None:
            super().__init__()
            self.calls = calls
            self._record_hooks = True
            self.n_val, self.n_test, self.n_predict = n_val, n_test, n_predict
            self.train_len, self.eval_len, self.batch_size = train_len, eval_len, batch_size
            self.record_state_dict = record_state_dict

        def _rec(self, name, **kw):
            self.calls.append(fmt_call("DM", name, **kw))

        def _loaders(self, n, seed):
            dls = [loader(self.eval_len, self.batch_size, seed=seed + i) for i in range(n)]
            return dls[0] if n == 1 else dls

        def train_dataloader(self):
            self._rec("train_dataloader")
            return loader(self.train_len, self.batch_size, seed=1)

        def val_dataloader(self):
            self._rec("val_dataloader")
            return self._loaders(self.n_val, 10)

        def test_dataloader(self):
            self._rec("test_dataloader")
            return self._loaders(self.n_test, 20)

        def predict_dataloader(self):
            self._rec("predict_dataloader")
            return self._loaders(self.n_predict, 30)

        def state_dict(self):
            if self.record_state_dict:
                self._rec("state_dict")
            return {}

    dm_super = _module_super(lambda: HookedDataModule)
    for hook, spec in DATAMODULE_HOOKS.items():
        setattr(HookedDataModule, hook, _recording_method("DM", hook, spec, dm_super))

    class HookedTransferDataModule(HookedDataModule):
        """Also overrides the three batch-transfer hooks (the DataModule's win over the module's)."""

    tdm_super = _module_super(lambda: HookedTransferDataModule)
    for hook, spec in DATAMODULE_TRANSFER_HOOKS.items():
        setattr(HookedTransferDataModule, hook, _recording_method("DM", hook, spec, tdm_super))

    return SimpleNamespace(
        HookedModel=HookedModel,
        HookedCallback=HookedCallback,
        HookedDataModule=HookedDataModule,
        HookedTransferDataModule=HookedTransferDataModule,
    )


# ----------------------------------------------------------------------------------------------------------
# Hook-order configurations
# ----------------------------------------------------------------------------------------------------------
_SMALL = {"limit_train_batches": 2, "limit_val_batches": 2, "max_epochs": 2}


@dataclass
class HookConfig:
    entries: tuple[str, ...] = ("fit",)
    trainer: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    datamodule: str | None = (
        "plain"  # None: the module's own loaders; "transfer": DM overrides transfer hooks
    )
    dm: dict = field(default_factory=dict)
    record_state_dict: bool = False  # record CB.state_dict / DM.state_dict (checkpoint saves)
    description: str = ""


HOOK_CONFIGS: dict[str, HookConfig] = {
    "fit_default": HookConfig(
        trainer=dict(_SMALL), description="sanity check (2 batches), 2 epochs x 2 batches"
    ),
    "fit_no_datamodule": HookConfig(
        trainer=dict(_SMALL), datamodule=None, description="the module's own *_dataloader methods"
    ),
    "fit_datamodule_transfer_hooks": HookConfig(
        trainer={
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "max_epochs": 1,
            "num_sanity_val_steps": 1,
        },
        datamodule="transfer",
        description="the DataModule overrides the batch-transfer hooks",
    ),
    "fit_accumulate_2": HookConfig(
        trainer={
            "limit_train_batches": 3,
            "limit_val_batches": 1,
            "max_epochs": 2,
            "accumulate_grad_batches": 2,
        },
        description="accumulate_grad_batches=2 over 3 batches (steps on batch 1 and on the last batch)",
    ),
    "fit_manual": HookConfig(
        trainer=dict(_SMALL), model={"manual": True}, description="manual optimisation, one optimizer"
    ),
    "fit_val_check_interval_half": HookConfig(
        trainer={
            "limit_train_batches": 4,
            "limit_val_batches": 1,
            "max_epochs": 1,
            "val_check_interval": 0.5,
        },
        description="validation twice per epoch",
    ),
    "fit_gradient_clip": HookConfig(
        trainer={"limit_train_batches": 2, "limit_val_batches": 1, "max_epochs": 1, "gradient_clip_val": 0.5},
        description="gradient_clip_val=0.5 (norm)",
    ),
    "fit_step_scheduler": HookConfig(
        trainer={"limit_train_batches": 2, "limit_val_batches": 1, "max_epochs": 2},
        model={"sched": "step"},
        description="interval='step' scheduler",
    ),
    "fit_plateau_scheduler": HookConfig(
        trainer={"limit_train_batches": 2, "limit_val_batches": 1, "max_epochs": 2},
        model={"sched": "plateau"},
        description="ReduceLROnPlateau monitoring val_loss",
    ),
    "fit_no_scheduler_no_sanity": HookConfig(
        trainer={
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "max_epochs": 1,
            "num_sanity_val_steps": 0,
        },
        model={"sched": None},
        description="plain optimizer, num_sanity_val_steps=0",
    ),
    "fit_two_val_loaders": HookConfig(
        trainer={"limit_train_batches": 1, "limit_val_batches": 2, "max_epochs": 1},
        model={"n_val": 2},
        dm={"n_val": 2},
        description="two val dataloaders (dataloader_idx passed)",
    ),
    "fit_checkpointing": HookConfig(
        trainer={
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "max_epochs": 2,
            "enable_checkpointing": True,
        },
        record_state_dict=True,
        description="default ModelCheckpoint on: save-hook order",
    ),
    "fit_accumulate_val_every_batch": HookConfig(
        trainer={
            "limit_train_batches": 3,
            "limit_val_batches": 1,
            "max_epochs": 1,
            "accumulate_grad_batches": 2,
            "val_check_interval": 1,
            "num_sanity_val_steps": 0,
        },
        description="validation after every batch while accumulating (zero_grad only at window boundaries)",
    ),
    "fit_configure_callbacks_extra": HookConfig(
        trainer={"limit_train_batches": 1, "limit_val_batches": 1, "max_epochs": 1},
        model={"extra_callback": "sibling"},
        description="configure_callbacks returns another callback (CB2): it runs after CB",
    ),
    "fit_configure_callbacks_replace": HookConfig(
        trainer={"limit_train_batches": 1, "limit_val_batches": 1, "max_epochs": 1},
        model={"extra_callback": "same_type"},
        description="configure_callbacks returns a callback of the Trainer callback's type (CB2): it replaces CB",
    ),
    "fit_reload_dataloaders": HookConfig(
        trainer={
            "limit_train_batches": 1,
            "limit_val_batches": 1,
            "max_epochs": 3,
            "reload_dataloaders_every_n_epochs": 1,
        },
        description="reload_dataloaders_every_n_epochs=1",
    ),
    "fit_exception": HookConfig(
        trainer={"limit_train_batches": 3, "limit_val_batches": 1, "max_epochs": 1},
        model={"raise_at": 1},
        description="training_step raises ValueError on batch 1: on_exception hooks, then the error propagates",
    ),
    "fit_keyboard_interrupt": HookConfig(
        trainer={"limit_train_batches": 3, "limit_val_batches": 1, "max_epochs": 1},
        model={"raise_at": 1, "raise_interrupt": True},
        description="KeyboardInterrupt in training_step: on_exception hooks, then what the Trainer does",
    ),
    "fit_then_validate_test": HookConfig(
        entries=("fit", "validate", "test"),
        trainer={"limit_train_batches": 1, "limit_val_batches": 1, "limit_test_batches": 1, "max_epochs": 1},
        description="one Trainer: fit, then validate, then test",
    ),
    "validate": HookConfig(entries=("validate",), trainer={"limit_val_batches": 2}),
    "validate_two_loaders": HookConfig(
        entries=("validate",), trainer={"limit_val_batches": 2}, model={"n_val": 2}, dm={"n_val": 2}
    ),
    "validate_no_datamodule": HookConfig(
        entries=("validate",), trainer={"limit_val_batches": 2}, datamodule=None
    ),
    "test": HookConfig(entries=("test",), trainer={"limit_test_batches": 2}),
    "test_two_loaders": HookConfig(
        entries=("test",), trainer={"limit_test_batches": 2}, model={"n_test": 2}, dm={"n_test": 2}
    ),
    "predict": HookConfig(entries=("predict",), trainer={"limit_predict_batches": 2}),
    "predict_two_loaders": HookConfig(
        entries=("predict",),
        trainer={"limit_predict_batches": 2},
        model={"n_predict": 2},
        dm={"n_predict": 2},
    ),
}


def run_hook_config(pl, name: str, root) -> list[str]:
    """Run one HOOK_CONFIGS entry under ``pl``; return the recorded call sequence."""
    cfg = HOOK_CONFIGS[name]
    classes = make_classes(pl)
    calls: list[str] = []
    pl.seed_everything(0, verbose=False)
    model = classes.HookedModel(calls, **cfg.model)
    dm = None
    if cfg.datamodule == "plain":
        dm = classes.HookedDataModule(calls, record_state_dict=cfg.record_state_dict, **cfg.dm)
    elif cfg.datamodule == "transfer":
        dm = classes.HookedTransferDataModule(calls, **cfg.dm)
    cb = classes.HookedCallback(calls, record_state_dict=cfg.record_state_dict)
    kwargs = dict(QUIET)
    kwargs.update(cfg.trainer)
    trainer = pl.Trainer(default_root_dir=str(root), callbacks=[cb], **kwargs)
    for entry in cfg.entries:
        calls.append(f"## trainer.{entry}")
        fn = getattr(trainer, entry)
        kw = {"verbose": False} if entry in ("validate", "test") else {}
        if dm is not None:
            kw["datamodule"] = dm
        try:
            fn(model, **kw)
        except (Exception, KeyboardInterrupt, SystemExit) as err:  # noqa: BLE001 - recorded, so the on_exception/teardown order can be compared
            code = f" code={err.code}" if isinstance(err, SystemExit) else ""
            calls.append(f"## raised {type(err).__name__}{code} interrupted={trainer.interrupted}")
            break
    return calls


# ----------------------------------------------------------------------------------------------------------
# Comparisons
# ----------------------------------------------------------------------------------------------------------
def assert_same_sequence(expected: list[str], actual: list[str], what: str = "hook calls") -> None:
    if expected == actual:
        return
    first = next(
        (i for i, (a, b) in enumerate(zip(expected, actual)) if a != b),
        min(len(expected), len(actual)),
    )
    exp_at = expected[first] if first < len(expected) else "<end>"
    act_at = actual[first] if first < len(actual) else "<end>"
    diff = "\n".join(difflib.unified_diff(expected, actual, "lightning", "raylit", n=3, lineterm=""))
    raise AssertionError(
        f"{what} differ at index {first}: expected {exp_at!r}, got {act_at!r} "
        f"(lengths {len(expected)} vs {len(actual)})\n{diff}"
    )


def to_float_dict(d: dict) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().float().item() if v.numel() == 1 else v.detach().double().tolist()
        out[str(k)] = v
    return out


def assert_close_values(
    expected: Any, actual: Any, rtol: float = 1e-5, atol: float = 1e-6, path: str = ""
) -> None:
    """Structural comparison: dicts by key, sequences by position, numbers/tensors with allclose."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected dict, got {type(actual).__name__}: {actual!r}"
        assert set(expected) == set(actual), (
            f"{path}: keys differ\n  only in lightning: {sorted(set(expected) - set(actual))}"
            f"\n  only in raylit: {sorted(set(actual) - set(expected))}"
        )
        for k in expected:
            assert_close_values(expected[k], actual[k], rtol, atol, f"{path}[{k!r}]")
        return
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)), f"{path}: expected sequence, got {type(actual).__name__}"
        assert len(expected) == len(actual), f"{path}: length {len(expected)} != {len(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_close_values(e, a, rtol, atol, f"{path}[{i}]")
        return
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{path}: expected Tensor, got {type(actual).__name__}"
        assert expected.shape == actual.shape, (
            f"{path}: shape {tuple(expected.shape)} != {tuple(actual.shape)}"
        )
        assert expected.dtype == actual.dtype, f"{path}: dtype {expected.dtype} != {actual.dtype}"
        if not torch.allclose(expected.double(), actual.double(), rtol=rtol, atol=atol, equal_nan=True):
            delta = (expected.double() - actual.double()).abs().max().item()
            raise AssertionError(f"{path}: tensors differ (max abs diff {delta:.3g})\n{expected}\n{actual}")
        return
    if isinstance(expected, float) or isinstance(actual, float):
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool), (
            f"{path}: expected number {expected!r}, got {actual!r}"
        )
        if math.isnan(expected):
            assert math.isnan(actual), f"{path}: expected nan, got {actual}"
            return
        assert math.isclose(expected, actual, rel_tol=rtol, abs_tol=atol), (
            f"{path}: {expected!r} != {actual!r}"
        )
        return
    assert expected == actual, f"{path}: {expected!r} != {actual!r}"


def exception_family(exc: BaseException) -> str:
    """Coarse class of an exception, comparable across frameworks."""
    names = [c.__name__ for c in type(exc).__mro__]
    if "MisconfigurationException" in names:
        return "MisconfigurationException"
    for fam in (
        "NotImplementedError",
        "TypeError",
        "ValueError",
        "KeyError",
        "AttributeError",
        "RuntimeError",
    ):
        if fam in names:
            return fam
    return "Exception"


# ----------------------------------------------------------------------------------------------------------
# Dump of Lightning's hook orders (for the engine author)
# ----------------------------------------------------------------------------------------------------------
def dump_lightning_hook_orders(path: str = "/tmp/lightning_hook_orders.txt") -> None:
    import tempfile

    quiet_warnings()
    pl = import_framework(REFERENCE)
    quiet_logging()
    lines = [
        f"# Lightning {pl.__version__} observed hook order; generated by tests/_parity_helpers.py",
        "# LM = LightningModule, CB = Callback, DM = LightningDataModule; '-' = argument not passed",
        "# Trainer kwargs always include " + ", ".join(f"{k}={v}" for k, v in QUIET.items()),
        "",
    ]
    for name, cfg in HOOK_CONFIGS.items():
        with tempfile.TemporaryDirectory() as root:
            calls = run_hook_config(pl, name, root)
        lines.append(f"=== {name}: {cfg.description}".rstrip(": "))
        lines.append(
            f"# entries={list(cfg.entries)} trainer={cfg.trainer} model={cfg.model} datamodule={cfg.datamodule}"
        )
        lines.extend(calls)
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {path} ({len(lines)} lines)")


if __name__ == "__main__":
    dump_lightning_hook_orders(sys.argv[1] if len(sys.argv) > 1 else "/tmp/lightning_hook_orders.txt")


def fit_quietly(pl, model, root, **kwargs):
    """``pl.Trainer(...).fit(model)`` for one epoch with QUIET settings (``kwargs`` win), warnings ignored."""
    trainer = pl.Trainer(default_root_dir=root, **{**QUIET, "max_epochs": 1, **kwargs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model)
    return trainer
