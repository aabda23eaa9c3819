"""Built-in callbacks, checked against Lightning 2.6 where it is cheap.

Part 1 needs no Trainer: file names, state keys, argument validation, early-stopping decisions, summaries,
LR-monitor names, and ModelCheckpoint's top-k bookkeeping driven by the same scripted hook sequence through
both libraries' callbacks (a small fake trainer that satisfies both). Part 2 runs real fits.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning.callbacks as lcb
import torch
import yaml

from raylit import callbacks as rcb
from raylit.callbacks.early_stopping import EarlyStoppingReason
from raylit.callbacks.model_summary import format_summary_table, get_human_readable_count, summarize
from raylit.callbacks.progress.progress_bar import get_standard_metrics

pytestmark = pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")


# ----------------------------------------------------------------------------------------------------------
# ModelCheckpoint: names, keys, validation
# ----------------------------------------------------------------------------------------------------------
TEMPLATES = [
    None,
    "{epoch}",
    "{epoch:03d}",
    "{epoch}-{val_loss:.2f}",
    "sample-mnist-{epoch:02d}-{val_loss:.2f}",
    "{epoch}-{epoch_test}",  # a name that starts with another name
    "{missing:d}",
    "{val/loss:.3f}",
    "{step}-{val.acc:.1f}",
    "plain",
]
METRICS = {
    "epoch": 3,
    "step": 42,
    "val_loss": torch.tensor(0.123456),
    "epoch_test": 7,
    "val/loss": 1.5,
    "val.acc": 0.25,
}


@pytest.mark.parametrize("auto_insert", [True, False])
@pytest.mark.parametrize("template", TEMPLATES)
def test_format_checkpoint_name_matches_lightning(tmp_path, template, auto_insert):
    kwargs = {"dirpath": tmp_path, "filename": template, "auto_insert_metric_name": auto_insert}
    ours, theirs = rcb.ModelCheckpoint(**kwargs), lcb.ModelCheckpoint(**kwargs)
    for extra in [{}, {"ver": 2}, {"prefix": "pre"}, {"filename": "last"}]:
        assert ours.format_checkpoint_name(dict(METRICS), **extra) == theirs.format_checkpoint_name(
            dict(METRICS), **extra
        )


def test_format_checkpoint_name_examples(tmp_path):
    ckpt = rcb.ModelCheckpoint(dirpath=tmp_path, filename="{epoch}-{val_loss:.2f}")
    assert ckpt.format_checkpoint_name({"epoch": 1, "val_loss": 22.0417}) == str(
        tmp_path / "epoch=1-val_loss=22.04.ckpt"
    )
    ckpt = rcb.ModelCheckpoint(filename="{step}")  # no dirpath: just the name
    assert ckpt.format_checkpoint_name({"step": 0}) == "step=0.ckpt"
    metrics = {"epoch": 1}
    ckpt.format_checkpoint_name(metrics, filename="{epoch}-{nope}")
    assert metrics == {"epoch": 1}, "the caller's dict must not gain the missing names"


STATE_KEY_KWARGS = [
    {},
    {"monitor": "val_loss"},
    {"monitor": "acc", "mode": "max", "every_n_train_steps": 5},
    {"train_time_interval": timedelta(seconds=3)},
    {"every_n_epochs": 2, "monitor": "val/loss"},
]


@pytest.mark.parametrize("kwargs", STATE_KEY_KWARGS)
def test_model_checkpoint_state_key_matches_lightning(kwargs):
    assert rcb.ModelCheckpoint(**kwargs).state_key == lcb.ModelCheckpoint(**kwargs).state_key


def test_model_checkpoint_state_key_literal():
    key = rcb.ModelCheckpoint(monitor="val_loss").state_key
    assert key == (
        "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, "
        "'every_n_epochs': 1, 'train_time_interval': None}"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "avg"},
        {"save_top_k": -2},
        {"save_top_k": 3},  # without a monitor
        {"every_n_train_steps": -1},
        {"every_n_epochs": -1},
        {"every_n_epochs": 2, "every_n_train_steps": 3},
        {"every_n_train_steps": 3, "train_time_interval": timedelta(seconds=1)},
    ],
)
def test_model_checkpoint_rejects_what_lightning_rejects(kwargs):
    with pytest.raises(Exception) as theirs:
        lcb.ModelCheckpoint(**kwargs)
    with pytest.raises(Exception) as ours:
        rcb.ModelCheckpoint(**kwargs)
    assert type(ours.value).__name__ == type(theirs.value).__name__
    assert str(ours.value) == str(theirs.value)


def test_model_checkpoint_defaults_and_dirpath(tmp_path):
    ckpt = rcb.ModelCheckpoint(dirpath=str(tmp_path / "a" / ".." / "b"))
    assert ckpt.dirpath == os.path.realpath(tmp_path / "b")
    assert (ckpt.every_n_epochs, ckpt._every_n_train_steps, ckpt._train_time_interval) == (1, 0, None)
    assert ckpt.best_model_path == ckpt.last_model_path == ckpt.kth_best_model_path == ""
    assert ckpt.best_model_score is None and ckpt.current_score is None and ckpt.best_k_models == {}
    assert torch.isinf(ckpt.kth_value) and ckpt.kth_value > 0
    assert rcb.ModelCheckpoint(mode="max").kth_value < 0
    assert ckpt.runs_after_module_epoch_end and isinstance(ckpt, rcb.Checkpoint)
    assert rcb.ModelCheckpoint(every_n_train_steps=4).every_n_epochs == 0


# ----------------------------------------------------------------------------------------------------------
# ModelCheckpoint: top-k bookkeeping, the same scripted run through both libraries' callbacks
# ----------------------------------------------------------------------------------------------------------
class _FakeStrategy:
    world_size = 1

    def broadcast(self, obj, src=0):
        return obj

    def barrier(self, *args, **kwargs):
        pass

    def reduce_boolean_decision(self, decision, all=True):
        return decision

    def remove_checkpoint(self, path):  # Lightning's callback deletes through the strategy
        if os.path.exists(path):
            os.remove(path)


class FakeTrainer:
    """Just enough Trainer for both ModelCheckpoint implementations: a one-rank fit whose validation
    'produces' scripted metrics. Not a model of the loop beyond the hook order Lightning uses."""

    def __init__(self, root: Path, batches: int = 2, **overrides):
        self.default_root_dir = str(root)
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.current_epoch = self.global_step = self.global_rank = 0
        self.world_size = 1
        self.is_global_zero = True
        self.should_stop = self.sanity_checking = False
        self.fast_dev_run = False
        self.state = SimpleNamespace(fn="fit")
        self.loggers: list = []
        self.val_check_interval = 1.0
        self.check_val_every_n_epoch = 1
        self.num_val_batches = [1]
        self.num_training_batches = batches
        self.ckpt_path = None
        self.is_last_batch = False
        self.strategy = _FakeStrategy()
        self.saved: list[tuple[str, int]] = []
        self.fit_loop = SimpleNamespace(
            epoch_loop=SimpleNamespace(
                val_loop=SimpleNamespace(_has_run=True), batch_progress=SimpleNamespace(is_last_batch=False)
            )
        )
        self.__dict__.update(overrides)

    def save_checkpoint(self, filepath, weights_only=False):
        os.makedirs(os.path.dirname(filepath), exist_ok=True)
        Path(filepath).write_text(f"{self.current_epoch} {self.global_step}")
        self.saved.append((os.path.basename(filepath), self.global_step))

    def fit(self, callback, scores, metric="val_loss", epochs=None, validate=True):
        """Hook order of one Lightning fit: batches, validation at the end of each epoch, epoch end."""
        callback.setup(self, None, "fit")
        callback.on_train_start(self, None)
        for epoch in range(epochs or len(scores)):
            self.current_epoch = epoch
            for batch_idx in range(self.num_training_batches):
                self.global_step += 1
                self.is_last_batch = batch_idx == self.num_training_batches - 1
                self.fit_loop.epoch_loop.batch_progress.is_last_batch = self.is_last_batch
                callback.on_train_batch_end(self, SimpleNamespace(automatic_optimization=True), None, None, batch_idx)
            if epoch < len(scores) and scores[epoch] is not None:
                self.callback_metrics = {metric: torch.tensor(float(scores[epoch]))}
            if validate:
                callback.on_validation_batch_end(self, None, None, None, 0)
                callback.on_validation_end(self, None)
            callback.on_train_epoch_end(self, None)
        self.current_epoch += 1
        callback.on_train_end(self, None)


def _run_both(tmp_path, scores, trainer_kwargs=None, **ckpt_kwargs):
    results = []
    for name, lib in (("lightning", lcb), ("raylit", rcb)):
        root = tmp_path / name
        cb = lib.ModelCheckpoint(dirpath=root / "ckpts", **ckpt_kwargs)
        trainer = FakeTrainer(root, **(trainer_kwargs or {}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(cb, scores)
        results.append((cb, trainer, root / "ckpts"))
    return results


def _rel(cb_path: str, dirpath: Path) -> str:
    return os.path.relpath(cb_path, dirpath) if cb_path else ""


SCENARIOS = {
    "top2_last": {"monitor": "val_loss", "save_top_k": 2, "save_last": True},
    "top1_max_last": {"monitor": "val_loss", "mode": "max", "save_top_k": 1, "save_last": True},
    "all": {"monitor": "val_loss", "save_top_k": -1, "filename": "{epoch}-{val_loss:.1f}"},
    "latest_only": {"save_top_k": 1, "save_last": True},
    "keep_every": {"save_top_k": -1},
    "none_but_last": {"save_top_k": 0, "save_last": True},
    "every_2_epochs": {"monitor": "val_loss", "save_top_k": 2, "every_n_epochs": 2},
    "every_3_steps": {"monitor": "val_loss", "save_top_k": 2, "every_n_train_steps": 3, "save_last": True},
    "every_3_steps_no_monitor": {"every_n_train_steps": 3, "save_top_k": -1},
    "same_name_versions": {"monitor": "val_loss", "save_top_k": 3, "filename": "constant"},
    "same_name_overwrite": {
        "monitor": "val_loss",
        "save_top_k": 3,
        "filename": "constant",
        "enable_version_counter": False,
    },
    "link": {"monitor": "val_loss", "save_top_k": 2, "save_last": "link"},
}
SCORES = [5.0, 3.0, 4.0, float("nan"), 2.0, 2.5, 6.0]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_topk_bookkeeping_matches_lightning(tmp_path, scenario):
    (theirs, t_trainer, t_dir), (ours, o_trainer, o_dir) = _run_both(tmp_path, SCORES, **SCENARIOS[scenario])
    assert o_trainer.saved == t_trainer.saved  # same files written at the same steps, in the same order
    assert sorted(os.listdir(o_dir)) == sorted(os.listdir(t_dir))  # same files kept
    for name in os.listdir(t_dir):
        assert os.path.islink(o_dir / name) == os.path.islink(t_dir / name)
        assert (o_dir / name).read_text() == (t_dir / name).read_text()
    assert {_rel(k, o_dir): float(v) for k, v in ours.best_k_models.items()} == {
        _rel(k, t_dir): float(v) for k, v in theirs.best_k_models.items()
    }
    for attr in ("best_model_path", "kth_best_model_path", "last_model_path"):
        assert _rel(getattr(ours, attr), o_dir) == _rel(getattr(theirs, attr), t_dir), attr
    for attr in ("best_model_score", "kth_value", "current_score"):
        a, b = getattr(ours, attr), getattr(theirs, attr)
        assert (a is None) == (b is None), attr
        if a is not None:
            assert float(a) == float(b) or (math.isnan(float(a)) and math.isnan(float(b))), attr
    assert set(ours.state_dict()) == set(theirs.state_dict())


def test_topk_nan_is_stored_as_worst(tmp_path):
    ckpt = rcb.ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=-1)
    FakeTrainer(tmp_path).fit(ckpt, [1.0, float("nan")])
    assert sorted(float(v) for v in ckpt.best_k_models.values()) == [1.0, float("inf")]
    assert float(ckpt.best_model_score) == 1.0


def test_missing_monitor_raises_only_after_validation_ran(tmp_path):
    trainer = FakeTrainer(tmp_path, num_val_batches=[0])
    with pytest.warns(UserWarning, match="could not find the monitored key"):
        trainer.fit(rcb.ModelCheckpoint(dirpath=tmp_path, monitor="val_acc"), [1.0], validate=False)
    with pytest.raises(Exception, match="could not find the monitored key") as err:
        FakeTrainer(tmp_path).fit(rcb.ModelCheckpoint(dirpath=tmp_path, monitor="val_acc"), [1.0])
    assert type(err.value).__name__ == "MisconfigurationException"


def test_state_dict_round_trip_continues_bookkeeping(tmp_path):
    first = rcb.ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    trainer = FakeTrainer(tmp_path)
    trainer.fit(first, [3.0, 1.0])
    state = first.state_dict()
    assert set(state) == {
        "monitor", "best_model_score", "best_model_path", "current_score", "dirpath",
        "best_k_models", "kth_best_model_path", "kth_value", "last_model_path",
    }  # fmt: skip

    resumed = rcb.ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    resumed.load_state_dict(state)
    assert resumed.best_k_models == first.best_k_models and resumed.last_model_path == first.last_model_path
    trainer.callback_metrics = {"val_loss": torch.tensor(2.0)}
    trainer.global_step += 1
    trainer.current_epoch = 2
    resumed.setup(trainer, None, "fit")
    resumed.on_train_epoch_end(trainer, None)
    # 3.0 dropped out of the top 2 and its file is gone; last.ckpt was overwritten, not versioned.
    assert sorted(float(v) for v in resumed.best_k_models.values()) == [1.0, 2.0]
    assert sorted(os.listdir(tmp_path)) == ["epoch=1-step=4.ckpt", "epoch=2-step=5.ckpt", "last.ckpt"]

    moved = rcb.ModelCheckpoint(dirpath=tmp_path / "elsewhere", monitor="val_loss")
    with pytest.warns(UserWarning, match="dirpath has changed"):
        moved.load_state_dict(state)
    assert moved.best_model_path == state["best_model_path"] and moved.best_k_models == {}


def test_resume_checkpoint_is_not_deleted(tmp_path):
    ckpt = rcb.ModelCheckpoint(dirpath=tmp_path, save_top_k=1)
    trainer = FakeTrainer(tmp_path)
    trainer.fit(ckpt, [None], epochs=1)
    resumed_from = ckpt.best_model_path
    trainer.ckpt_path = resumed_from
    trainer.fit(ckpt, [None], epochs=1)
    assert os.path.exists(resumed_from) and ckpt.best_model_path != resumed_from


def test_only_rank_zero_deletes(tmp_path):
    ckpt = rcb.ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1)
    trainer = FakeTrainer(tmp_path, is_global_zero=False, global_rank=1, world_size=2)
    trainer.fit(ckpt, [3.0, 1.0])
    assert len(os.listdir(tmp_path)) == 2  # rank 1 wrote (through the fake trainer) but removed nothing


@pytest.mark.parametrize(
    "overrides",
    [{"fast_dev_run": True}, {"sanity_checking": True}, {"state": SimpleNamespace(fn="validate")}],
)
def test_skipped_saves_match_lightning(tmp_path, overrides):
    (_, theirs, _), (_, ours, _) = _run_both(tmp_path, [1.0, 2.0], trainer_kwargs=overrides, save_last=True)
    assert ours.saved == theirs.saved
    assert [name for name, _ in ours.saved] in ([], ["last.ckpt"])  # at most the on_train_end last.ckpt


def test_save_on_train_epoch_end_rule():
    ckpt = rcb.ModelCheckpoint()
    decide = ckpt._should_save_on_train_epoch_end
    assert decide(SimpleNamespace(val_check_interval=1.0, check_val_every_n_epoch=1, num_val_batches=[3]))
    assert decide(SimpleNamespace(val_check_interval=0.5, check_val_every_n_epoch=1, num_val_batches=[0]))
    assert not decide(SimpleNamespace(val_check_interval=0.5, check_val_every_n_epoch=1, num_val_batches=[3]))
    assert not decide(SimpleNamespace(val_check_interval=1.0, check_val_every_n_epoch=2, num_val_batches=[3]))
    assert not decide(SimpleNamespace(val_check_interval="00:00:01:00", check_val_every_n_epoch=1, num_val_batches=[3]))
    assert rcb.ModelCheckpoint(save_on_train_epoch_end=False)._should_save_on_train_epoch_end(None) is False


def test_train_time_interval_saves_once_elapsed(tmp_path):
    ckpt = rcb.ModelCheckpoint(dirpath=tmp_path, train_time_interval=timedelta(seconds=0), save_top_k=-1)
    trainer = FakeTrainer(tmp_path, batches=3)
    trainer.fit(ckpt, [None])
    assert [step for _, step in trainer.saved] == [1, 2, 3]


def test_after_save_checkpoint_reaches_every_logger(tmp_path):
    seen = []
    loggers = [SimpleNamespace(after_save_checkpoint=lambda cb, i=i: seen.append((i, cb))) for i in range(2)]
    ckpt = rcb.ModelCheckpoint(dirpath=tmp_path)
    FakeTrainer(tmp_path, loggers=loggers).fit(ckpt, [None, None])
    assert seen == [(0, ckpt), (1, ckpt)] * 2


def test_to_yaml(tmp_path):
    ckpt = rcb.ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2)
    FakeTrainer(tmp_path).fit(ckpt, [3.0, 1.0, 2.0])
    ckpt.to_yaml()
    data = yaml.safe_load((tmp_path / "best_k_models.yaml").read_text())
    assert data == {k: float(v) for k, v in ckpt.best_k_models.items()} and sorted(data.values()) == [
        1.0,
        2.0,
    ]


def test_dirpath_resolution(tmp_path):
    ckpt = rcb.ModelCheckpoint()
    trainer = FakeTrainer(tmp_path)
    assert ckpt._resolve_dirpath(trainer) == str(tmp_path / "checkpoints")
    trainer.loggers = [SimpleNamespace(save_dir=str(tmp_path / "logs"), name="lightning_logs", version=3)]
    assert ckpt._resolve_dirpath(trainer) == str(tmp_path / "logs" / "lightning_logs" / "version_3" / "checkpoints")
    trainer.loggers = [SimpleNamespace(save_dir=None, name="n", version="run-a")]
    assert ckpt._resolve_dirpath(trainer) == str(tmp_path / "n" / "run-a" / "checkpoints")


# ----------------------------------------------------------------------------------------------------------
# EarlyStopping
# ----------------------------------------------------------------------------------------------------------
def test_early_stopping_state_key_and_defaults():
    for kwargs in ({"monitor": "val_loss"}, {"monitor": "acc", "mode": "max"}):
        assert rcb.EarlyStopping(**kwargs).state_key == lcb.EarlyStopping(**kwargs).state_key
    es = rcb.EarlyStopping("val_loss")
    assert es.state_key == "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"
    assert es.runs_after_module_epoch_end
    assert (es.wait_count, es.stopped_epoch, es.stopping_reason, es.stopping_reason_message) == (
        0,
        0,
        EarlyStoppingReason.NOT_STOPPED,
        None,
    )
    with pytest.raises(Exception, match="`mode` can be"):
        rcb.EarlyStopping("x", mode="avg")


ES_CASES = {
    "patience": ({"patience": 2}, [5, 4, 4.5, 4.2, 3, 3.5, 3.6]),
    "min_delta": ({"patience": 2, "min_delta": 0.5}, [5, 4.6, 4.4, 4.0, 3.9, 3.8]),
    "max_mode": ({"patience": 1, "mode": "max", "min_delta": 0.1}, [0.1, 0.5, 0.55, 0.7]),
    "stopping_threshold": ({"stopping_threshold": 1.0}, [3, 2, 0.9, 5]),
    "divergence": ({"divergence_threshold": 10.0}, [3, 2, 11, 1]),
    "non_finite": ({}, [3, float("inf"), 1]),
    "non_finite_unchecked": ({"check_finite": False, "patience": 2}, [3, float("nan"), float("nan"), 1]),
}


@pytest.mark.parametrize("case", sorted(ES_CASES))
def test_early_stopping_decisions_match_lightning(case):
    kwargs, values = ES_CASES[case]
    ours, theirs = rcb.EarlyStopping("m", **kwargs), lcb.EarlyStopping("m", **kwargs)
    for value in values:
        current = torch.tensor(float(value))
        assert ours._evaluate_stopping_criteria(current) == theirs._evaluate_stopping_criteria(current)
        assert ours.wait_count == theirs.wait_count
        assert ours.stopping_reason.name == theirs.stopping_reason.name
        assert float(ours.best_score) == float(theirs.best_score)
    assert ours.state_dict().keys() == theirs.state_dict().keys()


def _es_trainer(**overrides):
    trainer = FakeTrainer(Path("."), **overrides)
    trainer.strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision or all is False)
    return trainer


def test_early_stopping_checks_where_lightning_does():
    es = rcb.EarlyStopping("m", patience=1)
    trainer = _es_trainer(callback_metrics={"m": torch.tensor(1.0)})
    es.setup(trainer, None, "fit")
    assert es._check_on_train_epoch_end is True
    es.on_validation_end(trainer, None)  # not the place: nothing happens
    assert es.best_score.isinf()
    es.on_train_epoch_end(trainer, None)
    assert float(es.best_score) == 1.0
    for skip in ({"sanity_checking": True}, {"state": SimpleNamespace(fn="validate")}, {"fast_dev_run": 1}):
        es.on_train_epoch_end(_es_trainer(callback_metrics={"m": torch.tensor(0.1)}, **skip), None)
        assert float(es.best_score) == 1.0, skip

    late = rcb.EarlyStopping("m", patience=1)
    late.setup(_es_trainer(val_check_interval=0.5), None, "fit")
    assert late._check_on_train_epoch_end is False


def test_early_stopping_stops_via_reduce_boolean_decision():
    es = rcb.EarlyStopping("m", patience=1)
    calls = []

    def reduce(decision, all=True):
        calls.append((decision, all))
        return True  # another rank wants to stop

    trainer = FakeTrainer(Path("."), callback_metrics={"m": torch.tensor(1.0)}, current_epoch=4)
    trainer.strategy = SimpleNamespace(reduce_boolean_decision=reduce)
    es.setup(trainer, None, "fit")
    es.on_train_epoch_end(trainer, None)
    assert calls == [(False, False)]
    assert trainer.should_stop and es.stopped_epoch == 4


def test_early_stopping_missing_metric():
    trainer = _es_trainer(callback_metrics={"other": torch.tensor(1.0)})
    with pytest.raises(RuntimeError, match="not available"):
        rcb.EarlyStopping("m")._run_early_stopping_check(trainer)
    rcb.EarlyStopping("m", strict=False)._run_early_stopping_check(trainer)  # quietly skipped
    assert not trainer.should_stop


def test_early_stopping_state_round_trip():
    es = rcb.EarlyStopping("m", patience=1)
    for v in (2.0, 3.0):
        es._evaluate_stopping_criteria(torch.tensor(v))
    other = rcb.EarlyStopping("m", patience=5)
    other.load_state_dict(es.state_dict())
    assert (other.wait_count, other.patience, float(other.best_score), other.stopping_reason) == (
        1,
        1,
        2.0,
        EarlyStoppingReason.PATIENCE_EXHAUSTED,
    )
    # A Lightning checkpoint's state loads too (the enum is stored as its value).
    theirs = lcb.EarlyStopping("m")
    theirs._evaluate_stopping_criteria(torch.tensor(float("nan")))
    other.load_state_dict(theirs.state_dict())
    assert other.stopping_reason is EarlyStoppingReason.NON_FINITE_METRIC


# ----------------------------------------------------------------------------------------------------------
# Other callbacks
# ----------------------------------------------------------------------------------------------------------
def _optimizers_and_configs():
    p = [torch.nn.Parameter(torch.zeros(1)) for _ in range(6)]
    sgd1 = torch.optim.SGD([p[0]], lr=0.1, momentum=0.9)
    sgd2 = torch.optim.SGD([{"params": [p[1]]}, {"params": [p[2]], "lr": 0.5}], lr=0.2)
    adam = torch.optim.Adam([{"params": [p[3]], "name": "enc"}, {"params": [p[4]], "name": "dec"}], lr=1e-3)
    named = torch.optim.SGD([{"params": [p[5]], "name": "head"}], lr=0.3)
    sched = torch.optim.lr_scheduler.StepLR(sgd1, step_size=1)
    named_sched = torch.optim.lr_scheduler.StepLR(adam, step_size=1)
    configs = [
        SimpleNamespace(scheduler=sched, interval="step", frequency=1, name=None),
        SimpleNamespace(scheduler=named_sched, interval="epoch", frequency=1, name="my-adam"),
    ]
    return [sgd1, sgd2, adam, named], configs


def test_lr_monitor_names_match_lightning():
    optimizers, configs = _optimizers_and_configs()
    trainer = SimpleNamespace(loggers=[object()], optimizers=optimizers, lr_scheduler_configs=configs)
    ours, theirs = rcb.LearningRateMonitor(log_momentum=True), lcb.LearningRateMonitor(log_momentum=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.on_train_start(trainer)
        theirs.on_train_start(trainer)
    assert list(ours.lrs) == list(theirs.lrs)
    assert list(ours.lrs) == [
        "lr-SGD",
        "my-adam/enc",
        "my-adam/dec",
        "lr-SGD-1/pg1",
        "lr-SGD-1/pg2",
        "lr-SGD-2/head",
    ]
    assert list(ours.last_momentum_values) == list(theirs.last_momentum_values)


def test_lr_monitor_logs_by_interval():
    optimizers, configs = _optimizers_and_configs()
    logged = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((dict(metrics), step)))
    trainer = SimpleNamespace(
        loggers=[logger],
        optimizers=optimizers,
        lr_scheduler_configs=configs,
        callback_metrics={},
        lightning_module=None,
        log_every_n_steps=1,
        should_stop=False,
        _logger_step=7,
    )
    monitor = rcb.LearningRateMonitor(log_weight_decay=True)
    monitor.on_train_start(trainer)
    monitor.on_train_batch_start(trainer, None, None, 0)
    step_keys = set(logged[0][0])
    assert logged[0][1] == 7 and "lr-SGD" in step_keys and "my-adam/enc" not in step_keys  # epoch-interval
    assert "lr-SGD-1/pg2" in step_keys and logged[0][0]["lr-SGD-1/pg2"] == 0.5  # no scheduler: every time
    assert "lr-SGD-weight_decay" in step_keys
    monitor.on_train_epoch_start(trainer)
    assert "my-adam/enc" in logged[1][0] and "lr-SGD" not in logged[1][0]
    assert float(trainer.callback_metrics["my-adam/dec"]) == pytest.approx(1e-3)
    trainer.log_every_n_steps = 50
    monitor.on_train_batch_start(trainer, None, None, 0)
    assert len(logged) == 2  # not a logging step
    with pytest.raises(Exception, match="no logger"):
        rcb.LearningRateMonitor().on_train_start(SimpleNamespace(loggers=[]))


def test_timer():
    assert rcb.Timer("01:02:03:04")._duration == timedelta(days=1, hours=2, minutes=3, seconds=4).total_seconds()
    assert rcb.Timer({"minutes": 2})._duration == 120
    for bad in ({"duration": "1:2"}, {"interval": "batch"}):
        with pytest.raises(Exception) as theirs:
            lcb.Timer(**bad)
        with pytest.raises(Exception) as ours:
            rcb.Timer(**bad)
        assert type(ours.value).__name__ == type(theirs.value).__name__
    timer = rcb.Timer(duration=timedelta(seconds=0))
    trainer = _es_trainer()
    trainer.strategy.broadcast = lambda obj, src=0: obj
    timer.on_train_start(trainer, None)
    timer.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.should_stop
    assert timer.time_elapsed("train") >= 0 and timer.time_remaining() <= 0 and timer.start_time("validate") is None
    state = timer.state_dict()
    assert set(state["time_elapsed"]) == set(lcb.Timer().state_dict()["time_elapsed"])
    resumed = rcb.Timer(duration="00:00:00:10")
    resumed.load_state_dict({"time_elapsed": {"train": 4.0}})
    assert resumed.time_elapsed() == 4.0 and resumed.time_remaining() == 6.0


def test_gradient_accumulation_scheduler_matches_lightning():
    ours = rcb.GradientAccumulationScheduler({2: 4, 5: 2})
    theirs = lcb.GradientAccumulationScheduler({2: 4, 5: 2})
    assert [ours.get_accumulate_grad_batches(e) for e in range(8)] == [
        theirs.get_accumulate_grad_batches(e) for e in range(8)
    ]
    trainer = SimpleNamespace(current_epoch=3, accumulate_grad_batches=1)
    ours.on_train_epoch_start(trainer)
    assert trainer.accumulate_grad_batches == 4

    import raylit

    class Plain(raylit.LightningModule):
        pass

    class CustomStep(raylit.LightningModule):
        def optimizer_step(self, *args, **kwargs):
            pass

    fresh = SimpleNamespace(accumulate_grad_batches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours.on_train_start(fresh, Plain())
    with pytest.warns(UserWarning, match="overriding"):
        ours.on_train_start(fresh, CustomStep())
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        ours.on_train_start(SimpleNamespace(accumulate_grad_batches=2), Plain())
    for bad in ({}, {-1: 2}, {0: 0}):
        with pytest.raises(Exception) as t_err:
            lcb.GradientAccumulationScheduler(dict(bad))
        with pytest.raises(Exception) as o_err:
            rcb.GradientAccumulationScheduler(dict(bad))
        assert type(o_err.value).__name__ == type(t_err.value).__name__


def test_lambda_callback():
    calls = []
    cb = rcb.LambdaCallback(on_train_epoch_end=lambda trainer, pl_module: calls.append(trainer), setup=print)
    cb.on_train_epoch_end("t", "m")
    cb.on_fit_start("t", "m")  # untouched hooks stay no-ops
    assert calls == ["t"] and cb.setup is print


def test_human_readable_count_matches_lightning():
    from pytorch_lightning.utilities.model_summary.model_summary import get_human_readable_count as theirs

    for n in (0, 1, 12, 123, 999, 1000, 1234, 99_999, 100_000, 2e6, 3e9, 4e14, 5e15, 987_654_321):
        assert get_human_readable_count(n) == theirs(n), n


def _summary_model(pl):
    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(32, 2)
            self.seq = torch.nn.Sequential(torch.nn.Linear(32, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
            self.seq[1].eval()
            self.frozen = torch.nn.Linear(3, 3).requires_grad_(False)

        def forward(self, x):
            return self.layer(x) + self.seq(x)

    return Net()


@pytest.mark.parametrize("depth", [1, 2, -1])
@pytest.mark.parametrize("with_example", [False, True])
def test_model_summary_table_matches_lightning(depth, with_example):
    import pytorch_lightning as lpl
    from pytorch_lightning.utilities.model_summary import ModelSummary as LightningSummary

    model = _summary_model(lpl)
    if with_example:
        model.example_input_array = torch.randn(4, 32)
    assert format_summary_table(summarize(model, depth)) == str(LightningSummary(model, max_depth=depth))
    assert model.training and not model.seq[1].training  # modes restored after the example forward


def test_model_summary_callback_prints_on_rank_zero(caplog):
    import pytorch_lightning as lpl

    model = _summary_model(lpl)
    with caplog.at_level(logging.INFO, logger="raylit"):
        rcb.ModelSummary().on_fit_start(SimpleNamespace(is_global_zero=False), model)
        assert caplog.text == ""
        rcb.ModelSummary(max_depth=0).on_fit_start(SimpleNamespace(is_global_zero=True), model)
        assert caplog.text == ""
        rcb.ModelSummary().on_fit_start(SimpleNamespace(is_global_zero=True), model)
    assert "| Name   | Type       | Params | Mode  | FLOPs" in caplog.text and "376       Total params" in caplog.text


def test_rich_model_summary_renders(capsys):
    import pytorch_lightning as lpl

    rcb.RichModelSummary().on_fit_start(SimpleNamespace(is_global_zero=True), _summary_model(lpl))
    out = capsys.readouterr().out
    assert "Sequential" in out and "Total params" in out and "376" in out


def test_progress_bar_standard_metrics_match_lightning():
    from pytorch_lightning.callbacks.progress.progress_bar import get_standard_metrics as theirs

    def logger(version):
        return SimpleNamespace(version=version)

    for loggers in (
        [],
        [logger(3)],
        [logger("abcdefgh")],
        [logger(1), logger(1)],
        [logger(1), logger("x")],
        [logger("")],
    ):
        trainer = SimpleNamespace(loggers=loggers)
        assert get_standard_metrics(trainer) == theirs(trainer)


def test_progress_bar_get_metrics_and_rank():
    trainer = SimpleNamespace(
        loggers=[SimpleNamespace(version=2)], progress_bar_metrics={"loss": 0.5}, is_global_zero=False
    )
    bar = rcb.TQDMProgressBar()
    assert bar.get_metrics(trainer, None) == {"v_num": 2, "loss": 0.5}
    bar.setup(trainer, None, "fit")
    assert bar.is_disabled
    rich_bar = rcb.RichProgressBar()
    rich_bar.setup(trainer, None, "fit")
    assert rich_bar.is_disabled
    assert rcb.TQDMProgressBar(refresh_rate=0).is_disabled and rcb.RichProgressBar(refresh_rate=0).is_disabled


def test_prediction_writer_validates_interval():
    with pytest.raises(Exception, match="write_interval"):
        rcb.BasePredictionWriter("sometimes")
    assert rcb.BasePredictionWriter("batch_and_epoch").interval.on_batch


def test_on_exception_checkpoint(tmp_path):
    with pytest.raises(ValueError):
        rcb.OnExceptionCheckpoint(tmp_path, filename="")
    cb = rcb.OnExceptionCheckpoint(tmp_path)
    assert cb.ckpt_path == str(tmp_path / "on_exception.ckpt") and isinstance(cb, rcb.Checkpoint)
    trainer = FakeTrainer(tmp_path)
    cb.on_exception(trainer, None, RuntimeError())
    assert os.path.exists(cb.ckpt_path)
    cb.teardown(trainer, None, "fit")
    assert not os.path.exists(cb.ckpt_path)


def test_exports_match_lightning_names():
    ours = set(rcb.__all__)
    wanted = {
        "BasePredictionWriter", "Callback", "Checkpoint", "EarlyStopping", "GradientAccumulationScheduler",
        "LambdaCallback", "LearningRateMonitor", "ModelCheckpoint", "ModelSummary", "OnExceptionCheckpoint",
        "ProgressBar", "RichModelSummary", "RichProgressBar", "TQDMProgressBar", "Timer",
    }  # fmt: skip
    assert wanted <= ours and wanted <= set(lcb.__all__)


# ----------------------------------------------------------------------------------------------------------
# Progress bars driven through one fit's hooks, writing to a non-terminal (pytest's capture)
# ----------------------------------------------------------------------------------------------------------
class _BarTrainer(SimpleNamespace):
    """Counts reads of ``progress_bar_metrics``: reading it may force a device sync in a real Trainer."""

    reads = 0

    @property
    def progress_bar_metrics(self):
        type(self).reads += 1
        return {"loss": 0.25}


def _drive_bar(bar, batches: int) -> _BarTrainer:
    _BarTrainer.reads = 0
    trainer = _BarTrainer(
        is_global_zero=True, loggers=[SimpleNamespace(version=0)], state=SimpleNamespace(fn="fit"),
        sanity_checking=True, num_training_batches=batches, max_epochs=1, max_steps=-1, global_step=0,
        current_epoch=0, num_val_batches=[3], num_sanity_val_batches=[2], check_val_every_n_epoch=1,
    )  # fmt: skip
    bar.setup(trainer, None, "fit")
    bar.on_sanity_check_start(trainer, None)
    bar.on_validation_start(trainer, None)
    for i in range(2):
        bar.on_validation_batch_start(trainer, None, None, i)
        bar.on_validation_batch_end(trainer, None, None, None, i)
    bar.on_validation_epoch_end(trainer, None)
    bar.on_validation_end(trainer, None)
    bar.on_sanity_check_end(trainer, None)
    trainer.sanity_checking = False
    bar.on_train_start(trainer, None)
    bar.on_train_epoch_start(trainer, None)
    for i in range(batches):
        bar.on_train_batch_end(trainer, None, None, None, i)
    bar.on_validation_start(trainer, None)
    for i in range(3):
        bar.on_validation_batch_start(trainer, None, None, i)
        bar.on_validation_batch_end(trainer, None, None, None, i)
    bar.on_validation_epoch_end(trainer, None)
    bar.on_validation_end(trainer, None)
    bar.on_train_epoch_end(trainer, None)
    bar.on_train_end(trainer, None)
    bar.teardown(trainer, None, "fit")
    return trainer


@pytest.mark.parametrize("make_bar", [rcb.TQDMProgressBar, rcb.RichProgressBar], ids=["tqdm", "rich"])
def test_progress_bar_non_terminal_output_is_throttled(capsys, make_bar):
    start = time.monotonic()
    _drive_bar(make_bar(), batches=3000)
    elapsed = time.monotonic() - start
    out = capsys.readouterr().out
    assert "3000/3000" in out and "v_num" in out and "loss" in out
    # Metrics are read when a redraw is due, not per batch: at most about once a second (tqdm) or never
    # (rich draws nothing mid-run off a terminal), plus the epoch boundaries.
    assert _BarTrainer.reads <= 6 + 2 * elapsed, _BarTrainer.reads
    # A fixed number of redraws at phase boundaries, plus at most ~1/s: never one per batch (3000 here).
    assert out.count("\r") + out.count("\n") <= 40 + 2 * elapsed


def test_progress_bars_disabled_off_rank_zero(capsys):
    for make_bar in (rcb.TQDMProgressBar, rcb.RichProgressBar):
        bar = make_bar()
        trainer = SimpleNamespace(is_global_zero=False)
        bar.setup(trainer, None, "fit")
        assert bar.is_disabled
    assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------------------------------------
# Part 2: real fits. Each program runs unchanged under Lightning and raylit (``pl`` is the framework module)
# and returns what a user would look at; the two results must be equal.
# ----------------------------------------------------------------------------------------------------------
QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False}
SCRIPTED_LOSSES = [5.0, 3.0, 4.0, 2.0, 2.5, 2.6, 2.7, 2.8, 2.9, 3.0]


def _framework(name: str):
    import importlib

    pl = importlib.import_module(name)
    for noisy in ("pytorch_lightning", "lightning_fabric", "raylit"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return pl, importlib.import_module(f"{name}.callbacks"), importlib.import_module(f"{name}.loggers")


def _rows(n: int, seed: int) -> torch.utils.data.DataLoader:
    data = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
    return torch.utils.data.DataLoader(data, batch_size=2)


def _scripted_model(pl, losses=SCRIPTED_LOSSES, fail_at=None, gamma=1.0):
    """A linear model whose validation logs a scripted ``val_loss`` per epoch, so that both frameworks
    see the same monitored values whatever their numerics; 4 train and 2 val batches per epoch."""

    class Scripted(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            if fail_at == (self.current_epoch, batch_idx):
                raise RuntimeError("scripted failure")
            loss = self.layer(batch).pow(2).mean()
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", losses[min(self.current_epoch, len(losses) - 1)], prog_bar=True)

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return self.layer(batch)

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.5)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=gamma)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

        def train_dataloader(self):
            return _rows(8, 1)

        def val_dataloader(self):
            return _rows(4, 2)

        def predict_dataloader(self):
            return _rows(6, 3)

    return Scripted()


def _plain(value):
    """File names instead of paths, floats instead of tensors: comparable across runs and frameworks."""
    if isinstance(value, torch.Tensor):
        return float(value)
    if isinstance(value, str) and os.sep in value:
        return os.path.basename(value)
    return value


def _ckpt_summary(path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    callbacks = {}
    for key, state in ckpt.get("callbacks", {}).items():
        callbacks[key] = {k: _plain(v) for k, v in state.items() if k not in ("dirpath", "best_k_models")}
        if "best_k_models" in state:
            callbacks[key]["best_k_models"] = {os.path.basename(k): float(v) for k, v in state["best_k_models"].items()}
    return {"epoch": ckpt["epoch"], "global_step": ckpt["global_step"], "callbacks": callbacks}


def _checkpoint_view(mc, dirpath: Path) -> dict:
    base = os.path.basename
    return {
        "files": {name: _ckpt_summary(dirpath / name) for name in sorted(os.listdir(dirpath))},
        "best_model_path": base(mc.best_model_path),
        "best_model_score": None if mc.best_model_score is None else float(mc.best_model_score),
        "best_k_models": {base(k): float(v) for k, v in mc.best_k_models.items()},
        "kth_best_model_path": base(mc.kth_best_model_path),
        "last_model_path": base(mc.last_model_path),
    }


def _es_view(es) -> dict:
    return {
        "stopped_epoch": es.stopped_epoch,
        "wait_count": es.wait_count,
        "best_score": float(es.best_score),
        "reason": es.stopping_reason.name,
        "message": es.stopping_reason_message,
    }


def program_topk_early_stopping_resume(name: str, root: Path, resume_with: str | None = None) -> dict:
    """Top-2 + last + early stopping for 3 epochs; then a new Trainer (of ``resume_with``, default the same
    framework) resumes from last.ckpt and continues the bookkeeping (files replaced in the top 2 are deleted)
    until early stopping ends the run."""
    pl, cbs, _ = _framework(name)
    dirpath = root / "ckpts"

    def callbacks():
        mc = cbs.ModelCheckpoint(
            dirpath=dirpath,
            monitor="val_loss",
            save_top_k=2,
            save_last=True,
            filename="{epoch}-{val_loss:.2f}",
        )
        return mc, cbs.EarlyStopping("val_loss", patience=2)

    mc, es = callbacks()
    trainer = pl.Trainer(default_root_dir=root, max_epochs=3, callbacks=[mc, es], **QUIET)
    trainer.fit(_scripted_model(pl))
    first = {"mc": _checkpoint_view(mc, dirpath), "es": _es_view(es), "step": trainer.global_step}

    pl, cbs, _ = _framework(resume_with or name)
    mc, es = callbacks()
    trainer = pl.Trainer(default_root_dir=root, max_epochs=10, callbacks=[mc, es], **QUIET)
    trainer.fit(_scripted_model(pl), ckpt_path=str(dirpath / "last.ckpt"))
    second = {"mc": _checkpoint_view(mc, dirpath), "es": _es_view(es), "step": trainer.global_step}
    return {
        "first": first,
        "second": second,
        "epoch": trainer.current_epoch,
        "should_stop": trainer.should_stop,
    }


def program_default_dirpath_with_logger(name: str, root: Path) -> dict:
    """The default ModelCheckpoint under a CSVLogger: <root>/lightning_logs/version_0/checkpoints."""
    pl, _, loggers = _framework(name)
    trainer = pl.Trainer(
        default_root_dir=root, max_epochs=2, logger=loggers.CSVLogger(root), enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(_scripted_model(pl))
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.ckpt"))
    return {"files": files, "content": {f: _ckpt_summary(root / f) for f in files}}


def program_step_checkpoints(name: str, root: Path) -> dict:
    """every_n_train_steps with a metric that only validation logs: saves wait for validation."""
    pl, cbs, _ = _framework(name)
    mc = cbs.ModelCheckpoint(dirpath=root, monitor="val_loss", every_n_train_steps=3, save_top_k=-1, save_last=True)
    trainer = pl.Trainer(default_root_dir=root, max_epochs=3, callbacks=[mc], **QUIET)
    trainer.fit(_scripted_model(pl))
    return _checkpoint_view(mc, root)


def program_validation_twice_per_epoch(name: str, root: Path) -> dict:
    """val_check_interval=0.5: both callbacks act after each validation, and patience counts checks."""
    pl, cbs, _ = _framework(name)
    mc = cbs.ModelCheckpoint(dirpath=root / "c", monitor="val_loss", save_top_k=1)
    es = cbs.EarlyStopping("val_loss", patience=3)
    trainer = pl.Trainer(default_root_dir=root, max_epochs=10, val_check_interval=0.5, callbacks=[mc, es], **QUIET)
    trainer.fit(_scripted_model(pl))
    return {"mc": _checkpoint_view(mc, root / "c"), "es": _es_view(es), "step": trainer.global_step}


def program_exception_checkpoints(name: str, root: Path) -> dict:
    """A crash in epoch 1: OnExceptionCheckpoint and ModelCheckpoint(save_on_exception=True) both save."""
    pl, cbs, _ = _framework(name)
    mc = cbs.ModelCheckpoint(dirpath=root / "mc", save_on_exception=True, save_last=True)
    oe = cbs.OnExceptionCheckpoint(root / "oe")
    trainer = pl.Trainer(default_root_dir=root, max_epochs=3, callbacks=[mc, oe], **QUIET)
    with pytest.raises(RuntimeError, match="scripted failure"):
        trainer.fit(_scripted_model(pl, fail_at=(1, 2)))
    return {
        "mc": _checkpoint_view(mc, root / "mc"),
        "oe": {name: _ckpt_summary(root / "oe" / name) for name in sorted(os.listdir(root / "oe"))},
    }


def program_lr_monitor(name: str, root: Path) -> dict:
    """Learning rates (and momentum) logged per step for a step-interval scheduler."""
    pl, cbs, loggers = _framework(name)

    class Recorder(loggers.Logger):
        def __init__(self):
            super().__init__()
            self.calls = []

        name = property(lambda self: "rec")
        version = property(lambda self: 0)

        def log_metrics(self, metrics, step=None):
            lrs = {k: round(float(v), 8) for k, v in metrics.items() if k.startswith("lr-")}
            if lrs:
                self.calls.append((step, lrs))

        def log_hyperparams(self, *args, **kwargs):
            pass

    recorder = Recorder()
    monitor = cbs.LearningRateMonitor(log_momentum=True)
    trainer = pl.Trainer(
        default_root_dir=root, max_epochs=2, logger=recorder, log_every_n_steps=2, callbacks=[monitor],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(_scripted_model(pl, gamma=0.5))
    return {
        "calls": recorder.calls,
        "lrs": {k: [round(x, 8) for x in v] for k, v in monitor.lrs.items()},
        "callback_metric": round(float(trainer.callback_metrics["lr-SGD"]), 8),
    }


def program_schedulers_and_timer(name: str, root: Path) -> dict:
    """GradientAccumulationScheduler changes the steps per epoch; a zero Timer stops fit at once."""
    pl, cbs, _ = _framework(name)
    trainer = pl.Trainer(
        default_root_dir=root, max_epochs=3, enable_checkpointing=False, **QUIET,
        callbacks=[cbs.GradientAccumulationScheduler({1: 2, 2: 4})],
    )  # fmt: skip
    trainer.fit(_scripted_model(pl))
    timer = cbs.Timer(duration=timedelta(0))
    stopped = pl.Trainer(default_root_dir=root, max_epochs=3, enable_checkpointing=False, callbacks=[timer], **QUIET)
    stopped.fit(_scripted_model(pl))
    return {
        "accumulated_steps": trainer.global_step,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "timer_steps": stopped.global_step,
        "timer_epoch": stopped.current_epoch,
    }


def program_prediction_writer(name: str, root: Path) -> dict:
    pl, cbs, _ = _framework(name)
    seen = []

    class Writer(cbs.BasePredictionWriter):
        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
            seen.append(("batch", batch_idx, dataloader_idx, tuple(prediction.shape), list(batch_indices or [])))

        def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
            seen.append(("epoch", [tuple(p.shape) for p in predictions], batch_indices))

    trainer = pl.Trainer(
        default_root_dir=root, callbacks=[Writer("batch_and_epoch")], enable_checkpointing=False, **QUIET
    )
    returned = trainer.predict(_scripted_model(pl), return_predictions=False)
    return {"seen": seen, "returned": returned}


def program_fast_dev_run(name: str, root: Path) -> dict:
    pl, cbs, _ = _framework(name)
    mc = cbs.ModelCheckpoint(dirpath=root / "c", save_last=True, monitor="val_loss")
    es = cbs.EarlyStopping("val_loss", patience=0)
    trainer = pl.Trainer(default_root_dir=root, fast_dev_run=2, callbacks=[mc, es], **QUIET)
    trainer.fit(_scripted_model(pl))
    files = sorted(os.listdir(root / "c")) if (root / "c").exists() else []
    return {"files": files, "es": _es_view(es), "best": mc.best_model_path}


def program_link_and_sparse_validation(name: str, root: Path) -> dict:
    """save_last="link"; validation every 2nd epoch (saving moves to validation end); max mode with a
    stopping threshold; min_epochs holding off an early stop."""
    pl, cbs, _ = _framework(name)
    link = cbs.ModelCheckpoint(dirpath=root / "link", monitor="val_loss", save_top_k=1, save_last="link")
    sparse = cbs.ModelCheckpoint(dirpath=root / "sparse", filename="{epoch}", save_top_k=-1)
    es = cbs.EarlyStopping("val_loss", mode="max", stopping_threshold=3.9)
    trainer = pl.Trainer(
        default_root_dir=root, max_epochs=8, check_val_every_n_epoch=2, callbacks=[link, sparse, es], **QUIET
    )
    trainer.fit(_scripted_model(pl, losses=[1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]))
    patient = cbs.EarlyStopping("val_loss", patience=1)
    held = pl.Trainer(default_root_dir=root, max_epochs=8, min_epochs=4, callbacks=[patient], **QUIET)
    held.fit(_scripted_model(pl, losses=[3.0, 4.0]))
    return {
        "link": _checkpoint_view(link, root / "link"),
        "link_target": os.readlink(root / "link" / "last.ckpt"),
        "sparse": sorted(os.listdir(root / "sparse")),
        "es": _es_view(es),
        "epochs": trainer.current_epoch,
        "held": {"es": _es_view(patient), "epochs": held.current_epoch, "step": held.global_step},
    }


@pytest.mark.parametrize("first, then", [("raylit", "pytorch_lightning"), ("pytorch_lightning", "raylit")])
def test_resume_across_frameworks(first, then, tmp_path):
    """Callback state written by one library resumes in the other: the swap works both ways mid-project."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = program_topk_early_stopping_resume("pytorch_lightning", tmp_path / "reference")
        actual = program_topk_early_stopping_resume(first, tmp_path / "mixed", resume_with=then)
    assert actual == expected


PROGRAMS = {
    f.__name__.removeprefix("program_"): f
    for f in (
        program_topk_early_stopping_resume,
        program_default_dirpath_with_logger,
        program_step_checkpoints,
        program_validation_twice_per_epoch,
        program_exception_checkpoints,
        program_lr_monitor,
        program_schedulers_and_timer,
        program_prediction_writer,
        program_fast_dev_run,
        program_link_and_sparse_validation,
    )
}


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_same_as_lightning(program, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = PROGRAMS[program]("pytorch_lightning", tmp_path / "lightning")
        actual = PROGRAMS[program]("raylit", tmp_path / "raylit")
    assert actual == expected


@pytest.mark.parametrize("make_bar", [rcb.TQDMProgressBar, rcb.RichProgressBar], ids=["tqdm", "rich"])
def test_progress_bar_in_real_runs(make_bar, tmp_path, capsys):
    pl, _, loggers = _framework("raylit")
    bar = make_bar()
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=2, callbacks=[bar], logger=loggers.CSVLogger(tmp_path),
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    assert trainer.progress_bar_callback is bar
    model = _scripted_model(pl)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model)
        trainer.validate(model, verbose=False)
        trainer.predict(model)
    out = capsys.readouterr().out
    for text in ("Epoch 1", "4/4", "train_loss", "val_loss", "v_num", "Validation", "Predicting"):
        assert text in out, text
    assert bar.get_metrics(trainer, model)["v_num"] == 0


def test_default_trainer_uses_rich_callbacks(tmp_path, capsys):
    pl, cbs, _ = _framework("raylit")
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False)
    assert isinstance(trainer.progress_bar_callback, cbs.RichProgressBar)
    assert any(type(cb) is cbs.RichModelSummary for cb in trainer.callbacks)
    assert isinstance(trainer.checkpoint_callback, cbs.ModelCheckpoint)
    trainer.fit(_scripted_model(pl))
    out = capsys.readouterr().out
    assert "Linear" in out and "Total params" in out  # the summary table
    assert os.listdir(tmp_path / "checkpoints") == ["epoch=0-step=4.ckpt"]


def test_model_summary_logged_once_at_fit_start(tmp_path, caplog):
    pl, cbs, _ = _framework("raylit")
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=1, callbacks=[cbs.ModelSummary(max_depth=-1)], **QUIET)
    with caplog.at_level(logging.INFO, logger="raylit"):
        trainer.fit(_scripted_model(pl))
    assert caplog.text.count("Total params") == 1 and "| layer | Linear | 5      | train" in caplog.text


def test_callbacks_pickle_after_a_run(tmp_path):
    """Callbacks travel to Ray workers (and back) by pickle, also after they have been used."""
    import pickle

    pl, cbs, _ = _framework("raylit")
    callbacks = [
        cbs.ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_last=True),
        cbs.EarlyStopping("val_loss"),
        cbs.LearningRateMonitor(),
        cbs.Timer(duration="00:01:00:00"),
        cbs.RichProgressBar(),
        cbs.RichModelSummary(),
        cbs.GradientAccumulationScheduler({1: 2}),
        cbs.OnExceptionCheckpoint(tmp_path),
    ]
    for bar in (callbacks[4], cbs.TQDMProgressBar()):
        trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=2, callbacks=[*callbacks[:4], bar, *callbacks[5:]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(_scripted_model(pl))
        for cb in trainer.callbacks:
            clone = pickle.loads(pickle.dumps(cb))
            assert clone.state_dict().keys() == cb.state_dict().keys()
    assert pickle.loads(pickle.dumps(callbacks[0])).best_model_path == callbacks[0].best_model_path != ""


def test_lightning_import_paths_exist():
    """``from lightning.pytorch.callbacks.<module> import <Name>`` keeps working after the import swap."""
    import importlib

    for name in set(rcb.__all__) & set(lcb.__all__):
        lightning_module = getattr(lcb, name).__module__.removeprefix("pytorch_lightning.callbacks")
        ours = importlib.import_module("raylit.callbacks" + lightning_module)
        assert getattr(ours, name) is getattr(rcb, name), (name, lightning_module)
    from raylit.callbacks.early_stopping import EarlyStoppingReason  # noqa: F401
    from raylit.callbacks.progress.rich_progress import RichProgressBarTheme  # noqa: F401


def test_import_does_not_load_rich():
    """rich costs about 0.1 s to import; it loads when a rich bar or summary first draws."""
    import subprocess
    import sys

    code = "import raylit.callbacks, sys; assert 'rich' not in sys.modules, 'rich imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.ray
@pytest.mark.slow
def test_two_ray_workers_keep_the_same_books(ray_cluster, tmp_path):
    """Top-k + last + early stopping on two Ray workers (two nodes of the shared test cluster): the files on
    disk, the top-k bookkeeping and the stop match one Lightning process, and the driver's callback objects
    hold the workers' final state. Names avoid ``step``, which halves with two ranks."""
    from ray import cloudpickle

    def run(name: str, root: Path, **trainer_kwargs) -> dict:
        pl, cbs, _ = _framework(name)
        mc = cbs.ModelCheckpoint(
            dirpath=root, monitor="val_loss", save_top_k=2, save_last=True, filename="{epoch}-{val_loss:.2f}"
        )
        es = cbs.EarlyStopping("val_loss", patience=2)
        trainer = pl.Trainer(default_root_dir=root, max_epochs=10, callbacks=[mc, es], **QUIET, **trainer_kwargs)
        trainer.fit(_scripted_model(pl))
        view = _checkpoint_view(mc, root)
        for summary in view["files"].values():
            summary.pop("global_step")
        return {"mc": view, "es": _es_view(es), "epoch": trainer.current_epoch}

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = run("pytorch_lightning", tmp_path / "lightning")
            actual = run("raylit", tmp_path / "ray", accelerator="cpu", devices=1, num_nodes=2)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert actual == expected
    assert actual["es"]["reason"] == "PATIENCE_EXHAUSTED" and len(actual["mc"]["files"]) == 3
