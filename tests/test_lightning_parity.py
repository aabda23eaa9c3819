"""Differential tests: the same user program under PyTorch Lightning and under raylit must behave the same.

Every test is parametrised over the framework module ``pl`` (``pytorch_lightning`` | ``raylit``) and builds its
classes from ``pl`` inside the test. Each program runs under real Lightning first (the reference, cached per
session); then

* the ``pytorch_lightning`` variant runs it under Lightning a second time and compares, which proves the
  program is deterministic and the comparison is meaningful (these pass today, without raylit);
* the ``raylit`` variant runs it under raylit and compares with the Lightning result.

No golden files: Lightning 2.6 *is* the specification.
"""

from __future__ import annotations

import collections
import warnings
from functools import cache
from types import SimpleNamespace

import _parity_helpers as H
import numpy as np
import pytest
import torch
from torch import nn

pytestmark = [pytest.mark.filterwarnings(f"ignore:{p}") for p in H.NOISY_WARNINGS]

H.quiet_warnings()


@pytest.fixture(params=H.FRAMEWORKS)
def pl(request):
    """The framework module: user code writes ``pl.LightningModule``, ``pl.Trainer``, ``pl.Callback`` ..."""
    name = request.param
    try:
        mod = H.import_framework(name)
    except Exception as err:  # noqa: BLE001 - raylit not importable yet: a failure, not a skip
        pytest.fail(f"`import {name}` failed: {type(err).__name__}: {err}")
    missing = [
        a
        for a in ("LightningModule", "LightningDataModule", "Trainer", "Callback", "seed_everything")
        if not hasattr(mod, a)
    ]
    if missing:
        pytest.fail(f"{name} does not export {missing}")
    H.quiet_logging()
    return mod


def differential(pl, key, program, compare, tmp_path, cache):
    """Run ``program(framework, root)`` under Lightning (cached) and under ``pl``; ``compare(expected, actual)``."""
    ref = H.import_framework(H.REFERENCE)
    if key not in cache:
        cache[key] = program(ref, tmp_path / "lightning")
    expected = cache[key]
    actual = program(pl, tmp_path / ("lightning_again" if pl is ref else pl.__name__))
    compare(expected, actual)
    return expected, actual


def is_reference(pl) -> bool:
    return pl.__name__ == H.REFERENCE


# ==========================================================================================================
# 1. Hook order
# ==========================================================================================================
@pytest.mark.parametrize("config", list(H.HOOK_CONFIGS))
def test_hook_order(pl, config, tmp_path, lightning_reference):
    differential(
        pl,
        ("hooks", config),
        lambda fw, root: H.run_hook_config(fw, config, root),
        lambda e, a: H.assert_same_sequence(e, a, f"hook calls [{config}]"),
        tmp_path,
        lightning_reference,
    )


REQUIRED_FIT_HOOKS = {
    "LM.configure_callbacks",
    "LM.prepare_data",
    "DM.prepare_data",
    "DM.setup",
    "CB.setup",
    "LM.setup",
    "LM.configure_model",
    "LM.configure_optimizers",
    "CB.on_fit_start",
    "LM.on_fit_start",
    "CB.on_sanity_check_start",
    "CB.on_sanity_check_end",
    "LM.on_validation_model_eval",
    "LM.on_validation_model_train",
    "LM.on_validation_model_zero_grad",
    "LM.on_before_batch_transfer",
    "LM.transfer_batch_to_device",
    "LM.on_after_batch_transfer",
    "LM.optimizer_step",
    "LM.training_step",
    "LM.on_before_zero_grad",
    "CB.on_before_zero_grad",
    "LM.optimizer_zero_grad",
    "LM.on_before_backward",
    "LM.backward",
    "LM.on_after_backward",
    "CB.on_before_optimizer_step",
    "LM.on_before_optimizer_step",
    "LM.configure_gradient_clipping",
    "LM.lr_scheduler_step",
    "CB.on_train_batch_end",
    "LM.on_train_epoch_end",
    "DM.teardown",
    "CB.teardown",
    "LM.teardown",
    "CB.on_fit_end",
    "LM.on_fit_end",
}


def test_hook_recorder_covers_required_hooks(tmp_path):
    """Guards the recorder itself (Lightning only): the fit trace contains every hook the suite promises."""
    ref = H.import_framework(H.REFERENCE)
    H.quiet_logging()
    names = {c.split("(")[0] for c in H.run_hook_config(ref, "fit_default", tmp_path)}
    assert REQUIRED_FIT_HOOKS <= names, sorted(REQUIRED_FIT_HOOKS - names)
    ckpt = {c.split("(")[0] for c in H.run_hook_config(ref, "fit_checkpointing", tmp_path / "ckpt")}
    assert {"CB.on_save_checkpoint", "LM.on_save_checkpoint", "CB.state_dict", "DM.state_dict"} <= ckpt
    exc = H.run_hook_config(ref, "fit_exception", tmp_path / "exc")
    assert "CB.on_exception(exception=ValueError)" in exc and "DM.on_exception(exception=ValueError)" in exc


# ==========================================================================================================
# 2. Trainer state seen from inside the hooks
# ==========================================================================================================
STATE_CONFIGS = [
    "fit_default",
    "fit_accumulate_2",
    "fit_manual",
    "fit_val_check_interval_half",
    "fit_then_validate_test",
    "predict",
]


@cache
def state_callback_cls(pl):
    def make(name, spec):
        def method(self, trainer, pl_module, *args, **kwargs):
            flags = [
                f
                for f, on in (
                    ("sanity", trainer.sanity_checking),
                    ("train", trainer.training),
                    ("val", trainer.validating),
                    ("test", trainer.testing),
                    ("predict", trainer.predicting),
                )
                if on
            ]
            line = (
                f"{name}: gs={trainer.global_step} ep={trainer.current_epoch} state={'+'.join(flags) or '-'} "
                f"module.training={pl_module.training} stop={trainer.should_stop}"
            )
            if "batch" in name:
                line += f" grad={torch.is_grad_enabled()} inference={torch.is_inference_mode_enabled()}"
            if name.startswith("on_train_batch"):
                line += f" is_last_batch={trainer.is_last_batch}"
            self.trace.append(line)

        method.__name__ = name
        return method

    ns = {name: make(name, spec) for name, spec in H.CALLBACK_HOOKS.items()}
    ns["__init__"] = lambda self, trace: setattr(self, "trace", trace)
    return type("StateCallback", (pl.Callback,), ns)


def run_state_config(pl, config, root):
    cfg = H.HOOK_CONFIGS[config]
    classes = H.make_classes(pl)
    trace: list[str] = []
    pl.seed_everything(0, verbose=False)
    model = classes.HookedModel([], **cfg.model)
    model._record_hooks = False
    dm = classes.HookedDataModule([], **cfg.dm)
    kwargs = dict(H.QUIET)
    kwargs.update(cfg.trainer)
    trainer = pl.Trainer(default_root_dir=str(root), callbacks=[state_callback_cls(pl)(trace)], **kwargs)
    for entry in cfg.entries:
        trace.append(f"## trainer.{entry}")
        kw = {"verbose": False} if entry in ("validate", "test") else {}
        getattr(trainer, entry)(model, datamodule=dm, **kw)
    trace.append(f"## after: gs={trainer.global_step} ep={trainer.current_epoch} stop={trainer.should_stop}")
    return trace


@pytest.mark.parametrize("config", STATE_CONFIGS)
def test_trainer_state_in_hooks(pl, config, tmp_path, lightning_reference):
    differential(
        pl,
        ("state", config),
        lambda fw, root: run_state_config(fw, config, root),
        lambda e, a: H.assert_same_sequence(e, a, f"trainer state per hook [{config}]"),
        tmp_path,
        lightning_reference,
    )


# ==========================================================================================================
# 3. Metrics: self.log semantics, callback/logged/progress-bar metrics, validate/test return values, loggers
# ==========================================================================================================
@cache
def metric_classes(pl):
    Logger = H.submodule(pl, "loggers").Logger

    class RecordingLogger(Logger):
        def __init__(self):
            super().__init__()
            self.events = []

        @property
        def name(self):
            return "recording"

        @property
        def version(self):
            return 0

        def log_metrics(self, metrics, step=None):
            self.events.append(("log_metrics", step, H.to_float_dict(metrics)))

        def log_hyperparams(self, params, *args, **kwargs):
            keys = sorted(params) if hasattr(params, "keys") else type(params).__name__
            self.events.append(("log_hyperparams", keys))

        def finalize(self, status):
            self.events.append(("finalize", status))

    class MetricsModel(pl.LightningModule):
        def __init__(self, lr=0.1):
            super().__init__()
            self.save_hyperparameters()
            self.layer = nn.Linear(32, 2)

        def forward(self, x):
            return self.layer(x)

        def _loss(self, batch):
            out = self(batch)
            return nn.functional.mse_loss(out, torch.ones_like(out))

        def training_step(self, batch, batch_idx):
            loss = self._loss(batch)
            self.log("train_loss", loss)
            self.log("t_both", loss, on_step=True, on_epoch=True, prog_bar=True)
            self.log("t_sum", float(batch_idx + 1), on_step=False, on_epoch=True, reduce_fx="sum")
            self.log("t_max", loss, on_step=False, on_epoch=True, reduce_fx="max")
            self.log("t_min", loss, on_step=False, on_epoch=True, reduce_fx=torch.min)
            self.log(
                "t_weighted",
                torch.tensor(float(batch_idx)),
                on_step=False,
                on_epoch=True,
                batch_size=batch_idx + 1,
            )
            self.log("t_int", batch_idx, prog_bar=True)
            self.log("t_logger_false", loss, logger=False, prog_bar=True)
            self.log_dict({"d_a": loss * 2, "d_b": loss * 3}, on_step=True, on_epoch=True)
            return loss

        def on_train_epoch_end(self):
            self.log("epoch_end_metric", self.current_epoch + 0.5, prog_bar=True)

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            loss = self._loss(batch)
            self.log("val_loss", loss, prog_bar=True)
            self.log("val_both", loss, on_step=True, on_epoch=True)
            self.log("val_max", loss, reduce_fx="max")
            return loss

        def on_validation_epoch_end(self):
            self.log("val_epoch_end", float(self.current_epoch))

        def test_step(self, batch, batch_idx):
            loss = self._loss(batch)
            self.log("test_loss", loss)
            self.log("test_sum", loss, reduce_fx="sum", prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

        def train_dataloader(self):
            return H.loader(7, 2, seed=1)  # 4 batches: 2, 2, 2, 1 rows -> weighted means matter

        def val_dataloader(self):
            return [H.loader(5, 2, seed=2), H.loader(3, 2, seed=3)]

        def test_dataloader(self):
            return H.loader(5, 2, seed=4)

    class LoggingCallback(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            pl_module.log("cb_batch", float(batch_idx), on_step=True, on_epoch=True)

        def on_validation_epoch_end(self, trainer, pl_module):
            pl_module.log("cb_val_epoch", 2.0 * trainer.current_epoch, prog_bar=True)

    class DictRows(torch.utils.data.Dataset):
        def __init__(self, n):
            self.rows = H.TensorRows(n, seed=11)

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return {"x": self.rows[i], "w": self.rows[i][:3]}

    class DictBatchMetricsModel(MetricsModel):
        """Dict batches (batch size inferred from the first tensor), 9 rows in batches of 2 (last one 1)."""

        def _loss(self, batch):
            return super()._loss(batch["x"] if isinstance(batch, dict) else batch)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(DictRows(9), batch_size=2)

    class TorchmetricsModel(MetricsModel):
        """Logs torchmetrics Metric objects: computed and reset by the framework at epoch end."""

        def __init__(self):
            super().__init__()
            import torchmetrics

            self.train_mse = torchmetrics.MeanSquaredError()
            self.val_mae = torchmetrics.MeanAbsoluteError()
            self.val_mse = torchmetrics.MeanSquaredError()

        def training_step(self, batch, batch_idx):
            out = self(batch)
            self.train_mse(out, torch.ones_like(out))
            self.log("train_mse", self.train_mse, on_step=True, on_epoch=True, prog_bar=True)
            return nn.functional.mse_loss(out, torch.ones_like(out))

        def validation_step(self, batch, batch_idx):
            out = self(batch)
            self.val_mae.update(out, torch.ones_like(out))
            self.log("val_mae", self.val_mae)
            self.val_mse(out, torch.ones_like(out))
            self.log_dict({"val_mse": self.val_mse}, prog_bar=True)

        def val_dataloader(self):
            return H.loader(5, 2, seed=2)

        def test_step(self, batch, batch_idx):
            out = self(batch)
            self.val_mae(out, torch.ones_like(out))
            self.log("test_mae", self.val_mae)

    return SimpleNamespace(
        torchmetrics_model_cls=TorchmetricsModel,
        logger_cls=RecordingLogger,
        model_cls=MetricsModel,
        dict_model_cls=DictBatchMetricsModel,
        callback_cls=LoggingCallback,
    )


def snapshot(trainer):
    return {
        "callback_metrics": H.to_float_dict(trainer.callback_metrics),
        "logged_metrics": H.to_float_dict(trainer.logged_metrics),
        "progress_bar_metrics": H.to_float_dict(trainer.progress_bar_metrics),
    }


METRIC_PROGRAMS = {
    "tensor_batches": {"log_every_n_steps": 1},
    "dict_batches_accumulate_log_every_2": {"log_every_n_steps": 2, "accumulate_grad_batches": 2},
    "torchmetrics_objects": {"log_every_n_steps": 1},
}


def run_metrics_program(pl, root, program="tensor_batches"):
    c = metric_classes(pl)
    pl.seed_everything(0, verbose=False)
    model = {
        "tensor_batches": c.model_cls,
        "dict_batches_accumulate_log_every_2": c.dict_model_cls,
        "torchmetrics_objects": c.torchmetrics_model_cls,
    }[program]()
    logger = c.logger_cls()
    kwargs = dict(H.QUIET)
    kwargs.update(logger=logger, max_epochs=2, limit_val_batches=2, num_sanity_val_steps=1)
    kwargs.update(METRIC_PROGRAMS[program])
    trainer = pl.Trainer(default_root_dir=str(root), callbacks=[c.callback_cls()], **kwargs)
    result = {}
    trainer.fit(model)
    result["after_fit"] = snapshot(trainer)
    result["validate_return"] = [H.to_float_dict(d) for d in trainer.validate(model, verbose=False)]
    result["after_validate"] = snapshot(trainer)
    result["test_return"] = [H.to_float_dict(d) for d in trainer.test(model, verbose=False)]
    result["after_test"] = snapshot(trainer)
    result["logger_events"] = logger.events
    return result


def _metrics_compare(part):
    def compare(e, a):
        H.assert_close_values(e[part], a[part], rtol=1e-5, atol=1e-6, path=part)

    return compare


@pytest.mark.parametrize(
    "part",
    ["after_fit", "validate_return", "after_validate", "test_return", "after_test", "logger_events"],
)
@pytest.mark.parametrize("program", list(METRIC_PROGRAMS))
def test_metrics(pl, program, part, tmp_path, lightning_reference):
    expected, _ = differential(
        pl,
        ("metrics", program),
        lambda fw, root: run_metrics_program(fw, root, program),
        _metrics_compare(part),
        tmp_path,
        lightning_reference,
    )
    if (
        part == "after_fit" and program == "tensor_batches"
    ):  # the program really exercises what it claims to (checked on the reference)
        cm = expected["after_fit"]["callback_metrics"]
        for key in (
            "t_both",
            "t_both_step",
            "t_both_epoch",
            "t_sum",
            "t_weighted",
            "epoch_end_metric",
            "val_loss/dataloader_idx_0",
            "val_loss/dataloader_idx_1",
            "cb_val_epoch",
        ):
            assert key in cm, key


# ==========================================================================================================
# 4. Numerics and counters
# ==========================================================================================================
class NoisyRows(torch.utils.data.Dataset):
    """Rows plus numpy noise drawn in ``__getitem__``: the values depend on how DataLoader workers are seeded."""

    def __init__(self, n):
        self.rows = H.TensorRows(n, seed=12)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i] + torch.from_numpy(np.random.randn(32)).float()


@cache
def numeric_classes(pl):
    class NumModel(pl.LightningModule):
        def __init__(
            self,
            opt="sgd",
            lr=0.1,
            sched=None,
            hidden=0,
            dropout=0.0,
            none_on_odd=False,
            skip_at=None,
            stop_at=None,
            manual=False,
            two_opts=False,
            train_len=8,
            val_len=4,
            batch_size=2,
            shuffle=False,
            train_data="rows",
        ):
            super().__init__()
            self.train_data = train_data
            if hidden:
                self.net = nn.Sequential(
                    nn.Linear(32, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 2)
                )
            else:
                self.net = nn.Linear(32, 2)
            self.opt, self.lr, self.sched = opt, lr, sched
            self.none_on_odd, self.skip_at, self.stop_at = none_on_odd, skip_at, stop_at
            self.two_opts = two_opts
            self.train_len, self.val_len, self.batch_size, self.shuffle = (
                train_len,
                val_len,
                batch_size,
                shuffle,
            )
            self.automatic_optimization = not manual
            self.counts = collections.Counter()
            self.seen = []
            self.val_runs = []

        def forward(self, x):
            return self.net(x)

        def _loss(self, batch):
            out = self(batch)
            return nn.functional.mse_loss(out, torch.ones_like(out))

        def training_step(self, batch, batch_idx):
            self.counts["training_step"] += 1
            if isinstance(batch, dict):  # a dict of train loaders (CombinedLoader, max_size_cycle)
                batch = torch.cat([batch[k] for k in sorted(batch)])
            self.seen.append(
                ("train", self.current_epoch, batch_idx, round(float(batch.sum()), 4), self.training)
            )
            loss = self._loss(batch)
            self.log("train_loss", loss)
            if self.stop_at == ("batch", self.current_epoch, batch_idx):
                self.trainer.should_stop = True
            if not self.automatic_optimization:
                opts = self.optimizers()
                opts = opts if isinstance(opts, list) else [opts]
                for o in opts:
                    o.zero_grad()
                self.manual_backward(loss)
                for o in opts:
                    o.step()
                return loss
            if self.none_on_odd and batch_idx % 2 == 1:
                return None
            return loss

        def validation_step(self, batch, batch_idx):
            self.counts["validation_step"] += 1
            # the default (non-overridden) model-mode and grad hooks must still take effect
            mode = (self.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled())
            self.seen.append(("val", self.current_epoch, batch_idx, *mode))
            loss = self._loss(batch)
            self.log("val_loss", loss)
            return loss

        def on_validation_epoch_end(self):
            if not self.trainer.sanity_checking:
                self.val_runs.append((self.current_epoch, self.global_step))

        def on_train_batch_start(self, batch, batch_idx):
            if self.skip_at is not None and batch_idx == self.skip_at:
                return -1
            return None

        def on_train_epoch_end(self):
            self.counts["on_train_epoch_end"] += 1
            if not self.automatic_optimization and self.sched is not None:
                self.lr_schedulers().step()  # manual optimisation steps its own schedulers
            if self.stop_at == ("epoch", self.current_epoch):
                self.trainer.should_stop = True

        def configure_optimizers(self):
            params = list(self.parameters())
            make = {
                "sgd": lambda p: torch.optim.SGD(p, lr=self.lr),
                "adam": lambda p: torch.optim.Adam(p, lr=self.lr),
            }[self.opt]
            if self.two_opts:
                return [make(params[:1]), make(params[1:])]
            opt = make(params)
            if self.sched is None:
                return opt
            if self.sched == "steplr_epoch":
                return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]
            if self.sched == "step_freq2":
                sch = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
                return {
                    "optimizer": opt,
                    "lr_scheduler": {"scheduler": sch, "interval": "step", "frequency": 2},
                }
            if self.sched == "onecycle":  # the usual estimated_stepping_batches pattern
                total = self.trainer.estimated_stepping_batches
                sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=total)
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "interval": "step"}}
            if self.sched == "plateau":
                sch = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.5)
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "monitor": "val_loss"}}
            raise AssertionError(self.sched)

        def train_dataloader(self):
            if self.train_data == "iterable":
                return torch.utils.data.DataLoader(
                    H.IterableRows(self.train_len, seed=1), batch_size=self.batch_size
                )
            if self.train_data == "noisy_workers":
                ds = NoisyRows(self.train_len)
                return torch.utils.data.DataLoader(ds, batch_size=self.batch_size, num_workers=2)
            if self.train_data == "dict_of_loaders":
                return {"a": H.loader(self.train_len, self.batch_size, seed=1), "b": H.loader(4, 2, seed=5)}
            return H.loader(self.train_len, self.batch_size, seed=1, shuffle=self.shuffle)

        def val_dataloader(self):
            return H.loader(self.val_len, self.batch_size, seed=2)

    ATTRS = (
        "num_training_batches",
        "num_val_batches",
        "num_sanity_val_batches",
        "val_check_batch",
        "estimated_stepping_batches",
        "max_epochs",
        "min_epochs",
        "max_steps",
        "accumulate_grad_batches",
        "limit_train_batches",
        "limit_val_batches",
        "check_val_every_n_epoch",
        "val_check_interval",
        "num_sanity_val_steps",
        "fast_dev_run",
        "overfit_batches",
        "gradient_clip_val",
        "gradient_clip_algorithm",
    )

    class AttrCallback(pl.Callback):
        def __init__(self):
            self.attrs = {}

        def on_train_start(self, trainer, pl_module):
            for a in ATTRS:
                v = getattr(trainer, a, "<missing>")
                if a == "val_check_interval" and (v == "<missing>" or isinstance(v, (str, dict))):
                    # deliberate difference: Lightning 2.6 leaves the attribute unset for a time-based
                    # interval (reading it raises); raylit keeps the value the user passed
                    continue
                v = getattr(v, "value", v)
                self.attrs[a] = list(v) if isinstance(v, (list, tuple)) else v

    return NumModel, AttrCallback


@cache
def hparams_model_cls(pl):
    NumModel, _ = numeric_classes(pl)

    class HParamsModel(NumModel):
        def __init__(self, lr=0.1, hidden=0):
            super().__init__(lr=lr, hidden=hidden)
            self.save_hyperparameters()

    return HParamsModel


NUMERIC_CONFIGS = {
    "sgd": ({}, {"max_epochs": 2}),
    "adam_steplr_epoch": ({"opt": "adam", "lr": 0.01, "sched": "steplr_epoch"}, {"max_epochs": 3}),
    "step_scheduler_frequency_2": ({"sched": "step_freq2"}, {"max_epochs": 2}),
    "reduce_lr_on_plateau": ({"sched": "plateau"}, {"max_epochs": 3}),
    "accumulate_3_of_5": ({"train_len": 10}, {"max_epochs": 2, "accumulate_grad_batches": 3}),
    "clip_norm": ({"lr": 0.5}, {"max_epochs": 2, "gradient_clip_val": 0.05}),
    "clip_norm_explicit": (
        {"lr": 0.5},
        {"max_epochs": 1, "gradient_clip_val": 0.05, "gradient_clip_algorithm": "norm"},
    ),
    "clip_value": (
        {"lr": 0.5},
        {"max_epochs": 2, "gradient_clip_val": 0.01, "gradient_clip_algorithm": "value"},
    ),
    "max_steps_mid_epoch": ({}, {"max_epochs": 5, "max_steps": 3}),
    "max_steps_infinite_epochs": ({}, {"max_epochs": -1, "max_steps": 6}),
    "limit_train_batches_float": ({"train_len": 16}, {"max_epochs": 2, "limit_train_batches": 0.5}),
    "limit_train_batches_int": ({"train_len": 16}, {"max_epochs": 1, "limit_train_batches": 3}),
    "limit_val_batches_0": ({}, {"max_epochs": 2, "limit_val_batches": 0}),
    "num_sanity_val_steps_all": (
        {"val_len": 8},
        {"max_epochs": 1, "num_sanity_val_steps": -1, "limit_val_batches": 3},
    ),
    "fast_dev_run_true": ({}, {"fast_dev_run": True}),
    "fast_dev_run_3": ({}, {"fast_dev_run": 3}),
    "overfit_batches": ({"shuffle": True}, {"max_epochs": 2, "overfit_batches": 2}),
    "check_val_every_2_epochs": ({}, {"max_epochs": 4, "check_val_every_n_epoch": 2}),
    "val_check_interval_int": ({"train_len": 10}, {"max_epochs": 2, "val_check_interval": 2}),
    "val_check_interval_int_across_epochs": (
        {"train_len": 6},
        {"max_epochs": 3, "val_check_interval": 4, "check_val_every_n_epoch": None},
    ),
    "val_check_interval_float": ({"train_len": 8}, {"max_epochs": 1, "val_check_interval": 0.25}),
    # time-based (new in Lightning 2.6): 0 s validates after every batch, a day never (not even at epoch end)
    "val_check_interval_time_zero": ({"train_len": 6}, {"max_epochs": 2, "val_check_interval": "00:00:00:00"}),
    "val_check_interval_time_one_day": ({"train_len": 6}, {"max_epochs": 2, "val_check_interval": {"days": 1}}),
    "on_train_batch_start_minus_one": ({"skip_at": 2}, {"max_epochs": 2}),
    "should_stop_in_batch": ({"stop_at": ("batch", 0, 1)}, {"max_epochs": 3}),
    "should_stop_with_min_epochs": ({"stop_at": ("epoch", 0)}, {"max_epochs": 5, "min_epochs": 3}),
    "training_step_returns_none": ({"none_on_odd": True}, {"max_epochs": 2}),
    "shuffled_train_loader": ({"shuffle": True}, {"max_epochs": 2}),
    "mlp_dropout_adam": (
        {"hidden": 16, "dropout": 0.5, "opt": "adam", "lr": 0.01, "shuffle": True},
        {"max_epochs": 2},
    ),
    "manual_two_optimizers": ({"manual": True, "two_opts": True}, {"max_epochs": 2}),
    "manual_with_lr_scheduler": ({"manual": True, "sched": "steplr_epoch"}, {"max_epochs": 3}),
    "iterable_train_dataset": ({"train_data": "iterable", "train_len": 7}, {"max_epochs": 2}),
    "iterable_train_dataset_val_check_int": (
        {"train_data": "iterable", "train_len": 10},
        {"max_epochs": 2, "val_check_interval": 2},
    ),
    "dict_of_train_loaders": ({"train_data": "dict_of_loaders"}, {"max_epochs": 2}),
    "onecycle_estimated_stepping_batches": (
        {"sched": "onecycle", "train_len": 10},
        {"max_epochs": 2, "accumulate_grad_batches": 2},
    ),
    "explicit_dataloaders_to_fit": ({"pass_loaders": True}, {"max_epochs": 2}),
    "datamodule_positional": ({"pass_datamodule": True}, {"max_epochs": 1}),
    # seed_everything(workers=True) is not compared here: the per-worker seeds are each framework's own
    # derivation (raylit's is tested for determinism and distinct streams in test_engine.py)
    "limit_train_batches_0": ({}, {"max_epochs": 2, "limit_train_batches": 0}),
    "manual_max_steps": ({"manual": True, "two_opts": True}, {"max_epochs": 3, "max_steps": 5}),
}


def run_numeric_program(pl, root, config, precision=None):
    model_kwargs, trainer_kwargs = NUMERIC_CONFIGS[config]
    model_kwargs = dict(model_kwargs)
    pass_loaders = model_kwargs.pop("pass_loaders", False)
    pass_datamodule = model_kwargs.pop("pass_datamodule", False)
    seed_workers = model_kwargs.pop("seed_workers", False)
    NumModel, AttrCallback = numeric_classes(pl)
    pl.seed_everything(42, workers=seed_workers, verbose=False)
    model = NumModel(**model_kwargs)
    attrs = AttrCallback()
    kwargs = dict(H.QUIET)
    kwargs.update(trainer_kwargs)
    if precision is not None:
        kwargs["precision"] = precision
    trainer = pl.Trainer(default_root_dir=str(root), callbacks=[attrs], **kwargs)
    if pass_loaders:  # different data from the model's own *_dataloader methods: these must win
        trainer.fit(model, train_dataloaders=H.loader(6, 2, seed=7), val_dataloaders=H.loader(4, 2, seed=8))
    elif pass_datamodule:  # a DataModule passed positionally as `train_dataloaders`
        dm = pl.LightningDataModule.from_datasets(
            H.TensorRows(6, seed=9), H.TensorRows(4, seed=10), batch_size=2
        )
        trainer.fit(model, dm)
    else:
        trainer.fit(model)
    opts = trainer.optimizers
    return {
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "global_step": trainer.global_step,
        "current_epoch": trainer.current_epoch,
        "should_stop": trainer.should_stop,
        "counts": dict(model.counts),
        "seen": model.seen,
        "val_runs": model.val_runs,
        "lrs": [[g["lr"] for g in o.param_groups] for o in opts],
        "trainer_attrs": attrs.attrs,
    }


def _numeric_compare(weight_rtol=1e-5, weight_atol=1e-7):
    def compare(e, a):
        for key in e:
            if key == "weights":
                H.assert_close_values(e[key], a[key], rtol=weight_rtol, atol=weight_atol, path=key)
            else:
                H.assert_close_values(e[key], a[key], rtol=1e-6, atol=1e-9, path=key)

    return compare


@pytest.mark.parametrize("config", list(NUMERIC_CONFIGS))
def test_numerics_and_counters(pl, config, tmp_path, lightning_reference):
    expected, _ = differential(
        pl,
        ("numeric", config),
        lambda fw, root: run_numeric_program(fw, root, config),
        _numeric_compare(),
        tmp_path,
        lightning_reference,
    )
    if config != "limit_train_batches_0":
        assert expected["counts"].get("training_step", 0) > 0


def test_numeric_programs_train(tmp_path, lightning_reference):
    """Guards the programs (Lightning only): a few documented facts hold, so the comparisons have teeth."""
    ref = H.import_framework(H.REFERENCE)
    H.quiet_logging()

    def get(config):
        key = ("numeric", config)
        if key not in lightning_reference:
            lightning_reference[key] = run_numeric_program(ref, tmp_path / config, config)
        return lightning_reference[key]

    assert get("sgd")["global_step"] == 8 and get("sgd")["current_epoch"] == 2
    assert get("accumulate_3_of_5")["global_step"] == 4  # ceil(5 / 3) per epoch
    assert get("max_steps_mid_epoch")["global_step"] == 3
    assert get("val_check_interval_time_zero")["counts"]["validation_step"] == 2 * 3 * 2 + 2  # 2 epochs x 3 batches x 2 val batches + sanity
    assert "validation_step" not in get("val_check_interval_time_one_day")["counts"] or \
        get("val_check_interval_time_one_day")["counts"]["validation_step"] == 2  # the sanity check only
    assert get("fast_dev_run_true")["counts"] == {
        "training_step": 1,
        "validation_step": 1,
        "on_train_epoch_end": 1,
    }
    assert get("fast_dev_run_3")["counts"]["training_step"] == 3
    assert get("manual_two_optimizers")["global_step"] == 2 * 8  # every optimizer step counts
    assert get("reduce_lr_on_plateau")["lrs"][0][0] < 0.1
    assert get("step_scheduler_frequency_2")["lrs"][0][0] == pytest.approx(0.1 * 0.7**4)
    assert get("should_stop_with_min_epochs")["current_epoch"] == 3


# ==========================================================================================================
# 5. Precision
# ==========================================================================================================
@cache
def precision_model_cls(pl):
    class PrecisionModel(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(32, 2)
            self.records = {}

        def forward(self, x):
            return self.layer(x)

        def _record(self, where, batch, out, loss=None):
            if where in self.records:
                return
            self.records[where] = {
                "batch": str(batch.dtype),
                "out": str(out.dtype),
                "loss": None if loss is None else str(loss.dtype),
                "param": str(self.layer.weight.dtype),
                "default_dtype": str(torch.get_default_dtype()),
                "autocast": torch.is_autocast_enabled("cpu"),
            }

        def training_step(self, batch, batch_idx):
            out = self(batch)
            loss = nn.functional.mse_loss(out, torch.ones_like(out))
            self._record("training_step", batch, out, loss)
            return loss

        def on_before_optimizer_step(self, optimizer):
            if "grad" not in self.records:
                self.records["grad"] = str(self.layer.weight.grad.dtype)

        def validation_step(self, batch, batch_idx):
            out = self(batch)
            loss = nn.functional.mse_loss(out, torch.ones_like(out))
            self._record("validation_step", batch, out, loss)
            self.log("val_loss", loss)

        def predict_step(self, batch, batch_idx):
            out = self(batch)
            self._record("predict_step", batch, out)
            return out

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return H.loader(6, 2, seed=1)

        def val_dataloader(self):
            return H.loader(4, 2, seed=2)

        def predict_dataloader(self):
            return H.loader(4, 2, seed=3)

    return PrecisionModel


def run_precision_program(pl, root, precision):
    pl.seed_everything(0, verbose=False)
    model = precision_model_cls(pl)()
    kwargs = dict(H.QUIET)
    trainer = pl.Trainer(default_root_dir=str(root), precision=precision, max_epochs=2, **kwargs)
    trainer.fit(model)
    preds = trainer.predict(model)
    return {
        "precision": trainer.precision,
        "records": model.records,
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "predictions": [p.detach().clone() for p in preds],
        "val_loss": H.to_float_dict(trainer.callback_metrics),
        "default_dtype_after": str(torch.get_default_dtype()),
    }


PRECISION_TOLERANCE = {
    "16-mixed": 1e-2,
    "bf16-mixed": 1e-2,
    "bf16-true": 1e-2,
    "64-true": 1e-7,
    "32-true": 1e-6,
}


@pytest.mark.parametrize("precision", ["bf16-mixed", "64-true", "bf16-true", "32-true", "16-mixed"])
def test_precision(pl, precision, tmp_path, lightning_reference):
    tol = PRECISION_TOLERANCE[precision]

    def compare(e, a):
        assert e["precision"] == a["precision"], (e["precision"], a["precision"])
        H.assert_close_values(e["records"], a["records"], path="dtypes seen in hooks")
        assert e["default_dtype_after"] == a["default_dtype_after"]
        H.assert_close_values(e["weights"], a["weights"], rtol=tol, atol=tol, path="weights")
        H.assert_close_values(e["predictions"], a["predictions"], rtol=tol, atol=tol, path="predictions")
        H.assert_close_values(e["val_loss"], a["val_loss"], rtol=tol, atol=tol, path="callback_metrics")

    differential(
        pl,
        ("precision", precision),
        lambda fw, root: run_precision_program(fw, root, precision),
        compare,
        tmp_path,
        lightning_reference,
    )


PRECISION_ALIASES = [
    16,
    "16",
    "bf16",
    32,
    "32",
    64,
    "64",
    "16-mixed",
    "16-true",
    "bf16-true",
    "bf16-mixed",
    "32-true",
    "64-true",
]


def run_precision_aliases(pl, root):
    out = {}
    for p in PRECISION_ALIASES:
        try:
            trainer = pl.Trainer(default_root_dir=str(root), precision=p, **H.QUIET)
            out[repr(p)] = trainer.precision
        except Exception as err:  # noqa: BLE001 - compare what each framework raises
            out[repr(p)] = f"raises {H.exception_family(err)}"
    return out


def test_precision_aliases(pl, tmp_path, lightning_reference):
    differential(
        pl,
        ("precision_aliases",),
        run_precision_aliases,
        H.assert_close_values,
        tmp_path,
        lightning_reference,
    )


# ==========================================================================================================
# 6. Errors
# ==========================================================================================================
@cache
def error_classes(pl):
    class Base(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(32, 2)

        def forward(self, x):
            return self.layer(x)

        def training_step(self, batch, batch_idx):
            out = self(batch)
            return nn.functional.mse_loss(out, torch.ones_like(out))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return H.loader(4, 2)

        def predict_dataloader(self):
            return H.loader(4, 2)

    class LogInFitStart(Base):
        def on_fit_start(self):
            self.log("bad", 1.0)

    class LogInPredict(Base):
        def predict_step(self, batch, batch_idx):
            self.log("bad_predict", 1.0)
            return self(batch)

    class BadOptimizers(Base):
        def configure_optimizers(self):
            return "sgd please"

    class TwoOptimizersAutomatic(Base):
        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.Adam(self.parameters())]

    class BadReduceFx(Base):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("median_metric", loss, reduce_fx="median")
            return loss

    class DictWithoutLoss(Base):
        def training_step(self, batch, batch_idx):
            return {"not_loss": super().training_step(batch, batch_idx)}

    class LogString(Base):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("string_metric", "hello")
            return loss

    class PlateauWithoutMonitor(Base):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.ReduceLROnPlateau(opt)]

    class ManualWithClip(Base):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(super().training_step(batch, batch_idx))
            opt.step()

    class WithValidation(Base):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.training_step(batch, batch_idx))

        def val_dataloader(self):
            return H.loader(4, 2)

    class LogOnStepInEpochEnd(Base):
        def on_train_epoch_end(self):
            self.log("epoch_metric", 1.0, on_step=True)

    class LogReservedDataloaderIdx(Base):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("val/dataloader_idx_0", loss)
            return loss

    class BadSchedulerInterval(Base):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sch = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "interval": "batch"}}

    class LegacyEpochEnd(Base):
        def training_epoch_end(self, outputs):
            pass

    return SimpleNamespace(**{k: v for k, v in locals().items() if isinstance(v, type)})


# name -> (model class name, trainer kwargs, entry point, substrings raylit's message must contain)
ERROR_CASES = {
    "unknown_precision": ("Base", {"precision": "fp13"}, "fit", ["fp13"]),
    "unknown_accelerator": ("Base", {"accelerator": "abacus"}, "fit", ["abacus"]),
    "unknown_strategy": ("Base", {"strategy": "carrier_pigeon"}, "fit", ["carrier_pigeon"]),
    "zero_cpu_devices": ("Base", {"accelerator": "cpu", "devices": 0}, "fit", ["devices"]),
    "log_on_step_in_on_train_epoch_end": ("LogOnStepInEpochEnd", {}, "fit", ["on_train_epoch_end"]),
    "log_name_with_dataloader_idx": ("LogReservedDataloaderIdx", {}, "fit", ["dataloader_idx"]),
    "unknown_scheduler_interval": ("BadSchedulerInterval", {}, "fit", ["interval"]),
    "test_without_model_or_checkpoint": (None, {}, "test", ["test"]),
    "validate_without_model_or_checkpoint": (None, {}, "validate", ["validate"]),
    "bad_gradient_clip_algorithm": (
        "Base",
        {"gradient_clip_val": 1.0, "gradient_clip_algorithm": "foo"},
        "fit",
        ["foo"],
    ),
    "log_in_on_fit_start": ("LogInFitStart", {}, "fit", ["on_fit_start"]),
    "log_in_predict_step": ("LogInPredict", {}, "predict", ["predict_step"]),
    "configure_optimizers_unusable": ("BadOptimizers", {}, "fit", ["configure_optimizers"]),
    "two_optimizers_automatic_optimization": (
        "TwoOptimizersAutomatic",
        {},
        "fit",
        ["automatic_optimization"],
    ),
    "unknown_reduce_fx": ("BadReduceFx", {}, "fit", ["median"]),
    "training_step_dict_without_loss": ("DictWithoutLoss", {}, "fit", ["loss"]),
    "log_non_numeric_value": ("LogString", {}, "fit", ["string_metric"]),
    "plateau_scheduler_without_monitor": ("PlateauWithoutMonitor", {}, "fit", ["monitor"]),
    "gradient_clip_with_manual_optimization": (
        "ManualWithClip",
        {"gradient_clip_val": 1.0},
        "fit",
        ["gradient_clip"],
    ),
    "removed_training_epoch_end": ("LegacyEpochEnd", {}, "fit", ["training_epoch_end"]),
    "limit_train_batches_out_of_range": (
        "Base",
        {"limit_train_batches": 1.5},
        "fit",
        ["limit_train_batches"],
    ),
    "negative_fast_dev_run": ("Base", {"fast_dev_run": -1}, "fit", ["fast_dev_run"]),
    "val_check_interval_beyond_epoch": (
        "WithValidation",
        {"val_check_interval": 100, "limit_val_batches": 1},
        "fit",
        ["val_check_interval"],
    ),
    "bad_gradient_clip_val_type": ("Base", {"gradient_clip_val": "big"}, "fit", ["gradient_clip_val"]),
    "bad_val_check_time_string": ("WithValidation", {"val_check_interval": "00:01:xx:00"}, "fit",
                                  ["val_check_interval"]),
}


def run_error_case(pl, root, case):
    cls_name, trainer_kwargs, entry, _ = ERROR_CASES[case]
    classes = error_classes(pl)
    phase = "build model"
    try:
        model = getattr(classes, cls_name)() if cls_name else None
        phase = "Trainer()"
        kwargs = dict(H.QUIET, max_epochs=1, limit_val_batches=0)
        kwargs.update(trainer_kwargs)
        trainer = pl.Trainer(default_root_dir=str(root), **kwargs)
        phase = f"trainer.{entry}"
        getattr(trainer, entry)(model)
    except Exception as err:  # noqa: BLE001
        return {
            "raised": True,
            "phase": phase,
            "family": H.exception_family(err),
            "type": type(err).__name__,
            "message": str(err),
        }
    return {"raised": False, "phase": phase}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors(pl, case, tmp_path, lightning_reference):
    def compare(e, a):
        assert e["raised"], f"the reference program did not raise: {e}"
        assert a["raised"], f"expected {e['type']} in {e['phase']} ({e['message'][:200]}); nothing was raised"
        assert (e["phase"], e["family"]) == (a["phase"], a["family"]), (
            f"lightning raised {e['type']} in {e['phase']}: {e['message'][:200]}\n"
            f"got {a['type']} in {a['phase']}: {a['message'][:200]}"
        )

    _, actual = differential(
        pl,
        ("error", case),
        lambda fw, root: run_error_case(fw, root, case),
        compare,
        tmp_path,
        lightning_reference,
    )
    if not is_reference(pl):
        for needle in ERROR_CASES[case][3]:
            assert needle in actual["message"], f"message should name {needle!r}: {actual['message']!r}"


# ==========================================================================================================
# 7. raylit.testing demo classes
# ==========================================================================================================
def demo_classes(pl):
    if is_reference(pl):
        from pytorch_lightning.demos import boring_classes

        return boring_classes
    return H.import_framework(f"{pl.__name__}.testing")


DEMO_CONFIGS = ["BoringModel", "ManualOptimBoringModel", "BoringModel+BoringDataModule", "DemoModel"]


def run_demo_program(pl, root, config, demos=None):
    demos = demos or demo_classes(pl)
    pl.seed_everything(7, verbose=False)
    model_name, _, dm_name = config.partition("+")
    model = getattr(demos, model_name)()
    dm = getattr(demos, dm_name)() if dm_name else None
    kwargs = dict(
        H.QUIET,
        max_epochs=2,
        limit_train_batches=5,
        limit_val_batches=3,
        limit_test_batches=2,
        limit_predict_batches=3,
    )
    trainer = pl.Trainer(default_root_dir=str(root), **kwargs)
    if model_name == "DemoModel":
        data = demos.RandomDataset(32, 16)
        trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
        preds = trainer.predict(model, torch.utils.data.DataLoader(data, batch_size=4))
        tested = []
    else:
        trainer.fit(model, datamodule=dm)
        preds = trainer.predict(model, datamodule=dm)
        tested = [H.to_float_dict(d) for d in trainer.test(model, datamodule=dm, verbose=False)]
    return {
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "global_step": trainer.global_step,
        "predictions": [p.detach().clone() for p in preds],
        "test": tested,
    }


@pytest.mark.parametrize("config", DEMO_CONFIGS)
def test_demo_classes(pl, config, tmp_path, lightning_reference):
    """raylit.testing.X under raylit == lightning's demos.boring_classes.X under Lightning."""
    differential(
        pl,
        ("demo", config),
        lambda fw, root: run_demo_program(fw, root, config),
        lambda e, a: H.assert_close_values(e, a, rtol=1e-6, atol=1e-7),
        tmp_path,
        lightning_reference,
    )


@pytest.mark.parametrize("config", DEMO_CONFIGS)
def test_testing_classes_match_lightning_demos(config, tmp_path):
    """raylit.testing's definitions, built on Lightning's bases, behave exactly like Lightning's own demos
    (checks raylit.testing itself, independently of the raylit Trainer)."""
    from pytorch_lightning.demos import boring_classes

    from raylit.testing import boring_classes as ours

    ref = H.import_framework(H.REFERENCE)
    H.quiet_logging()
    built = ours.build_demo_classes(ref.LightningModule, ref.LightningDataModule)
    mine = SimpleNamespace(RandomDataset=ours.RandomDataset, **vars(built))
    expected = run_demo_program(ref, tmp_path / "a", config, demos=boring_classes)
    actual = run_demo_program(ref, tmp_path / "b", config, demos=mine)
    H.assert_close_values(expected, actual, rtol=0, atol=0)


def test_testing_datasets_match_lightning_demos():
    from pytorch_lightning.demos import boring_classes as theirs

    import raylit.testing.boring_classes as ours

    for name in (
        "RandomDataset",
        "RandomDictDataset",
        "RandomIterableDataset",
        "RandomIterableDatasetWithLen",
    ):
        torch.manual_seed(3)
        a = list(getattr(theirs, name)(4, 5))
        torch.manual_seed(3)
        b = list(getattr(ours, name)(4, 5))
        H.assert_close_values(a, b, rtol=0, atol=0, path=name)
        assert hasattr(getattr(theirs, name)(4, 5), "__len__") == hasattr(
            getattr(ours, name)(4, 5), "__len__"
        )
    assert len(ours.RandomIterableDatasetWithLen(4, 5)) == 5


# ==========================================================================================================
# 8. configure_optimizers return forms
# ==========================================================================================================
OPTIMIZER_FORMS = [
    "optimizer",
    "list",
    "tuple_of_lists",
    "lists_with_config_dict",
    "dict",
    "dict_with_config",
    "tuple_of_dicts_one",
    "none",
]


@cache
def optimizer_form_model_cls(pl):
    NumModel, _ = numeric_classes(pl)

    class FormModel(NumModel):
        def __init__(self, form):
            super().__init__()
            self.form = form

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.5)
            sch = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
            f = self.form
            if f == "optimizer":
                return opt
            if f == "list":
                return [opt]
            if f == "tuple_of_lists":
                return [opt], [sch]
            if f == "lists_with_config_dict":
                return [opt], [{"scheduler": sch, "interval": "step", "frequency": 3, "name": "my_sched"}]
            if f == "dict":
                return {"optimizer": opt, "lr_scheduler": sch}
            if f == "dict_with_config":
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "interval": "step"}}
            if f == "tuple_of_dicts_one":
                return ({"optimizer": opt, "lr_scheduler": sch},)
            if f == "none":
                return None
            raise AssertionError(f)

    return FormModel


def run_optimizer_form(pl, root, form):
    pl.seed_everything(1, verbose=False)
    model = optimizer_form_model_cls(pl)(form)
    trainer = pl.Trainer(default_root_dir=str(root), max_epochs=2, **H.QUIET)
    trainer.fit(model)
    configs = [
        {
            a: getattr(c, a, "<missing>")
            for a in ("interval", "frequency", "monitor", "name", "reduce_on_plateau")
        }
        for c in trainer.lr_scheduler_configs
    ]
    return {
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "global_step": trainer.global_step,
        "n_optimizers": len(trainer.optimizers),
        "lrs": [[g["lr"] for g in o.param_groups] for o in trainer.optimizers],
        "scheduler_configs": configs,
        "counts": dict(model.counts),
    }


@pytest.mark.parametrize("form", OPTIMIZER_FORMS)
def test_configure_optimizers_forms(pl, form, tmp_path, lightning_reference):
    differential(
        pl,
        ("optim_form", form),
        lambda fw, root: run_optimizer_form(fw, root, form),
        _numeric_compare(),
        tmp_path,
        lightning_reference,
    )


# ==========================================================================================================
# 9. What on_train_batch_end receives as `outputs`
# ==========================================================================================================
@cache
def outputs_classes(pl):
    NumModel, _ = numeric_classes(pl)

    class OutputsModel(NumModel):
        def __init__(self, form):
            super().__init__()
            self.form = form
            self.outputs_seen = []

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            if self.form == "tensor":
                return loss
            if self.form == "dict_extra":
                return {"loss": loss, "extra": loss * 2, "note": "text"}
            if self.form == "none_on_batch_1":
                return None if batch_idx == 1 else loss
            raise AssertionError(self.form)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            if outputs is None:
                self.outputs_seen.append((batch_idx, None))
                return
            summary = {}
            for k, v in outputs.items():
                if isinstance(v, torch.Tensor):
                    summary[k] = ("Tensor", v.requires_grad, round(float(v.detach()), 5))
                else:
                    summary[k] = (type(v).__name__, v)
            self.outputs_seen.append((batch_idx, type(outputs).__name__, summary))

    return OutputsModel


@pytest.mark.parametrize("form", ["tensor", "dict_extra", "none_on_batch_1"])
def test_train_batch_end_outputs(pl, form, tmp_path, lightning_reference):
    def program(fw, root):
        fw.seed_everything(0, verbose=False)
        model = outputs_classes(fw)(form)
        fw.Trainer(default_root_dir=str(root), max_epochs=1, limit_train_batches=3, **H.QUIET).fit(model)
        return model.outputs_seen

    differential(pl, ("outputs", form), program, H.assert_close_values, tmp_path, lightning_reference)


# ==========================================================================================================
# 10. predict return value
# ==========================================================================================================
@pytest.mark.parametrize("n_loaders", [1, 2])
def test_predict_return_value(pl, n_loaders, tmp_path, lightning_reference):
    def program(fw, root):
        fw.seed_everything(0, verbose=False)
        calls: list = []
        model = H.make_classes(fw).HookedModel(calls, n_predict=n_loaders, eval_len=5)
        trainer = fw.Trainer(default_root_dir=str(root), **H.QUIET)
        out = trainer.predict(model)
        return {"predictions": out, "no_return": trainer.predict(model, return_predictions=False)}

    differential(
        pl, ("predict_return", n_loaders), program, H.assert_close_values, tmp_path, lightning_reference
    )


# ==========================================================================================================
# 11. A LightningModule outside a Trainer
# ==========================================================================================================
def run_detached_module(pl, root):
    NumModel, _ = numeric_classes(pl)
    model = NumModel()
    out = {}
    try:
        model.trainer  # noqa: B018
        out["trainer"] = "no error"
    except Exception as err:  # noqa: BLE001
        out["trainer"] = H.exception_family(err)
    for attr in (
        "current_epoch",
        "global_step",
        "global_rank",
        "local_rank",
        "logger",
        "loggers",
        "automatic_optimization",
        "device",
        "dtype",
        "training",
    ):
        out[attr] = str(getattr(model, attr, "<missing>"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.log("outside", 1.0)
        out["log"] = "no error"
    except Exception as err:  # noqa: BLE001
        out["log"] = H.exception_family(err)
    model.double()
    out["dtype_after_double"] = str(model.dtype)
    out["frozen_requires_grad"] = (
        [p.requires_grad for p in model.freeze().parameters()]
        if hasattr(model.freeze(), "parameters")
        else "freeze() returned None"
    )
    return out


def test_module_outside_trainer(pl, tmp_path, lightning_reference):
    differential(pl, ("detached",), run_detached_module, H.assert_close_values, tmp_path, lightning_reference)


# ==========================================================================================================
# 12. Built-in callbacks: EarlyStopping and ModelCheckpoint
# ==========================================================================================================
def run_builtin_callbacks(pl, root):
    cbs = H.submodule(pl, "callbacks")
    NumModel, _ = numeric_classes(pl)
    pl.seed_everything(5, verbose=False)
    model = NumModel(lr=0.05, opt="sgd", val_len=6)
    es = cbs.EarlyStopping(monitor="val_loss", patience=1, mode="min", min_delta=0.05)
    ckdir = root / "ckpts"
    mc = cbs.ModelCheckpoint(
        dirpath=str(ckdir),
        monitor="val_loss",
        save_top_k=2,
        save_last=True,
        filename="{epoch}-{val_loss:.3f}",
    )
    kwargs = dict(H.QUIET, enable_checkpointing=True)
    trainer = pl.Trainer(default_root_dir=str(root), max_epochs=8, callbacks=[es, mc], **kwargs)
    trainer.fit(model)

    def name(p):
        return p.rsplit("/", 1)[-1] if p else p

    files = sorted(p.name for p in ckdir.iterdir())
    best = torch.load(mc.best_model_path, weights_only=False, map_location="cpu")
    return {
        "current_epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "es": {
            "stopped_epoch": es.stopped_epoch,
            "wait_count": es.wait_count,
            "best_score": float(es.best_score),
        },
        "files": files,
        "best_model_path": name(mc.best_model_path),
        "best_model_score": float(mc.best_model_score),
        "best_k_models": {name(k): float(v) for k, v in mc.best_k_models.items()},
        "last_model_path": name(mc.last_model_path),
        "best_ckpt": {
            "epoch": best["epoch"],
            "global_step": best["global_step"],
            "state_dict": best["state_dict"],
            "callback_state_keys": sorted(best.get("callbacks", {})),
            "n_optimizer_states": len(best.get("optimizer_states", [])),
        },
        "best_ckpt_keys": sorted(best),
    }


@pytest.mark.parametrize("part", ["training", "checkpoint_files", "checkpoint_content"])
def test_builtin_callbacks(pl, part, tmp_path, lightning_reference):
    def compare(e, a):
        if part == "training":
            H.assert_close_values(
                {k: e[k] for k in ("current_epoch", "global_step", "es")},
                {k: a[k] for k in ("current_epoch", "global_step", "es")},
            )
        elif part == "checkpoint_files":
            keys = ("files", "best_model_path", "best_model_score", "best_k_models", "last_model_path")
            H.assert_close_values({k: e[k] for k in keys}, {k: a[k] for k in keys})
        else:
            H.assert_close_values(e["best_ckpt"], a["best_ckpt"], rtol=1e-6, atol=1e-7, path="ckpt")
            missing = sorted(set(e["best_ckpt_keys"]) - set(a["best_ckpt_keys"]))
            assert not missing, f"checkpoint lacks Lightning's top-level keys {missing}"

    differential(pl, ("builtin_callbacks",), run_builtin_callbacks, compare, tmp_path, lightning_reference)


# ==========================================================================================================
# 13. Resuming from a checkpoint
# ==========================================================================================================
def run_resume(pl, root):
    NumModel, _ = numeric_classes(pl)
    classes = H.make_classes(pl)
    pl.seed_everything(3, verbose=False)
    first = NumModel(opt="adam", lr=0.01, sched="steplr_epoch")
    t1 = pl.Trainer(default_root_dir=str(root), max_epochs=1, **H.QUIET)
    t1.fit(first)
    path = str(root / "after_epoch_0.ckpt")
    t1.save_checkpoint(path)

    pl.seed_everything(4, verbose=False)
    second = NumModel(opt="adam", lr=0.01, sched="steplr_epoch")
    calls: list = []
    t2 = pl.Trainer(
        default_root_dir=str(root), max_epochs=3, callbacks=[classes.HookedCallback(calls)], **H.QUIET
    )
    t2.fit(second, ckpt_path=path)
    return {
        "weights": {k: v.detach().clone() for k, v in second.state_dict().items()},
        "global_step": t2.global_step,
        "current_epoch": t2.current_epoch,
        "lrs": [[g["lr"] for g in o.param_groups] for o in t2.optimizers],
        "counts": dict(second.counts),
        "seen": second.seen,
        "callback_calls": calls,
    }


@pytest.mark.parametrize("part", ["state", "callback_hooks"])
def test_resume_from_checkpoint(pl, part, tmp_path, lightning_reference):
    def compare(e, a):
        if part == "callback_hooks":
            H.assert_same_sequence(e["callback_calls"], a["callback_calls"], "callback hooks while resuming")
        else:
            keys = [k for k in e if k != "callback_calls"]
            H.assert_close_values({k: e[k] for k in keys}, {k: a[k] for k in keys}, rtol=1e-5, atol=1e-7)

    differential(pl, ("resume",), run_resume, compare, tmp_path, lightning_reference)


@pytest.mark.parametrize("direction", ["lightning_to_raylit", "raylit_to_lightning"])
def test_checkpoint_interchange(direction, tmp_path):
    """A checkpoint written by one framework loads with ``load_from_checkpoint`` in the other."""
    ref = H.import_framework(H.REFERENCE)
    try:
        ray = H.import_framework("raylit")
        ray.Trainer  # noqa: B018
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"raylit not usable: {type(err).__name__}: {err}")
    H.quiet_logging()
    writer, reader = (ref, ray) if direction == "lightning_to_raylit" else (ray, ref)
    WModel, RModel = hparams_model_cls(writer), hparams_model_cls(reader)
    writer.seed_everything(0, verbose=False)
    model = WModel(lr=0.05, hidden=4)
    trainer = writer.Trainer(default_root_dir=str(tmp_path), max_epochs=1, **H.QUIET)
    trainer.fit(model)
    path = str(tmp_path / "model.ckpt")
    trainer.save_checkpoint(path)
    # the hyperparameters come from the checkpoint: hidden=4 decides the architecture
    loaded = RModel.load_from_checkpoint(path, weights_only=False)
    assert dict(loaded.hparams) == {"lr": 0.05, "hidden": 4}
    H.assert_close_values(dict(model.state_dict()), dict(loaded.state_dict()), rtol=0, atol=0)
    # resuming training from the other framework's checkpoint continues its counters and optimizer state
    trainer2 = reader.Trainer(default_root_dir=str(tmp_path / "r"), max_epochs=2, **H.QUIET)
    trainer2.fit(RModel(lr=0.05, hidden=4), ckpt_path=path)
    assert (trainer2.global_step, trainer2.current_epoch) == (8, 2)
