"""Engine behaviour beyond Lightning parity: exact resume, checkpoint safety, errors, import cost."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import raylit
from raylit.checkpoint import CheckpointLoadError
from raylit.utilities.exceptions import MisconfigurationException

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False)


class DropoutModel(raylit.LightningModule):
    """Draws from the global RNG every step (dropout) and trains on shuffled data: a resumed run only matches
    an uninterrupted one if data order, RNG and optimizer state all come back exactly."""

    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)]

    def train_dataloader(self):
        g = torch.Generator().manual_seed(1)
        ds = TensorDataset(torch.randn(40, 8, generator=g), torch.randn(40, 1, generator=g))
        return DataLoader(ds, batch_size=4, shuffle=True)

    def val_dataloader(self):
        g = torch.Generator().manual_seed(2)
        return DataLoader(TensorDataset(torch.randn(8, 8, generator=g), torch.randn(8, 1, generator=g)), batch_size=4)


class _Crash(Exception):
    pass


class SaveThenCrash(raylit.Callback):
    """Writes a checkpoint after optimizer step ``at_step`` and then fails, like a process that dies."""

    def __init__(self, path: str, at_step: int):
        self.path, self.at_step = path, at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            trainer.save_checkpoint(self.path)
            raise _Crash()


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fit_uninterrupted(tmp_path, **kw):
    raylit.seed_everything(0, verbose=False)
    model = DropoutModel()
    trainer = raylit.Trainer(max_epochs=3, default_root_dir=str(tmp_path / "full"), enable_checkpointing=False,
                             **QUIET, **kw)
    trainer.fit(model)
    return model, trainer


@pytest.mark.parametrize("at_step", [3, 10, 17])  # mid-epoch, the last batch of epoch 1, mid-epoch 2
def test_resume_mid_epoch_matches_uninterrupted_run_bitwise(tmp_path, at_step):
    full, full_trainer = _fit_uninterrupted(tmp_path)

    raylit.seed_everything(0, verbose=False)
    ckpt = str(tmp_path / "crash.ckpt")
    crashing = raylit.Trainer(max_epochs=3, callbacks=[SaveThenCrash(ckpt, at_step)], enable_checkpointing=False,
                              default_root_dir=str(tmp_path / "a"), **QUIET)
    with pytest.raises(_Crash):
        crashing.fit(DropoutModel())

    # a new process would start with other RNG state and fresh weights: make that so here
    raylit.seed_everything(1234, verbose=False)
    resumed = DropoutModel()
    trainer = raylit.Trainer(max_epochs=3, enable_checkpointing=False, default_root_dir=str(tmp_path / "b"), **QUIET)
    trainer.fit(resumed, ckpt_path=ckpt)

    assert trainer.global_step == full_trainer.global_step == 30
    assert trainer.current_epoch == 3
    for k, v in _weights(full).items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert torch.equal(trainer.callback_metrics["val_loss"], full_trainer.callback_metrics["val_loss"])


def test_resume_from_last_epoch_end_checkpoint_matches_bitwise(tmp_path):
    full, _ = _fit_uninterrupted(tmp_path)
    from raylit.callbacks import ModelCheckpoint

    raylit.seed_everything(0, verbose=False)
    ck = ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_last=True, save_top_k=-1)
    first = raylit.Trainer(max_epochs=2, callbacks=[ck], default_root_dir=str(tmp_path / "a"), **QUIET)
    first.fit(DropoutModel())
    assert os.path.exists(ck.last_model_path)

    raylit.seed_everything(99, verbose=False)
    resumed = DropoutModel()
    ck2 = ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_last=True, save_top_k=-1)
    second = raylit.Trainer(max_epochs=3, callbacks=[ck2], default_root_dir=str(tmp_path / "a"), **QUIET)
    second.fit(resumed, ckpt_path="last")
    assert second.global_step == 30
    for k, v in _weights(full).items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    # the resumed run continued the same checkpoint series
    assert sorted(os.listdir(tmp_path / "ck")) == [
        "epoch=0-step=10.ckpt", "epoch=1-step=20.ckpt", "epoch=2-step=30.ckpt", "last.ckpt"]
    assert torch.load(ck2.last_model_path, weights_only=True)["global_step"] == 30


def test_checkpoint_has_lightning_keys_and_loads_safely(tmp_path):
    raylit.seed_everything(0, verbose=False)
    model = DropoutModel(lr=0.01)
    trainer = raylit.Trainer(max_epochs=1, limit_train_batches=2, default_root_dir=str(tmp_path),
                             enable_checkpointing=False, **QUIET)
    trainer.fit(model)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)  # plain types only: loads under the safe unpickler
    for key in ("epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops", "callbacks",
                "optimizer_states", "lr_schedulers", "hparams_name", "hyper_parameters"):
        assert key in ckpt, key
    assert ckpt["hyper_parameters"] == {"lr": 0.01}
    loaded = DropoutModel.load_from_checkpoint(path)
    assert loaded.hparams.lr == 0.01
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    # overrides win over saved hyperparameters
    assert DropoutModel.load_from_checkpoint(path, lr=0.5).hparams.lr == 0.5


class _Opaque:
    """A custom class a safe load must refuse to unpickle."""

    def __init__(self):
        self.value = 3


def test_untrusted_checkpoint_is_refused_with_a_clear_error(tmp_path):
    model = DropoutModel()
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {"obj": _Opaque()}}, path)
    with pytest.raises(CheckpointLoadError, match="weights_only=False"):
        DropoutModel.load_from_checkpoint(path)
    # explicit opt-out for a trusted file
    assert isinstance(raylit.checkpoint.load_checkpoint_file(path, weights_only=False)["hyper_parameters"]["obj"],
                      _Opaque)


def test_truncated_or_foreign_files_give_clear_errors(tmp_path):
    model = DropoutModel()
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": model.state_dict()}, good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointLoadError, match="truncated"):
        DropoutModel.load_from_checkpoint(truncated)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointLoadError, match="notes.ckpt"):
        DropoutModel.load_from_checkpoint(text)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        DropoutModel.load_from_checkpoint(tmp_path / "missing.ckpt")
    # a longer text file fails inside the unpickler with a KeyError (issue 13): still the named, clear error
    prose = tmp_path / "readme.txt"
    prose.write_text("hello world, this is a plain text file and not a checkpoint at all\n" * 3)
    with pytest.raises(CheckpointLoadError, match="readme.txt.*not a valid checkpoint"):
        DropoutModel.load_from_checkpoint(prose)


@pytest.mark.parametrize("value", [-1, -5, 1.5, True])
def test_bad_log_every_n_steps_is_refused_naming_the_argument(value):
    with pytest.raises(MisconfigurationException, match=r"log_every_n_steps=.*must be an int >= 0"):
        raylit.Trainer(log_every_n_steps=value)


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot serialise")


def test_failed_save_never_replaces_a_good_checkpoint(tmp_path):
    from raylit import fs

    path = str(tmp_path / "last.ckpt")
    fs.save_torch({"state_dict": {"w": torch.ones(3)}}, path)
    with pytest.raises(RuntimeError, match="cannot serialise"):
        fs.save_torch({"state_dict": {"w": torch.zeros(3)}, "bad": _Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temporary files left behind


def test_killed_writer_leaves_old_checkpoint_intact(tmp_path):
    """A process killed while writing a large checkpoint leaves the previous file complete."""
    path = tmp_path / "ckpt.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    code = (
        "import os, signal, torch, raylit.fs as fs\n"
        "orig = os.replace\n"
        "def die(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"  # dies after writing the data, before the rename
        "os.replace = die\n"
        f"fs.save_torch({{'state_dict': {{'w': torch.zeros(2_000_000)}}}}, {str(path)!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(2))


def test_import_raylit_does_not_import_ray():
    code = "import sys, raylit; print(sorted(m for m in ('ray', 'pytorch_lightning', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(precision="fp8"), ["fp8", "Allowed precision values"]),
        (dict(devices=0), ["devices=0", "int > 0"]),
        (dict(accelerator="tpu"), ["tpu", "cpu"]),
        (dict(strategy="deepspeed"), ["deepspeed", "ddp"]),
        (dict(num_nodes=0), ["num_nodes=0"]),
        (dict(accumulate_grad_batches=0), ["accumulate_grad_batches=0"]),
        (dict(val_check_interval=1.5), ["val_check_interval", "1.5"]),
        (dict(limit_train_batches=-1), ["limit_train_batches", "-1"]),
        (dict(gradient_clip_algorithm="foo"), ["foo", "norm"]),
        (dict(accelerator="gpu"), ["gpu", "no CUDA GPU"]),
    ],
)
def test_bad_trainer_arguments_name_the_argument_and_the_accepted_values(kwargs, words):
    with pytest.raises((MisconfigurationException, ValueError, TypeError)) as info:
        raylit.Trainer(**kwargs)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_missing_training_step_and_loader_are_reported_before_training(tmp_path):
    class NoLoader(raylit.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(MisconfigurationException, match="train_dataloader"):
        raylit.Trainer(max_epochs=1, **QUIET, default_root_dir=str(tmp_path)).fit(NoLoader())


class _NoisyDataset(torch.utils.data.Dataset):
    """Draws from numpy's global RNG inside DataLoader workers (augmentation-style randomness)."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        import numpy as np

        return torch.tensor([float(np.random.rand())])


def _worker_batches():
    raylit.seed_everything(7, workers=True, verbose=False)
    seen = []

    class Model(raylit.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            seen.append(batch.flatten().tolist())
            return self.layer(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

        def train_dataloader(self):
            return DataLoader(_NoisyDataset(), batch_size=2, num_workers=2)

    raylit.Trainer(max_epochs=1, enable_checkpointing=False, **QUIET).fit(Model())
    return seen


def test_seed_everything_workers_seeds_each_worker_reproducibly():
    first, second = _worker_batches(), _worker_batches()
    assert first == second  # reproducible
    # worker 0 produces batches 0, 2; worker 1 produces 1, 3: seeded workers draw different numbers
    assert first[0] != first[1]
    assert len({x for batch in first for x in batch}) == 8


# --- the one training step: hooks nobody overrides are skipped ------------------------------------------------
class _HookLog(raylit.Callback):
    """Overrides the per-batch hooks the step skips when nobody overrides them; they must run in their place."""

    def __init__(self):
        self.calls = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.calls.append(("start", batch_idx, trainer.global_step))

    def on_before_zero_grad(self, trainer, pl_module, optimizer):
        self.calls.append(("zero_grad", trainer.global_step))

    def on_before_backward(self, trainer, pl_module, loss):
        self.calls.append(("backward", round(float(loss), 6)))

    def on_after_backward(self, trainer, pl_module):
        self.calls.append(("after_backward", float(pl_module.net[0].weight.grad.abs().sum())))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.calls.append(("optimizer_step", trainer.global_step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.calls.append(("end", batch_idx, trainer.global_step, round(float(outputs["loss"]), 6)))


def _fit_with_hooks(tmp_path, name, with_hooks: bool, **trainer_kwargs):
    torch.manual_seed(0)
    model = DropoutModel()
    hooks = _HookLog()
    csv = raylit.loggers.CSVLogger(tmp_path, name=name)
    trainer = raylit.Trainer(max_epochs=2, default_root_dir=tmp_path / name, logger=csv, log_every_n_steps=3,
                             callbacks=[hooks] if with_hooks else [], enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False, **trainer_kwargs)
    trainer.fit(model)
    rows = (tmp_path / name / "version_0" / "metrics.csv").read_text()
    return _weights(model), hooks.calls, rows, dict(trainer.callback_metrics)


@pytest.mark.parametrize("kwargs", [{}, dict(accumulate_grad_batches=2, gradient_clip_val=0.5,
                                             precision="bf16-mixed")])
def test_skipping_unused_batch_hooks_changes_nothing(tmp_path, kwargs):
    """The training step skips batch hooks that no callback or module overrides. A callback that overrides
    all of them (and only records) sees them in Lightning's order, and training is bitwise the same: weights,
    metrics rows and callback metrics — for the default configuration and for bf16-mixed + accumulation +
    clipping, which take the same step."""
    w_plain, _, rows_plain, cm_plain = _fit_with_hooks(tmp_path, "plain", False, **kwargs)
    w_hooked, calls, rows_hooked, cm_hooked = _fit_with_hooks(tmp_path, "hooked", True, **kwargs)
    assert w_plain.keys() == w_hooked.keys() and all(torch.equal(w_plain[k], w_hooked[k]) for k in w_plain)
    assert rows_plain == rows_hooked
    assert cm_plain.keys() == cm_hooked.keys() and all(torch.equal(cm_plain[k], cm_hooked[k]) for k in cm_plain)
    if not kwargs:
        assert [c[0] for c in calls[:6]] == ["start", "zero_grad", "backward", "after_backward", "optimizer_step",
                                             "end"]
    else:  # accumulation over 2 batches: zero_grad on the first of each window, the optimizer on the second
        assert [c[0] for c in calls[:9]] == ["start", "zero_grad", "backward", "after_backward", "end",
                                             "start", "backward", "after_backward", "optimizer_step"]


@pytest.mark.parametrize("value", ["00:00:01:30", {"minutes": 1, "seconds": 30}, "timedelta"])
def test_time_based_val_check_interval_keeps_the_value_passed(value):
    """README: ``trainer.val_check_interval`` keeps a time-based value as given (Lightning leaves it unset);
    all three forms mean the same interval."""
    from datetime import timedelta

    value = timedelta(minutes=1, seconds=30) if value == "timedelta" else value
    trainer = raylit.Trainer(val_check_interval=value, **QUIET)
    assert trainer.val_check_interval == value and trainer.config.val_check_seconds == 90.0


def test_fit_accepts_a_torch_compiled_module(tmp_path):
    """``trainer.fit(torch.compile(model))`` (issue 12): the forward and step methods run through the compiler
    (a counting backend sees them), training matches an uncompiled run (the backend runs the graphs eagerly), the
    checkpoint has the plain module's keys, and the user's module is plain again afterwards."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def fit(compiled: bool):
        torch.manual_seed(0)
        model = DropoutModel()
        trainer = raylit.Trainer(max_epochs=2, default_root_dir=tmp_path / str(compiled), **QUIET,
                                 enable_checkpointing=False)
        trainer.fit(torch.compile(model, backend=counting_backend) if compiled else model)
        trainer.save_checkpoint(tmp_path / f"{compiled}.ckpt")
        return model, trainer

    plain, _ = fit(False)
    compiled, trainer = fit(True)
    assert graphs, "nothing ran through the compiler"
    assert trainer.lightning_module is compiled
    for a, b in zip(plain.parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b)
    keys = torch.load(tmp_path / "True.ckpt", weights_only=True)["state_dict"].keys()
    assert set(keys) == set(plain.state_dict()) and not any("_orig_mod" in k for k in keys)
    assert "training_step" not in compiled.__dict__ and "forward" not in compiled.__dict__
