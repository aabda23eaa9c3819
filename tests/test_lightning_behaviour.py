"""Lightning behaviours users rely on, checked under Lightning and raylit alike (issue 10's themes).

Each test runs the same program under ``pytorch_lightning`` and ``raylit`` and asserts the same outcome for
both: when Lightning changes, the reference half fails first and says so.
"""

from __future__ import annotations

import logging
import warnings

import _parity_helpers as H
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

QUIET = dict(H.QUIET)


def _model_cls(pl):
    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(32, 2)
            self.calls: list = []

        def training_step(self, batch, batch_idx):
            return self.layer(batch).sum()

        def validation_step(self, batch, batch_idx):
            self.calls.append("validation_step")
            self.log("val_loss", self.layer(batch).sum())

        def test_step(self, batch, batch_idx):
            self.log("test_loss", self.layer(batch).sum())

        def predict_step(self, batch, batch_idx):
            return self.layer(batch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return H.loader(4)

        def val_dataloader(self):
            self.calls.append("val_dataloader")
            return H.loader(4)

        def test_dataloader(self):
            self.calls.append("test_dataloader")
            return H.loader(4)

        def predict_dataloader(self):
            return H.loader(4)

    return Model


_fit = H.fit_quietly


# --- switching things off the Lightning way -----------------------------------------------------------------
def test_hooks_set_to_none_are_switched_off(pl, tmp_path):
    """``model.val_dataloader = None`` / ``model.validation_step = None`` disable validation and
    ``model.on_validation_model_train = None`` skips that hook, instead of crashing."""
    model = _model_cls(pl)()
    model.val_dataloader = None
    model.validation_step = None
    trainer = _fit(pl, model, tmp_path)
    assert trainer.state.finished and trainer.global_step == 2 and model.calls == []
    assert trainer.enable_validation is False

    model = _model_cls(pl)()
    model.on_validation_model_train = None
    trainer = _fit(pl, model, tmp_path, num_sanity_val_steps=0)
    assert model.calls.count("validation_step") == 2 and trainer.enable_validation is True


def test_a_stage_limited_to_zero_batches_never_asks_for_its_dataloader(pl, tmp_path):
    model = _model_cls(pl)()
    trainer = _fit(pl, model, tmp_path, limit_val_batches=0, limit_test_batches=0)
    assert "val_dataloader" not in model.calls
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert trainer.test(model, verbose=False) == []
    assert "test_dataloader" not in model.calls


# --- modes and hook arguments -------------------------------------------------------------------------------
def test_a_frozen_submodule_stays_in_eval_mode(pl, tmp_path):
    """A submodule the user put in eval mode keeps it through training, validation, test and predict (a frozen
    BatchNorm must not start tracking statistics after the first validation)."""
    seen = []

    class Frozen(_model_cls(pl)):
        def __init__(self):
            super().__init__()
            self.frozen = nn.BatchNorm1d(32).eval()

        def training_step(self, batch, batch_idx):
            seen.append(("train", self.layer.training, self.frozen.training))
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            seen.append(("val", self.layer.training, self.frozen.training))
            return super().validation_step(batch, batch_idx)

    model = Frozen()
    trainer = _fit(pl, model, tmp_path, max_epochs=2, num_sanity_val_steps=1)
    assert {s for s in seen if s[0] == "train"} == {("train", True, False)}
    assert {s for s in seen if s[0] == "val"} == {("val", False, False)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.predict(model)
    assert model.layer.training and not model.frozen.training


def test_setup_and_teardown_get_the_stage_by_keyword(pl, tmp_path):
    got = []

    class Recorder(pl.Callback):
        def setup(self, trainer, pl_module, **kwargs):
            got.append(("callback.setup", kwargs))

        def teardown(self, trainer, pl_module, **kwargs):
            got.append(("callback.teardown", kwargs))

    class Model(_model_cls(pl)):
        def setup(self, **kwargs):
            got.append(("module.setup", kwargs))

        def teardown(self, **kwargs):
            got.append(("module.teardown", kwargs))

    _fit(pl, Model(), tmp_path, callbacks=[Recorder()], limit_val_batches=0)
    assert got == [("callback.setup", {"stage": "fit"}), ("module.setup", {"stage": "fit"}),
                   ("callback.teardown", {"stage": "fit"}), ("module.teardown", {"stage": "fit"})]


# --- state and stage objects ----------------------------------------------------------------------------------
def test_trainer_state_and_stage_properties(pl, tmp_path):
    states = pl.trainer.states if hasattr(pl, "trainer") and hasattr(pl.trainer, "states") else None
    stage_cls = states.RunningStage if states is not None else H.submodule(pl, "state").RunningStage
    assert [s.dataloader_prefix for s in stage_cls] == ["train", "val", "val", "test", "predict"]
    trainer = _fit(pl, _model_cls(pl)(), tmp_path, limit_val_batches=1)
    assert trainer.state.finished and trainer.state.stopped  # stopped: finished or interrupted


# --- what Lightning says about a configuration ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["limit_train_batches", "limit_val_batches", "val_check_interval"])
@pytest.mark.parametrize("value", [1, 1.0])
def test_one_and_one_point_zero_are_explained(pl, name, value, caplog):
    logger_name = "raylit" if pl.__name__ == "raylit" else "pytorch_lightning"
    logging.getLogger(logger_name).propagate = True
    with caplog.at_level(logging.INFO, logger=logger_name):
        pl.Trainer(**QUIET, **{name: value})
    assert f"`Trainer({name}={value})` was configured so" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=logger_name):
        pl.Trainer(**QUIET)
    assert "was configured so" not in caplog.text


def test_max_epochs_not_set_warns_at_fit(pl, tmp_path):
    class StopAtOnce(_model_cls(pl)):
        def training_step(self, batch, batch_idx):
            self.trainer.should_stop = True
            return super().training_step(batch, batch_idx)

    category = H.submodule(pl, "utilities.warnings").PossibleUserWarning
    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, limit_train_batches=1, limit_val_batches=0)
    with pytest.warns(category, match="`max_epochs` was not set. Setting it to 1000 epochs."):
        trainer.fit(StopAtOnce())
    assert trainer.max_epochs == 1000 and trainer.current_epoch == 1


def test_a_fraction_of_an_epoch_needs_epochs(pl):
    exc = H.submodule(pl, "utilities.exceptions").MisconfigurationException
    with pytest.raises(exc, match="should be an integer or a time-based duration"):
        pl.Trainer(**QUIET, val_check_interval=0.5, check_val_every_n_epoch=None)
    pl.Trainer(**QUIET, check_val_every_n_epoch=None)  # the default interval is fine


def test_num_training_batches_survive_a_later_test(pl, tmp_path):
    model = _model_cls(pl)()
    trainer = _fit(pl, model, tmp_path, limit_val_batches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.test(model, dataloaders=DataLoader(torch.randn(4, 32), batch_size=2), verbose=False)
    assert trainer.num_training_batches == 2  # 4 rows, batches of 2


# --- hyperparameters ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["namespace", "dict"])
def test_one_hparams_object_round_trips_through_a_checkpoint(pl, tmp_path, style):
    """The classic ``__init__(self, hparams)`` + ``save_hyperparameters(hparams)``: ``load_from_checkpoint``
    passes the object back under its argument name, for modules and datamodules."""
    from argparse import Namespace

    class Model(_model_cls(pl)):
        def __init__(self, hparams):
            super().__init__()
            self.save_hyperparameters(hparams)

    class Data(pl.LightningDataModule):
        def __init__(self, hparams):
            super().__init__()
            self.save_hyperparameters(hparams)

        def train_dataloader(self):
            return H.loader(4)

    hparams = Namespace(test_arg=14) if style == "namespace" else {"test_arg": 14}
    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, max_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Model(hparams), datamodule=Data(hparams))
    path = tmp_path / "hp.ckpt"
    trainer.save_checkpoint(path)
    assert Model.load_from_checkpoint(path).hparams.test_arg == 14
    assert Data.load_from_checkpoint(path).hparams.test_arg == 14


def test_hparams_of_pre_1_0_checkpoints_load(pl, tmp_path):
    """Checkpoints written before Lightning 1.0 kept the hyperparameters under ``module_arguments``."""

    class Model(_model_cls(pl)):
        def __init__(self, width=32):
            super().__init__()
            self.save_hyperparameters()

    model = Model()
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": model.state_dict(), "module_arguments": {"width": -17},
                "pytorch-lightning_version": "0.9.0", "epoch": 0, "global_step": 0}, path)
    assert Model.load_from_checkpoint(path, strict=False, weights_only=False).hparams.width == -17


# --- logging from callbacks and from on_train_start -----------------------------------------------------------
def test_callbacks_log_with_self_log_and_on_train_start_logs_into_the_first_epoch(pl, tmp_path):
    rows = []

    class Rows(H.submodule(pl, "loggers").CSVLogger):
        def log_metrics(self, metrics, step=None):
            rows.append((dict(metrics), step))

    class LoggingCallback(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.log("cb_train_start", 1.0)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.log("cb_batch_end", 3.0)

        def on_train_epoch_end(self, trainer, pl_module):
            self.log_dict({"cb_epoch_end": 5.0})

    class Model(_model_cls(pl)):
        def on_train_start(self):
            self.log("module_train_start", 123.0)

    trainer = pl.Trainer(default_root_dir=tmp_path, **{**QUIET, "logger": Rows(tmp_path)}, max_epochs=2,
                         limit_train_batches=1, limit_val_batches=0, log_every_n_steps=1,
                         callbacks=[LoggingCallback()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Model())
    epoch_rows = [(m, s) for m, s in rows if "cb_epoch_end" in m]
    assert epoch_rows[0] == ({"cb_train_start": 1.0, "module_train_start": 123.0, "cb_epoch_end": 5.0,
                              "epoch": 0}, 0)
    assert "module_train_start" not in epoch_rows[1][0]  # on_train_start's values belong to the first epoch
    assert {"cb_batch_end"} <= set(trainer.callback_metrics)


def test_max_time_beside_a_users_timer_keeps_the_users(pl):
    timer = H.submodule(pl, "callbacks").Timer(duration="00:00:10:00")
    trainer = pl.Trainer(**QUIET, max_time="00:00:01:00", callbacks=[timer])
    timers = [cb for cb in trainer.callbacks if isinstance(cb, H.submodule(pl, "callbacks").Timer)]
    assert timers == [timer]


def test_is_overridden_has_lightnings_signature(pl):
    import functools

    is_overridden = H.submodule(pl, "utilities.model_helpers").is_overridden
    model = _model_cls(pl)()
    assert is_overridden("training_step", model) and is_overridden("val_dataloader", model)
    assert not is_overridden("on_fit_start", model)
    model.val_dataloader = None
    assert not is_overridden("val_dataloader", model)
    dm = pl.LightningDataModule()
    base = pl.LightningDataModule.transfer_batch_to_device
    dm.transfer_batch_to_device = functools.update_wrapper(functools.partial(base, dm), base)
    assert not is_overridden("transfer_batch_to_device", dm)  # the default, only wrapped


@pytest.mark.parametrize("case", ["reduce_fx", "not_useful", "none_value"])
def test_self_log_rules(pl, tmp_path, case):
    """``reduce_fx`` is case-insensitive; ``on_step=False, on_epoch=False`` and unloggable values are refused with
    Lightning's messages."""
    exc = H.submodule(pl, "utilities.exceptions").MisconfigurationException

    class Model(_model_cls(pl)):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            if case == "reduce_fx":
                self.log("total", 2.0, on_step=False, on_epoch=True, reduce_fx="SUM")
            elif case == "not_useful":
                self.log("nothing", 1.0, on_step=False, on_epoch=False)
            else:
                self.log("foo", None)
            return loss

    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, max_epochs=1, limit_val_batches=0)
    if case == "reduce_fx":
        trainer = _fit(pl, Model(), tmp_path, limit_val_batches=0)
        assert float(trainer.callback_metrics["total"]) == 4.0  # 2 batches x 2.0, summed
        return
    expected = (exc, "`self.log(on_step=False, on_epoch=False)` is not useful") if case == "not_useful" else \
        (ValueError, r"`self.log\(foo, None\)` was called, but `NoneType` values cannot be logged")
    with pytest.raises(expected[0], match=expected[1] if case == "none_value" else expected[1].replace("(", r"\(")
                       .replace(")", r"\)")):
        trainer.fit(Model())


@pytest.mark.parametrize("option", [{"limit_train_batches": -0.1}, {"limit_val_batches": 1.2},
                                    {"val_check_interval": 1.2}, {"overfit_batches": -0.1}])
def test_invalid_batch_limits_name_the_value(pl, option):
    exc = H.submodule(pl, "utilities.exceptions").MisconfigurationException
    (name, value), = option.items()
    with pytest.raises(exc, match=rf"passed invalid value {value} for {name}"):
        pl.Trainer(**QUIET, **option)


def test_datamodule_from_datasets_and_str(pl):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(torch.randn(6, 32))

    class Data(pl.LightningDataModule):
        def __init__(self, batch_size=1, num_workers=0):
            super().__init__()
            self.batch_size, self.num_workers = batch_size, num_workers

    dm = Data.from_datasets(H.TensorRows(8), val_dataset=[H.TensorRows(4), H.TensorRows(2)], test_dataset=Stream(),
                            batch_size=4, num_workers=0)
    assert dm.batch_size == 4
    train = dm.train_dataloader()
    assert train.batch_size == 4 and train.pin_memory
    assert len(list(dm.test_dataloader())) == 2  # an iterable dataset: no shuffle, no error
    assert str(dm).splitlines() == ["{Train dataloader: size=8}", "{Validation dataloader: 1. size=4 ; 2. size=2}",
                                    "{Test dataloader: size=NA}", "{Predict dataloader: None}"]


def test_save_hyperparameters_through_subclasses_dataclasses_and_composition(pl):
    import dataclasses

    class Base(pl.LightningModule):
        def __init__(self, batch_size=64):
            super().__init__()
            self.save_hyperparameters()

    class Sub(Base):
        def __init__(self, *args, subclass_arg=1200, **kwargs):
            super().__init__(*args, **kwargs)
            self.save_hyperparameters()

    assert dict(Sub(batch_size=32).hparams) == {"batch_size": 32, "subclass_arg": 1200}

    @dataclasses.dataclass(eq=False)
    class DataclassModel(pl.LightningModule):
        mandatory: int
        optional: str = "cocofruit"
        ignore_me: bool = False

        def __post_init__(self):
            super().__init__()
            self.save_hyperparameters(ignore=("ignore_me",))

    assert dict(DataclassModel(33).hparams) == {"mandatory": 33, "optional": "cocofruit"}

    class Child(pl.LightningModule):
        def __init__(self, init_method="xavier"):
            super().__init__()
            self.save_hyperparameters()

    class Parent(pl.LightningModule):
        def __init__(self, batch_size=64, optimizer="adam"):
            super().__init__()
            self.child = Child()

    # Lightning collects the enclosing module's __init__ arguments too when a module is built inside another
    assert dict(Parent().child.hparams) == {"init_method": "xavier", "batch_size": 64, "optimizer": "adam"}
    with pytest.raises(ValueError, match="Primitives"):
        Base().save_hyperparameters(True)


@pytest.mark.parametrize(("mode", "expected"), [("min_size", 2), ("max_size_cycle", 4), ("max_size", 4),
                                                ("sequential", None)])
def test_combined_loader_modes_in_fit(pl, tmp_path, mode, expected):
    """A CombinedLoader over a dict of lists of loaders: each training batch has the collection's structure;
    the mode decides the epoch's length; sequential mode is refused for training."""
    seen = []
    combined_loader_cls = H.submodule(pl, "utilities").CombinedLoader

    class Model(_model_cls(pl)):
        def train_dataloader(self):
            return combined_loader_cls({"a_b": [H.loader(8), H.loader(4)], "c": [H.loader(4)]}, mode)

        def training_step(self, batch, batch_idx):
            seen.append(tuple(len(batch[k]) for k in ("a_b", "c")) + (batch["a_b"][1] is None,))
            return super().training_step(batch["a_b"][0], batch_idx)

    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, max_epochs=1, limit_val_batches=0)
    if expected is None:
        with pytest.raises(ValueError, match="FitLoop` does not support"):
            trainer.fit(Model())
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Model())
    assert trainer.num_training_batches == expected and len(seen) == expected
    assert seen[0] == (2, 1, False)
    assert seen[-1][2] == (mode == "max_size")  # max_size: the exhausted loader gives None
    assert isinstance(trainer.train_dataloader, dict)  # the user's collection, as in Lightning


def test_combined_loader_iterates_like_lightnings(pl):
    combined = H.submodule(pl, "utilities").CombinedLoader([H.loader(4), H.loader(6)], "sequential")
    assert [(i, d) for _, i, d in combined] == [(0, 0), (1, 0), (0, 1), (1, 1), (2, 1)]
    assert len(combined) == 5  # (Lightning knows the length once iterated)


def test_few_batches_for_the_logging_interval_and_few_loader_workers_are_hinted(pl, tmp_path, monkeypatch):
    """Lightning's two data hints (PossibleUserWarning): fewer training batches than ``log_every_n_steps``, and a
    DataLoader without worker processes on a machine with cores to spare (here: pretend 8 cores)."""
    if pl.__name__ == "raylit":
        import os

        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    else:
        import lightning_fabric.utilities.data as fabric_data

        monkeypatch.setattr(fabric_data, "_num_cpus_available", lambda: 8)
    category = H.submodule(pl, "utilities.warnings").PossibleUserWarning
    trainer = pl.Trainer(default_root_dir=tmp_path, **{**QUIET, "logger": True}, max_epochs=1,
                         log_every_n_steps=50, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_model_cls(pl)())
    texts = [str(w.message) for w in caught if issubclass(w.category, category)]
    assert any("The number of training batches (2) is smaller than the logging interval" in t for t in texts)
    assert any("The 'train_dataloader' does not have many workers" in t and "num_workers=7" in t for t in texts)


def _reload_calls(pl, tmp_path, sanity, every, reload):
    calls = {"train": [], "val": [], "sanity": [], "step": []}

    class Model(_model_cls(pl)):
        def train_dataloader(self):
            calls["train"].append(self.current_epoch)
            return super().train_dataloader()

        def val_dataloader(self):
            calls["sanity" if self.trainer.sanity_checking else "val"].append(self.current_epoch)
            return H.loader(4)

        def validation_step(self, batch, batch_idx):
            if not self.trainer.sanity_checking:
                calls["step"].append(self.current_epoch)

    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, limit_train_batches=1, limit_val_batches=1,
                         check_val_every_n_epoch=every, reload_dataloaders_every_n_epochs=reload, max_epochs=10,
                         num_sanity_val_steps=sanity)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Model())
    return calls


@pytest.mark.parametrize(("sanity", "every", "reload"), [(0, 1, 1), (1, 1, 1), (1, 3, 4), (0, 2, 1), (1, 5, 2)])
def test_validation_loader_reloads_match_lightning(tmp_path, sanity, every, reload):
    """``reload_dataloaders_every_n_epochs`` with infrequent validation: the epochs in which train_dataloader and
    val_dataloader are called (in the sanity check and after) and validation runs are Lightning's."""
    results = {}
    for name in H.FRAMEWORKS:
        pl = H.import_framework(name)
        H.quiet_logging()
        results[name] = _reload_calls(pl, tmp_path / name, sanity, every, reload)
    reference, ours = (results[name] for name in H.FRAMEWORKS)
    assert ours == reference


@pytest.mark.parametrize("case", ["optimizer_idx", "custom_scheduler_automatic", "custom_scheduler_manual",
                                  "plateau_monitor_manual"])
def test_optimizer_configuration_checks(pl, tmp_path, case):
    """Lightning's checks of what configure_optimizers returns: ``optimizer_idx`` in ``training_step`` is refused;
    a scheduler that is not a torch LRScheduler needs ``lr_scheduler_step`` in automatic optimization but is
    fine in manual optimization; a ``monitor`` key is ignored, with a warning, in manual optimization."""
    exc = H.submodule(pl, "utilities.exceptions").MisconfigurationException

    class Custom:  # a scheduler that is not a torch LRScheduler
        def __init__(self, optimizer):
            self.optimizer = optimizer

        def state_dict(self):
            return {}

        def load_state_dict(self, _):
            pass

    class Model(_model_cls(pl)):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = case in ("optimizer_idx", "custom_scheduler_automatic")

        def training_step(self, batch, batch_idx):
            if self.automatic_optimization:
                return super().training_step(batch, batch_idx)
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(self.layer(batch).sum())
            opt.step()

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            if case == "plateau_monitor_manual":
                plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
                return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "loss"}}
            return [opt], [Custom(opt)]

    class WithOptimizerIdx(Model):
        def training_step(self, batch, batch_idx, optimizer_idx=0):
            return super().training_step(batch, batch_idx)

    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, max_epochs=1, limit_val_batches=0)
    if case == "optimizer_idx":
        with pytest.raises(RuntimeError, match="Remove the `optimizer_idx` argument from `training_step`"):
            trainer.fit(WithOptimizerIdx())
    elif case == "custom_scheduler_automatic":
        with pytest.raises(exc, match="doesn't follow PyTorch's LRScheduler API"):
            trainer.fit(Model())
    elif case == "custom_scheduler_manual":
        trainer.fit(Model())
        assert trainer.global_step == 2
    else:
        with pytest.warns(RuntimeWarning, match=r"contains the key\(s\) \['monitor'\], but the keys will be ignored"):
            trainer.fit(Model())


def test_results_of_several_test_loaders_keep_their_own_keys(pl, tmp_path):
    """Keys logged with ``add_dataloader_idx=False`` belong to the dataloader that logged them."""

    class Model(_model_cls(pl)):
        def test_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("common", 789.0)
            self.log(f"no_idx_{dataloader_idx}", 321.0 * (dataloader_idx + 1), add_dataloader_idx=False)

        def test_dataloader(self):
            return [H.loader(4), H.loader(4)]

    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, fast_dev_run=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = trainer.test(Model(), verbose=False)
    assert results == [{"common/dataloader_idx_0": 789.0, "no_idx_0": 321.0},
                       {"common/dataloader_idx_1": 789.0, "no_idx_1": 642.0}]


def test_prepare_data_per_node_false_prepares_once_in_all(tmp_path):
    """``prepare_data_per_node=False``: prepare_data runs on global rank 0 only (one download to shared
    storage); True: on every node's local rank 0. Checked on a two-node layout through the runtime's ranks."""
    import raylit
    from raylit.launch.spec import RunSpec
    from raylit.run import Run
    from raylit.runtime import Runtime

    class NodeRuntime(Runtime):
        def __init__(self, global_rank, local_rank):
            super().__init__("cpu")
            self.global_rank, self.local_rank = global_rank, local_rank
            self.node_rank = int(global_rank > 0)  # ranks 1 and 2 are on node 1

    prepared = []

    class Model(_model_cls(raylit)):
        def prepare_data(self):
            prepared.append(self.prepare_data_per_node)

    for per_node in (True, False):
        for global_rank, local_rank in ((0, 0), (1, 0), (1, 1)):  # rank 1 on node 1 is its node's local rank 0
            model = Model()
            model.prepare_data_per_node = per_node
            trainer = raylit.Trainer(default_root_dir=tmp_path, **QUIET, limit_train_batches=1, limit_val_batches=0,
                                     max_epochs=1)
            spec = RunSpec(config=trainer.config, fn="validate", module=model, callbacks=trainer.callbacks,
                           data={"validate": H.loader(2)})
            Run(spec, NodeRuntime(global_rank, local_rank), trainer).execute()
    assert prepared == [True, True, False]  # per node: ranks (0,0) and (1,0); once in all: rank 0 only


# --- save_hyperparameters through *args/**kwargs chains, mixins and metaclasses; checkpoints ---------------------
def _hparams_classes(pl):
    class Base(pl.LightningModule):
        def __init__(self, batch_size=64):
            super().__init__()
            self.layer = nn.Linear(32, 2)
            self.save_hyperparameters()

        def training_step(self, batch, batch_idx):
            return self.layer(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return H.loader(4)

    class Saving(Base):
        def __init__(self, *args, subclass_arg=1200, **kwargs):
            super().__init__(*args, **kwargs)
            self.save_hyperparameters()

    class NotSaving(Base):  # its argument is still collected by the base class's save_hyperparameters()
        def __init__(self, *args, subclass_arg=1200, **kwargs):
            super().__init__(*args, **kwargs)

    class Mixin:  # not a LightningModule: its __init__ counts because `self` is one
        def __init__(self, *args, mixin_arg=7, **kwargs):
            super().__init__(*args, **kwargs)
            self.save_hyperparameters()

    class WithMixin(Mixin, Base):
        pass

    class WithMixinAndInit(Mixin, Base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.save_hyperparameters()

    class Meta(type):
        def __call__(cls, *args, **kwargs):
            instance = super().__call__(*args, **kwargs)
            instance.built_by_meta = True
            return instance

    class WithMeta(Base, metaclass=Meta):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.save_hyperparameters()

    return {"Saving": (Saving, {"subclass_arg": 1200}), "NotSaving": (NotSaving, {"subclass_arg": 1200}),
            "WithMixin": (WithMixin, {"mixin_arg": 7}), "WithMixinAndInit": (WithMixinAndInit, {"mixin_arg": 7}),
            "WithMeta": (WithMeta, {})}


@pytest.mark.parametrize("name", ["Saving", "NotSaving", "WithMixin", "WithMixinAndInit", "WithMeta"])
def test_save_hyperparameters_through_args_kwargs_mixins_and_checkpoints(pl, tmp_path, name):
    """``*args``/``**kwargs`` themselves are never hyperparameters (the keywords they carry are), a mixin's
    ``__init__`` counts when ``self`` is a module, and ``load_from_checkpoint`` rebuilds such classes (the
    saved values win over defaults, keyword arguments over saved values)."""
    cls, extra = _hparams_classes(pl)[name]
    assert dict(cls().hparams) == {"batch_size": 64, **extra}
    model = cls(batch_size=179)
    assert dict(model.hparams) == {"batch_size": 179, **extra}
    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, max_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model)
    path = str(tmp_path / "m.ckpt")
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert dict(ckpt["hyper_parameters"]) == {"batch_size": 179, **extra}
    assert ckpt["hparams_name"] == "kwargs"
    assert dict(cls.load_from_checkpoint(path).hparams) == {"batch_size": 179, **extra}
    assert cls.load_from_checkpoint(path, batch_size=99).hparams.batch_size == 99


def test_unpicklable_hparams_are_dropped_with_a_warning(pl, tmp_path):
    class Model(_model_cls(pl)):
        def __init__(self, foo="bar", pickle_me=(lambda x: x + 1), ignore=False):
            super().__init__()
            self.save_hyperparameters(ignore=["pickle_me"] if ignore else None)

    match = "Attribute 'pickle_me' removed from hparams because it cannot be pickled"
    model = Model()
    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, max_steps=1, limit_val_batches=0)
    with pytest.warns(UserWarning, match=match):
        trainer.fit(model)
    assert dict(model.hparams) == {"foo": "bar", "ignore": False}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Model(ignore=True))
    assert not [w for w in caught if match in str(w.message)]
    assert H.submodule(pl, "utilities").is_picklable(1) and not H.submodule(pl, "utilities").is_picklable(lambda: 0)


# --- data: demo datamodules, lengths, limits ---------------------------------------------------------------
def _demos(pl):
    return H.submodule(pl, "demos.boring_classes" if pl.__name__ == "pytorch_lightning" else "testing")


@pytest.mark.parametrize("stage", ["fit", "validate", "test", "predict"])
def test_demo_datamodules_without_lengths(pl, stage):
    """BoringDataModuleNoLen / IterableBoringDataModule: what setup(stage) makes and how str() shows it."""
    demos = _demos(pl)
    no_len, iterable = demos.BoringDataModuleNoLen(), demos.IterableBoringDataModule()
    no_len.setup(stage)
    iterable.setup(stage)
    sizes = {"fit": ("train", "val"), "validate": ("val",)}.get(stage, (stage,))
    titles = {"train": "Train", "val": "Validation", "test": "Test", "predict": "Predict"}
    rows = {"train": 16, "val": 32, "test": 64, "predict": 128}
    assert str(no_len).splitlines() == [
        f"{{{t} dataloader: {'size=NA' if k in sizes else 'None'}}}" for k, t in titles.items()]
    assert str(iterable).splitlines() == [
        f"{{{t} dataloader: {f'1. size={rows[k]} ; 2. size=NA' if k in sizes else 'None'}}}"
        for k, t in titles.items()]
    counts = {"train": 512, "val": 128, "test": 256, "predict": 64}
    for part in sizes:
        assert sum(1 for _ in getattr(no_len, f"{part}_dataloader")()) == counts[part]
        first, second = getattr(iterable, f"{part}_dataloader")()
        assert len(first) == rows[part] and sum(1 for _ in second) == rows[part]
        assert next(iter(second)).shape == (1, 4)


class _IterableWithLen(H.IterableRows):
    def __len__(self):
        return len(self.rows)


def test_has_len_all_ranks_and_the_iterable_dataset_with_len_warning(pl, tmp_path):
    """``utilities.data.has_len_all_ranks(loader, trainer.strategy)``, and the warning every Trainer call gives
    when it loads a loader over an ``IterableDataset`` that defines ``__len__``; an empty loader is hinted."""
    has_len_all_ranks = H.submodule(pl, "utilities.data").has_len_all_ranks
    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, max_steps=3)
    match = "Your `IterableDataset` has `__len__` defined."
    with_len = DataLoader(_IterableWithLen(8), batch_size=2)
    with pytest.warns(UserWarning, match=match):
        assert has_len_all_ranks(with_len, trainer.strategy)
    assert not has_len_all_ranks(DataLoader(H.IterableRows(8), batch_size=2), trainer.strategy)
    with pytest.warns(UserWarning, match="Total length of `DataLoader` across ranks is zero"):
        assert has_len_all_ranks(H.loader(0), trainer.strategy)
    model = _model_cls(pl)()
    for call in (lambda: trainer.validate(model, dataloaders=[with_len], verbose=False),
                 lambda: trainer.fit(model, train_dataloaders=with_len, val_dataloaders=[with_len]),
                 lambda: trainer.test(model, dataloaders=[with_len], verbose=False),
                 lambda: trainer.predict(model, dataloaders=[with_len])):
        with pytest.warns(UserWarning, match=match):
            call()
    without_len = DataLoader(H.IterableRows(8), batch_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, max_steps=3)
        trainer.fit(model, train_dataloaders=without_len, val_dataloaders=without_len)
        trainer.test(model, dataloaders=without_len, verbose=False)
    assert not [w for w in caught if match in str(w.message)]
    assert trainer.num_training_batches == float("inf") and trainer.num_test_batches == [float("inf")]


@pytest.mark.parametrize("stage", ["train", "val", "test", "predict"])
def test_fractional_limit_of_a_loader_without_length_is_refused(pl, tmp_path, stage):
    exc = H.submodule(pl, "utilities.exceptions").MisconfigurationException

    class Model(_model_cls(pl)):
        pass

    setattr(Model, f"{stage}_dataloader", lambda self: DataLoader(H.IterableRows(8), batch_size=2))
    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, max_epochs=1, **{f"limit_{stage}_batches": 0.5})
    fn = {"train": "fit", "val": "validate"}.get(stage, stage)
    with pytest.raises(exc, match=rf"^When using an `IterableDataset`, `Trainer\(limit_{stage}_batches\)` must be "
                                  rf"`1.0` or an int. An int specifies `num_{stage}_batches` to use.$"):
        getattr(trainer, fn)(Model())


def test_sequential_training_data_is_sized_before_it_is_refused(pl, tmp_path):
    combined_loader_cls = H.submodule(pl, "utilities").CombinedLoader

    class Model(_model_cls(pl)):
        def train_dataloader(self):
            return combined_loader_cls({"a_b": [H.loader(8), H.loader(4)], "c": [H.loader(4)]}, "sequential")

    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, max_epochs=1, limit_val_batches=0)
    with pytest.raises(ValueError, match=r'^`_FitLoop` does not support the `CombinedLoader\(mode="sequential"\)` '
                                         r"mode. The available modes are: \['min_size', 'max_size_cycle', "
                                         r"'max_size'\]$"):
        trainer.fit(Model())
    assert trainer.num_training_batches == 8


@pytest.mark.parametrize("stage", ["train", "val", "test"])
def test_few_workers_hint_for_every_loader_of_nested_collections(pl, tmp_path, monkeypatch, stage):
    """The few-workers hint names the stage's hook, for each loader of a nested collection (here: pretend 4
    cores, as Lightning's own test does)."""
    if pl.__name__ == "raylit":
        import os

        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    else:
        import lightning_fabric.utilities.data as fabric_data

        monkeypatch.setattr(fabric_data, "_num_cpus_available", lambda: 4)

    class Model(_model_cls(pl)):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch["a_b"][0], batch_idx)

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            return super().validation_step(batch, batch_idx)

        def test_step(self, batch, batch_idx, dataloader_idx=0):
            return super().test_step(batch, batch_idx)

    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, max_epochs=1, limit_train_batches=2,
                         limit_val_batches=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if stage == "test":
            trainer.test(Model(), dataloaders=[H.loader(4), H.loader(4)], verbose=False)
        else:
            trainer.fit(Model(), train_dataloaders={"a_b": [H.loader(4), H.loader(4)], "c_d_e": [H.loader(4)] * 3},
                        val_dataloaders=[H.loader(4), H.loader(4)])
    category = H.submodule(pl, "utilities.warnings").PossibleUserWarning
    hints = [str(w.message) for w in caught if issubclass(w.category, category) and "many workers" in str(w.message)]
    expected = {"train": 5, "val": 2, "test": 2}[stage]
    assert sum(f"The '{stage}_dataloader' does not have many workers" in t and "num_workers=3" in t
               for t in hints) == expected


# --- Trainer arguments ----------------------------------------------------------------------------------------
def test_max_epochs_not_set_warns_and_trains_1000_epochs(pl, tmp_path):
    category = H.submodule(pl, "utilities.warnings").PossibleUserWarning
    match = r"^`max_epochs` was not set. Setting it to 1000 epochs. To train without an epoch limit, set `max_epochs=-1`.$"

    class Model(_model_cls(pl)):
        def training_step(self, batch, batch_idx):
            self.trainer.should_stop = True
            return super().training_step(batch, batch_idx)

    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, max_epochs=None, limit_train_batches=1,
                         limit_val_batches=0)
    with pytest.warns(category, match=match):
        trainer.fit(Model())
    assert trainer.max_epochs == 1000 and trainer.current_epoch == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pl.Trainer(**QUIET, fast_dev_run=True)
        pl.Trainer(**QUIET, max_steps=2).fit(Model())
    assert not [w for w in caught if "`max_epochs` was not set" in str(w.message)]


def test_fractional_val_check_interval_without_epochs_is_refused(pl):
    exc = H.submodule(pl, "utilities.exceptions").MisconfigurationException
    with pytest.raises(exc) as info:
        pl.Trainer(**QUIET, val_check_interval=0.5, check_val_every_n_epoch=None)
    assert str(info.value) == ("`val_check_interval` should be an integer or a time-based duration (str "
                               "'DD:HH:MM:SS', datetime.timedelta, or dict kwargs for timedelta) when "
                               "`check_val_every_n_epoch=None`.")


# --- self.log checks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["dataloader_idx_key", "metric_not_attribute", "metric_other_attribute",
                                  "custom_reduce_fx"])
def test_self_log_refusals_match_lightning(pl, tmp_path, case):
    import torchmetrics

    exc = H.submodule(pl, "utilities.exceptions").MisconfigurationException
    expected = {
        "dataloader_idx_key": "You called `self.log` with the key `foo/dataloader_idx_0` but it should not contain "
                              "information about `dataloader_idx` when `add_dataloader_idx=True`",
        "metric_not_attribute": "Could not find the `LightningModule` attribute for the `torchmetrics.Metric` "
                                "logged. You can fix this by setting an attribute for the metric in your "
                                "`LightningModule`.",
        "metric_other_attribute": "Could not find the `LightningModule` attribute for the `torchmetrics.Metric` "
                                  "logged. You can fix this by calling `self.log(foo, ..., metric_attribute=name)` "
                                  "where `name` is one of ['bar']",
        "custom_reduce_fx": "Only `self.log(..., reduce_fx={min,max,mean,sum})` are supported. If you need a "
                            "custom reduction, please log a `torchmetrics.Metric` instance instead. Found: median",
    }[case]

    class Model(_model_cls(pl)):
        def __init__(self):
            super().__init__()
            if case == "metric_other_attribute":
                self.bar = torchmetrics.MeanMetric()

        def training_step(self, batch, batch_idx):
            if case == "dataloader_idx_key":
                self.log("foo/dataloader_idx_0", -1.0)
            elif case == "custom_reduce_fx":
                self.log("foo", -1.0, reduce_fx="median")
            else:
                self.log("foo", torchmetrics.MeanMetric())
            return super().training_step(batch, batch_idx)

    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, max_steps=1, limit_val_batches=0)
    with pytest.raises(exc) as info:
        trainer.fit(Model())
    assert str(info.value) == expected


def test_a_logged_one_element_tensor_becomes_a_scalar(pl, tmp_path):
    class Model(_model_cls(pl)):
        def training_step(self, batch, batch_idx):
            self.log("foo", torch.tensor([1.2]), on_epoch=True)
            return super().training_step(batch, batch_idx)

    trainer = _fit(pl, Model(), tmp_path, max_steps=1, limit_val_batches=0)
    assert trainer.callback_metrics["foo"].ndim == 0
