"""Profilers (``raylit.profilers``, ``Trainer(profiler=...)``), checked against Lightning 2.6 where it can run:
the same program under both frameworks records the same hook actions the same number of times, writes the same
report files, and formats the same report from the same durations."""

from __future__ import annotations

import logging
import pickle
import pstats
import time
from pathlib import Path

import _parity_helpers as H
import pytest
import torch
from torch import nn

pytestmark = [pytest.mark.filterwarnings(f"ignore:{p}") for p in H.NOISY_WARNINGS]
H.quiet_warnings()


def _classes(pl):
    callbacks = H.submodule(pl, "callbacks")

    class Model(pl.LightningModule):
        def __init__(self, manual: bool = False) -> None:
            super().__init__()
            self.layer = nn.Linear(32, 2)
            self.automatic_optimization = not manual

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch).sum()
            if not self.automatic_optimization:
                opt = self.optimizers()
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.layer(batch).sum())

        def test_step(self, batch, batch_idx):
            self.log("test_loss", self.layer(batch).sum())

        def predict_step(self, batch, batch_idx):
            return self.layer(batch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Data(pl.LightningDataModule):
        def prepare_data(self):
            pass

        def state_dict(self):
            return {"n": 1}

        def train_dataloader(self):
            return H.loader(8, 2)

        def val_dataloader(self):
            return H.loader(4, 2)

        def test_dataloader(self):
            return H.loader(4, 2)

        def predict_dataloader(self):
            return H.loader(4, 2)

    class Watcher(callbacks.Callback):
        def on_train_batch_end(self, *args):
            pass

    return Model, Data, Watcher


def _recorded(pl, root: Path, trainer_kwargs: dict, manual: bool = False) -> dict[str, int]:
    """fit, validate, test and predict with one SimpleProfiler: {action: number of calls}."""
    Model, Data, Watcher = _classes(pl)
    pl.seed_everything(0)
    profiler = H.submodule(pl, "profilers").SimpleProfiler()
    kwargs = {**H.QUIET, "enable_checkpointing": True, "max_epochs": 2, "num_sanity_val_steps": 1, **trainer_kwargs}
    trainer = pl.Trainer(default_root_dir=root, profiler=profiler, callbacks=[Watcher()], **kwargs)
    model, dm = Model(manual), Data()
    trainer.fit(model, datamodule=dm)
    trainer.validate(model, datamodule=dm, verbose=False)
    trainer.test(model, datamodule=dm, verbose=False)
    trainer.predict(model, datamodule=dm)
    assert trainer.profiler is profiler
    return {k: len(v) for k, v in profiler.recorded_durations.items()}


# Lightning also profiles its internals (strategy plumbing, data fetching, checkpoint saving); raylit records what
# users write (module, datamodule and callback hooks, the step methods, backward) and the training epoch/batch.
_COMPARED_STRATEGY = ("training_step", "validation_step", "test_step", "predict_step", "backward")


def _user_visible(recorded: dict[str, int]) -> dict[str, int]:
    keep = {}
    for action, n in recorded.items():
        if action.startswith(("[LightningModule]", "[LightningDataModule]", "[Callback]")) or \
                action in ("run_training_epoch", "run_training_batch") or \
                (action.startswith("[Strategy]") and action.rsplit(".", 1)[1] in _COMPARED_STRATEGY):
            keep[action] = n
    return keep


@pytest.mark.parametrize("config", ["default", "accumulate_clip", "manual"])
def test_recorded_actions_match_lightning(config, tmp_path, lightning_reference):
    kwargs = {"default": {}, "accumulate_clip": {"accumulate_grad_batches": 2, "gradient_clip_val": 0.5},
              "manual": {}}[config]
    key = ("profiler-actions", config)
    if key not in lightning_reference:
        lightning_reference[key] = _user_visible(
            _recorded(H.import_framework(H.REFERENCE), tmp_path / "lightning", kwargs, manual=config == "manual"))
    expected = lightning_reference[key]
    actual = _user_visible(_recorded(H.import_framework("raylit"), tmp_path / "raylit", kwargs,
                                     manual=config == "manual"))
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    counts = {k: (expected[k], actual[k]) for k in set(expected) & set(actual) if expected[k] != actual[k]}
    assert not missing and not extra and not counts, f"missing {missing}\nextra {extra}\ncounts {counts}"
    assert expected["run_training_batch"] == 8  # 2 epochs of 4 batches


def test_profiling_does_not_change_training(tmp_path):
    """A profiled run calls every hook instead of the loop's inline defaults; the numbers must not move."""
    import raylit

    Model, Data, _ = _classes(raylit)
    weights = []
    for profiler in (None, "simple"):
        raylit.seed_everything(0)
        model = Model()
        trainer = raylit.Trainer(default_root_dir=tmp_path, max_epochs=2, accumulate_grad_batches=2,
                                 profiler=profiler, **H.QUIET)
        trainer.fit(model, datamodule=Data())
        weights.append(([p.detach().clone() for p in model.parameters()], trainer.global_step))
    (w0, s0), (w1, s1) = weights
    assert s0 == s1 == 4
    assert all(torch.equal(a, b) for a, b in zip(w0, w1))


def test_unprofiled_runs_use_the_plain_dispatcher(tmp_path):
    import raylit
    from raylit.hooks import HookDispatcher
    from raylit.profilers import PassThroughProfiler

    Model, Data, _ = _classes(raylit)
    trainer = raylit.Trainer(default_root_dir=tmp_path, max_steps=1, **H.QUIET)
    assert isinstance(trainer.profiler, PassThroughProfiler)
    trainer.fit(Model(), datamodule=Data())
    assert type(trainer._run.hooks) is HookDispatcher
    assert type(raylit.Trainer(profiler="simple", **H.QUIET).profiler).__name__ == "SimpleProfiler"
    assert type(raylit.Trainer(profiler="Advanced", **H.QUIET).profiler).__name__ == "AdvancedProfiler"


def _report_files(pl, root: Path) -> dict[str, str]:
    """fit + test with SimpleProfiler(filename="perf"): once with a dirpath, once into the log dir."""
    Model, Data, _ = _classes(pl)
    profilers = H.submodule(pl, "profilers")
    out = {}
    for where, prof in (("dirpath", profilers.SimpleProfiler(dirpath=root / "reports", filename="perf")),
                        ("log_dir", profilers.AdvancedProfiler(filename="adv"))):
        trainer = pl.Trainer(default_root_dir=root / where, max_steps=2, profiler=prof, **H.QUIET)
        model, dm = Model(), Data()
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm, verbose=False)
        base = root / "reports" if where == "dirpath" else root / where
        for p in sorted(base.glob("*.txt")):
            out[f"{where}/{p.name}"] = p.read_text().splitlines()[0]
    return out


def test_report_files_match_lightning(tmp_path, lightning_reference):
    key = ("profiler-report-files",)
    if key not in lightning_reference:
        lightning_reference[key] = _report_files(H.import_framework(H.REFERENCE), tmp_path / "lightning")
    expected = lightning_reference[key]
    assert expected == {"dirpath/fit-perf.txt": "FIT Profiler Report", "dirpath/test-perf.txt": "TEST Profiler Report",
                        "log_dir/fit-adv.txt": "FIT Profiler Report", "log_dir/test-adv.txt": "TEST Profiler Report"}
    assert _report_files(H.import_framework("raylit"), tmp_path / "raylit") == expected


def test_report_is_logged_without_a_filename(tmp_path):
    import raylit
    from raylit.profilers import SimpleProfiler

    Model, Data, _ = _classes(raylit)
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    log = logging.getLogger("raylit.profilers")
    log.addHandler(handler)
    try:
        raylit.Trainer(default_root_dir=tmp_path, max_steps=1, profiler=SimpleProfiler(dirpath=tmp_path), **H.QUIET
                       ).fit(Model(), datamodule=Data())
    finally:
        log.removeHandler(handler)
    assert len(records) == 1 and records[0].startswith("FIT Profiler Report")
    assert "[Strategy]SingleDeviceStrategy.training_step" in records[0]
    assert not list(tmp_path.glob("*.txt"))  # a dirpath without a filename writes no file, as in Lightning


@pytest.mark.parametrize("extended", [True, False])
def test_simple_summary_text_matches_lightning(extended, monkeypatch):
    """The same recorded durations make the same report, character for character."""
    import pytorch_lightning.profilers as lp

    import raylit.profilers as rp

    durations = {"[LightningModule]M.on_fit_start": [0.25], "run_training_batch": [0.5, 0.75, 1.0],
                 "a_longer_action_name_than_the_others": [1e-6, 3e-6]}
    texts = []
    for mod in (lp, rp):
        monkeypatch.setattr(time, "perf_counter", lambda: 100.0)
        prof = mod.SimpleProfiler(extended=extended)
        for action, values in durations.items():
            prof.recorded_durations[action] = list(values)
        prof.start_time = 90.0
        prof._stage = "fit"
        texts.append(prof.summary())
    assert texts[0] == texts[1]
    assert texts[1].startswith("FIT Profiler Report")


def test_simple_profiler_api():
    from raylit.profilers import PassThroughProfiler, SimpleProfiler

    prof = SimpleProfiler()
    with prof.profile("a") as name:
        assert name == "a"
    prof.start("b")
    with pytest.raises(ValueError, match="already started"):
        prof.start("b")
    prof.stop("b")
    with pytest.raises(ValueError, match="never started"):
        prof.stop("b")
    assert {k: len(v) for k, v in prof.recorded_durations.items()} == {"a": 1, "b": 1}
    assert prof.summary().startswith("Profiler Report")
    prof2 = pickle.loads(pickle.dumps(prof))
    assert {k: len(v) for k, v in prof2.recorded_durations.items()} == {"a": 1, "b": 1}
    passthrough = PassThroughProfiler()
    with passthrough.profile("x"):
        pass
    assert passthrough.summary() == ""


def test_advanced_profiler(tmp_path):
    from raylit.profilers import AdvancedProfiler

    prof = AdvancedProfiler(dirpath=tmp_path, filename="adv", line_count_restriction=3, dump_stats=True)
    prof.setup("fit")
    for _ in range(2):
        with prof.profile("sorting"):
            sorted(range(10000), key=lambda x: -x)
    text = prof.summary()
    assert text.startswith("FIT Profiler Report") and "Profile stats for: sorting" in text
    assert "due to restriction <3>" in text
    dumped = tmp_path / "fit-adv-sorting.prof"
    assert pstats.Stats(str(dumped)).total_calls > 0
    with pytest.raises(ValueError, match="never started"):
        prof.stop("missing")
    clone = pickle.loads(pickle.dumps(prof))  # cProfile objects stay behind
    assert clone.profiled_actions == {} and clone.line_count_restriction == 3
    prof.describe()
    assert (tmp_path / "fit-adv.txt").read_text().startswith("FIT Profiler Report")


def test_pytorch_profiler_on_cpu(tmp_path):
    import raylit
    from raylit.profilers import PyTorchProfiler

    Model, Data, _ = _classes(raylit)
    prof = PyTorchProfiler(dirpath=tmp_path, filename="torch", row_limit=5)
    trainer = raylit.Trainer(default_root_dir=tmp_path, max_steps=2, limit_val_batches=1, profiler=prof, **H.QUIET)
    trainer.fit(Model(), datamodule=Data())
    report = (tmp_path / "fit-torch.txt").read_text()
    assert report.startswith("FIT Profiler Report") and "Profile stats for: records" in report
    assert "[pl][profile]" in report or "aten::" in report, report
    trace = tmp_path / "fit-torch.pt.trace.json"
    assert trace.exists() and "[pl][profile]" in trace.read_text()
    from raylit.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match="sort_by_key"):
        PyTorchProfiler(sort_by_key="nonsense")


def test_bad_profiler_flag_matches_lightning():
    import pytorch_lightning as lpl

    import raylit

    with pytest.raises(Exception) as expected:
        lpl.Trainer(profiler="nonsense")
    with pytest.raises(Exception) as actual:
        raylit.Trainer(profiler="nonsense")
    assert type(actual.value).__name__ == type(expected.value).__name__ == "MisconfigurationException"
    assert str(actual.value).split(" it can only be")[0] == str(expected.value).split(" it can only be")[0]
    with pytest.raises(TypeError):
        raylit.Trainer(profiler=object())


@pytest.mark.ray
def test_report_written_by_rank_zero_on_ray_workers(ray_cluster, tmp_path):
    """The profiler travels to the workers with the Trainer; global rank 0 writes its report into dirpath."""
    import raylit
    from raylit.profilers import SimpleProfiler
    from raylit.testing import BoringModel

    trainer = raylit.Trainer(devices=2, max_steps=2, limit_val_batches=1, default_root_dir=tmp_path,
                             profiler=SimpleProfiler(dirpath=tmp_path / "prof", filename="perf"), **H.QUIET)
    trainer.fit(BoringModel())
    files = sorted(p.name for p in (tmp_path / "prof").iterdir())
    assert files == ["fit-perf-0.txt"]  # Lightning's name for local rank 0's report
    text = (tmp_path / "prof" / "fit-perf-0.txt").read_text()
    assert "[Strategy]DDPStrategy.training_step" in text and "run_training_batch" in text


def _failed_then_ok(pl, root: Path) -> dict[str, int]:
    Model, Data, _ = _classes(pl)

    class Failing(Model):
        def training_step(self, batch, batch_idx):
            if batch_idx == 1:
                raise ValueError("boom")
            return super().training_step(batch, batch_idx)

    prof = H.submodule(pl, "profilers").SimpleProfiler()
    trainer = pl.Trainer(default_root_dir=root, max_epochs=1, profiler=prof, **H.QUIET)
    with pytest.raises(ValueError, match="boom"):
        trainer.fit(Failing(), datamodule=Data())
    assert prof.current_actions == {}  # nothing left open
    pl.Trainer(default_root_dir=root, max_epochs=1, profiler=prof, **H.QUIET).fit(Model(), datamodule=Data())
    return {k: len(prof.recorded_durations[k]) for k in ("run_training_epoch", "run_training_batch")}


def test_profiler_survives_a_failed_run(tmp_path):
    """A run that fails mid-batch leaves no action open (the failed epoch and batch are recorded, as in Lightning);
    the same profiler records the next run."""
    expected = _failed_then_ok(H.import_framework(H.REFERENCE), tmp_path / "lightning")
    assert expected == {"run_training_epoch": 2, "run_training_batch": 2 + 4}
    assert _failed_then_ok(H.import_framework("raylit"), tmp_path / "raylit") == expected
