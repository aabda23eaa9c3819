"""What user code reads and patches on ``trainer.strategy``, ``trainer.fit_loop`` and the evaluation results
table, checked under Lightning and raylit alike (issue 10)."""

from __future__ import annotations

import importlib
import warnings
from unittest import mock

import _parity_helpers as H
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

QUIET = dict(H.QUIET)
_fit = H.fit_quietly  # the framework fixture ``pl`` is conftest's


def _trained(pl, train: int = 8, val: int | None = None):
    """A LightningModule class: one Linear layer trained on ``train`` samples, with a validation loader of
    ``val`` samples when given. Tests subclass it for what they observe."""
    class Trained(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(32, 2)

        def training_step(self, batch, batch_idx):
            return self.layer(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return H.loader(train)

    if val is not None:
        Trained.val_dataloader = lambda self: H.loader(val)
    return Trained


def _manual_model(pl):
    class Manual(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.layer = nn.Linear(32, 2)

        def training_step(self, batch, batch_idx):
            opt_a, opt_b = self.optimizers()
            loss = self.layer(batch).sum()
            self.manual_backward(loss)
            self.manual_backward(self.layer(batch).pow(2).sum())
            opt_a.step()
            opt_a.zero_grad()
            self.manual_backward(self.layer(batch).mean())
            opt_b.step()
            opt_b.zero_grad()

        def configure_optimizers(self):
            return (torch.optim.SGD(self.layer.parameters(), lr=0.1),
                    torch.optim.SGD(self.layer.parameters(), lr=0.1))

        def train_dataloader(self):
            return H.loader(8)

    return Manual


def test_manual_backward_goes_through_strategy_backward(pl, tmp_path):
    """``manual_backward`` runs ``trainer.strategy.backward(loss, None)``: a user (or test) patching
    ``Strategy.backward`` sees every backward call, and ``trainer.strategy`` is a ``strategies.Strategy``."""
    strategies = importlib.import_module(f"{pl.__name__}.strategies")
    model = _manual_model(pl)()
    trainer = pl.Trainer(default_root_dir=tmp_path, **{**QUIET, "max_epochs": 1, "limit_train_batches": 2})
    assert isinstance(trainer.strategy, strategies.Strategy)
    with mock.patch.object(strategies.Strategy, "backward", wraps=trainer.strategy.backward) as bwd:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model)
    assert bwd.call_count == 2 * 3
    assert all(c.args[1] is None for c in bwd.call_args_list)  # (loss, optimizer=None)
    assert trainer.global_step == 2 * 2


# --- the results table validate/test print -------------------------------------------------------------------
_TABLE_CASES = [
    ([{"log": torch.tensor(5)}, {"no_log": torch.tensor(6.5)}], "test"),
    ([{"value": torch.tensor(2), "perf": {"a:1": torch.tensor(0), "b": 3.25}}, {"other": 1.5}], "test"),
    ([{f"a {'really ' * 11}long name": torch.tensor(5)}, {f"a {'really ' * 11}long name": torch.tensor([[6]])}],
     "validate"),
    ([{f"loss/dataloader_idx_{i}": torch.tensor(i)} for i in range(5)], "validate"),
    ([{}], "test"),
]


@pytest.mark.parametrize("rich", [True, False], ids=["rich", "plain"])
@pytest.mark.parametrize("case", range(len(_TABLE_CASES)))
def test_results_table_matches_lightning(case, rich, monkeypatch, capsys):
    """``trainer.test``/``validate`` print the same table as Lightning: rich when available, else plain text
    (one column per dataloader, nested dicts as ``a:b`` rows, long names wrapped, split at the terminal width)."""
    monkeypatch.setenv("COLUMNS", "120")
    printed = []
    for name in H.FRAMEWORKS:
        mod = importlib.import_module(f"{name}.loops.evaluation_loop")
        monkeypatch.setattr(mod, "_RICH_AVAILABLE", rich)
        if rich:
            from rich import get_console

            with get_console().capture() as cap:
                mod._EvaluationLoop._print_results(*_TABLE_CASES[case])
            printed.append(cap.get())
        else:
            mod._EvaluationLoop._print_results(*_TABLE_CASES[case])
            printed.append(capsys.readouterr().out)
    assert printed[1] == printed[0]
    assert bool(printed[0]) == (case != 4)


def test_test_prints_the_table_once_on_rank_zero(tmp_path, capsys, monkeypatch):
    """``trainer.test(verbose=True)`` prints the logged metrics through that table; ``verbose=False`` prints
    nothing."""
    import raylit
    from raylit.loops import evaluation_loop

    monkeypatch.setattr(evaluation_loop, "_RICH_AVAILABLE", False)
    monkeypatch.setenv("COLUMNS", "120")

    class M(raylit.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(32, 2)

        def test_step(self, batch, batch_idx):
            self.log("test_metric", 0.5)

        def test_dataloader(self):
            return H.loader(4)

    trainer = raylit.Trainer(default_root_dir=tmp_path, **QUIET)
    trainer.test(M(), verbose=False)
    assert "Test metric" not in capsys.readouterr().out
    trainer.test(M())
    out = capsys.readouterr().out
    assert out.count("Test metric") == 1 and "test_metric" in out and "0.5" in out


# --- trainer.fit_loop: the progress user callbacks read -------------------------------------------------------
def _progress_recorder(pl):
    def snap(trainer, where):
        fl = trainer.fit_loop
        el, vl = fl.epoch_loop, fl.epoch_loop.val_loop
        bp, ep, vp = el.batch_progress, fl.epoch_progress, vl.batch_progress
        in_epoch = (fl.batch_idx, bp.current.ready, bp.current.completed)
        return (where, fl.total_batch_idx, bp.total.ready, bp.total.completed, in_epoch, ep.total.ready,
                ep.total.processed, ep.total.completed, vp.total.completed, vp.current.completed,
                el._batches_that_stepped, el.global_step)

    class Recorder(pl.Callback):
        def __init__(self):
            self.seen = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.seen.append(snap(trainer, "epoch_start"))

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append(snap(trainer, "batch_start"))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.seen.append(snap(trainer, "batch_end"))

        def on_validation_start(self, trainer, pl_module):
            if not trainer.sanity_checking:
                self.seen.append(snap(trainer, "val_start"))

        def on_train_epoch_end(self, trainer, pl_module):
            self.seen.append(snap(trainer, "epoch_end"))

        def on_fit_end(self, trainer, pl_module):
            self.seen.append(snap(trainer, "fit_end"))

    return Recorder


@pytest.mark.parametrize("kwargs", [dict(val_check_interval=2, limit_train_batches=5, max_epochs=2),
                                    dict(val_check_interval=3, check_val_every_n_epoch=None, max_steps=4,
                                         limit_train_batches=4, accumulate_grad_batches=2)],
                         ids=["per-epoch", "across-epochs-acc"])
def test_fit_loop_progress_matches_lightning(kwargs, tmp_path):
    """``trainer.fit_loop``'s counters (total/epoch batch index, batch and epoch progress, the validation
    batches per epoch, batches that stepped) read the same as Lightning's at every training hook."""
    seen = {}
    for name in H.FRAMEWORKS:
        pl = H.import_framework(name)
        H.quiet_logging()

        class M(_trained(pl, train=10, val=4)):
            def validation_step(self, batch, batch_idx):
                self.log("v", self.layer(batch).sum())

        rec = _progress_recorder(pl)()
        trainer = _fit(pl, M(), tmp_path / name, callbacks=[rec], limit_val_batches=2,
                       **{"max_epochs": -1, **kwargs})
        assert trainer.fit_loop.max_steps == trainer.max_steps
        seen[name] = rec.seen
    assert seen["raylit"] == seen[H.REFERENCE]


def test_fit_loop_limits_are_the_trainer_settings(tmp_path):
    """``trainer.fit_loop.epoch_loop.max_steps += 1`` between fits raises the Trainer's max_steps, as in
    Lightning; the views read zeros before any run."""
    import raylit

    trainer = raylit.Trainer(default_root_dir=tmp_path, max_steps=1, **QUIET)
    assert trainer.fit_loop.total_batch_idx == -1 and trainer.fit_loop.epoch_progress.total.completed == 0
    model = _manual_model(raylit)()
    model.automatic_optimization = True
    model.training_step = lambda batch, batch_idx: model.layer(batch).sum()
    model.configure_optimizers = lambda: torch.optim.SGD(model.parameters(), lr=0.1)
    trainer.fit(model)
    assert trainer.global_step == 1
    trainer.fit_loop.epoch_loop.max_steps += 1
    assert trainer.max_steps == 2 and trainer.fit_loop.max_steps == 2
    trainer.fit_loop.max_epochs = 3
    assert trainer.max_epochs == 3


def test_time_based_validation_reads_the_clock_like_lightning(pl, tmp_path):
    """``val_check_interval`` as a duration: the clock is read once when training starts, once per batch check
    and once at the end of every evaluation (the sanity check too), and the progress bar does not read the
    same clock, so a patched ``time.monotonic`` gives both frameworks the same validation points."""
    calls = {"n": 0}

    def fake_monotonic():
        calls["n"] += 1
        return float(calls["n"])

    class M(_trained(pl, train=4, val=2)):
        val_at: list = []

        def validation_step(self, batch, batch_idx):
            if not self.trainer.sanity_checking:
                self.val_at.append(self.trainer.fit_loop.total_batch_idx)

    model = M()
    with mock.patch("time.monotonic", side_effect=fake_monotonic):
        trainer = pl.Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                             enable_model_summary=False, max_epochs=4, limit_val_batches=1,
                             val_check_interval="00:00:00:03", check_val_every_n_epoch=None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model)
    assert model.val_at == [2, 5]
    assert calls["n"] == 1 + 1 + 8 + 2


# --- a model attached without running: strategy.connect, _data_connector, <loop>.setup_data -----------------
@pytest.mark.parametrize("stage", ["val", "test", "predict"])
@pytest.mark.parametrize("limit", [0.25, 3])
def test_setup_data_on_an_attached_model(pl, stage, limit, tmp_path):
    """``trainer.strategy.connect(model)`` + ``_data_connector.attach_dataloaders(model)`` +
    ``trainer.<stage>_loop.setup_data()`` loads that stage's dataloaders without running anything: the batch
    counts and loaders read as after a run."""
    class M(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(32, 2)

        def validation_step(self, batch, batch_idx):
            pass

        test_step = predict_step = validation_step

        def val_dataloader(self):
            return H.loader(16)

        test_dataloader = predict_dataloader = val_dataloader

    model = M()
    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, **{f"limit_{stage}_batches": limit})
    model.trainer = trainer
    trainer.strategy.connect(model)
    trainer._data_connector.attach_dataloaders(model)
    loop = {"val": trainer.validate_loop, "test": trainer.test_loop, "predict": trainer.predict_loop}[stage]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop.setup_data()
    assert trainer.state.fn is None and not trainer.training
    trainer.state.fn = "validate" if stage == "val" else None  # Lightning counts val batches for the running fn
    counts = {"val": trainer.num_val_batches, "test": trainer.num_test_batches,
              "predict": trainer.num_predict_batches}[stage]
    loaders = {"val": trainer.val_dataloaders, "test": trainer.test_dataloaders,
               "predict": trainer.predict_dataloaders}[stage]
    assert counts == [2 if limit == 0.25 else 3]
    assert len(loaders) == 8 and trainer.lightning_module is model


def test_checkpoint_of_an_attached_model(pl, tmp_path):
    """``save_checkpoint`` after ``strategy.connect`` writes the untrained model with Lightning's keys and the
    attached datamodule's state under its class name."""
    class DM(pl.LightningDataModule):
        def state_dict(self):
            return {"foo": "bar"}

    model = _manual_model(pl)()
    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET)
    trainer.strategy.connect(model)
    dm = DM()
    trainer._data_connector.attach_data(model, datamodule=dm)
    path = tmp_path / "attached.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert set(ckpt) >= {"epoch", "global_step", "state_dict", "loops", "callbacks", "optimizer_states",
                         "lr_schedulers", "pytorch-lightning_version", type(dm).__qualname__}
    assert ckpt[type(dm).__qualname__] == {"foo": "bar"} and (ckpt["epoch"], ckpt["global_step"]) == (0, 0)
    assert torch.equal(ckpt["state_dict"]["layer.weight"], model.layer.weight)


@pytest.mark.parametrize("per_node", [True, False])
def test_prepare_data_ranks(pl, per_node):
    """``trainer._data_connector.prepare_data()`` calls the datamodule's ``prepare_data`` on local rank 0 of
    every node, or on node 0 only when ``prepare_data_per_node=False`` (the rule a run follows too)."""
    class DM(pl.LightningDataModule):
        calls = 0

        def prepare_data(self):
            DM.calls += 1

    dm = DM()
    dm.prepare_data_per_node = per_node
    trainer = pl.Trainer(logger=False)
    trainer.datamodule = dm
    called = []
    for node, local in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        with mock.patch.object(type(trainer), "local_rank", new_callable=mock.PropertyMock, return_value=local), \
                mock.patch.object(type(trainer), "node_rank", new_callable=mock.PropertyMock, return_value=node):
            before = DM.calls
            trainer._data_connector.prepare_data()
            called.append(DM.calls - before)
    assert called == ([1, 0, 1, 0] if per_node else [1, 0, 0, 0])


def test_restore_modules_and_callbacks_from_a_path(pl, tmp_path):
    """``trainer._checkpoint_connector._restore_modules_and_callbacks(path)`` after a fit loads the weights and
    the datamodule's state from that checkpoint."""
    class DM(pl.LightningDataModule):
        def __init__(self):
            super().__init__()
            self.my_state = None

        def train_dataloader(self):
            return H.loader(4)

        def state_dict(self):
            return {"my": "state"}

        def load_state_dict(self, state):
            self.my_state = state

    class M(_trained(pl)):
        train_dataloader = None  # the datamodule's

    dm, model = DM(), M()
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=1, enable_progress_bar=False, logger=False,
                         enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm)
    path = trainer.checkpoint_callback.best_model_path
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.layer.weight.zero_()
    trainer._checkpoint_connector._restore_modules_and_callbacks(path)
    assert dm.my_state == {"my": "state"}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_on_load_checkpoint_sees_the_hyperparameters_used(pl, tmp_path):
    """``load_from_checkpoint(path, **overrides)`` hands ``on_load_checkpoint`` the checkpoint with its
    ``hyper_parameters`` updated by the overrides (and present even when the model saved none)."""
    seen = []

    class M(pl.LightningModule):
        def __init__(self, width=4, note="a"):
            super().__init__()
            self.save_hyperparameters()
            self.layer = nn.Linear(32, width)

        def on_load_checkpoint(self, checkpoint):
            seen.append(dict(checkpoint["hyper_parameters"]))

    class Plain(pl.LightningModule):
        def __init__(self, called=None):
            super().__init__()
            self.layer = nn.Linear(32, 2)

        def on_load_checkpoint(self, checkpoint):
            seen.append(dict(checkpoint["hyper_parameters"]))

    for cls, kwargs in ((M, {"note": "b"}), (Plain, {"called": 1})):
        trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET)
        trainer.strategy.connect(cls())
        trainer.save_checkpoint(tmp_path / "m.ckpt")
        cls.load_from_checkpoint(tmp_path / "m.ckpt", **kwargs)
    assert seen == [{"width": 4, "note": "b"}, {"called": 1}]


def test_batch_counts_persist_across_calls(pl, tmp_path):
    """As Lightning's loops persist, each stage's batch counts survive the Trainer's later calls: after
    ``fit`` then ``test``, ``num_val_batches`` still reads fit's; after ``validate``, ``num_test_batches``
    still reads the test's; a new ``fit`` keeps the test and predict counts."""
    class M(_trained(pl, train=8, val=10)):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            pass

        test_step = predict_step = validation_step

        def test_dataloader(self):
            return [H.loader(6), H.loader(4)]

        predict_dataloader = _trained(pl).train_dataloader

    model = M()
    trainer = pl.Trainer(default_root_dir=tmp_path, **QUIET, max_epochs=1, limit_val_batches=3)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for call in ("fit", "test", "validate", "predict", "fit"):
            kwargs = {} if call in ("fit", "predict") else {"verbose": False}
            getattr(trainer, call)(model, **kwargs)
            seen.append((call, trainer.num_training_batches, trainer.num_val_batches, trainer.num_test_batches,
                         trainer.num_predict_batches))
    assert seen == [("fit", 4, [3], [], []), ("test", 4, [3], [3, 2], []), ("validate", 4, [3], [3, 2], []),
                    ("predict", 4, [3], [3, 2], [4]), ("fit", 4, [3], [3, 2], [4])]


# --- the optimizer step around the closure (issue 12: the step may call the closure itself first) ---------------
def _optimizer_run(pl, root, optimizer: str, hooked: str) -> tuple[list[str], torch.Tensor]:
    events: list[str] = []

    class Subclassed(torch.optim.SGD):  # defined outside torch.optim
        pass

    class Model(_trained(pl, train=8)):
        def training_step(self, batch, batch_idx):
            events.append("training_step")
            return super().training_step(batch, batch_idx)

        def on_before_optimizer_step(self, opt):
            events.append("on_before_optimizer_step")

        def configure_optimizers(self):
            make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1), "adam": lambda p: torch.optim.Adam(p, lr=0.01),
                    "lbfgs": lambda p: torch.optim.LBFGS(p, lr=0.1, max_iter=3),
                    "sgd_subclass": lambda p: Subclassed(p, lr=0.1)}[optimizer]
            opt = make(self.parameters())
            opt.register_step_post_hook(lambda *a: events.append("post_hook"))
            if hooked == "pre_hook":
                opt.register_step_pre_hook(lambda *a: events.append("pre_hook"))
            return opt

    handle = None
    if hooked == "global_pre_hook":
        handle = register_optimizer_step_pre_hook(lambda *a: events.append("pre_hook"))
    try:
        torch.manual_seed(0)
        model = Model()
        _fit(pl, model, root, limit_train_batches=3)
    finally:
        if handle is not None:
            handle.remove()
    return events, torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "lbfgs", "sgd_subclass"])
@pytest.mark.parametrize("hooked", ["pre_hook", "global_pre_hook", "none"])
def test_optimizer_step_order_and_weights_match_lightning(tmp_path, optimizer, hooked):
    """What user code sees around ``optimizer.step`` is Lightning's: step pre-hooks (per optimizer or global) run
    before ``training_step`` (the closure runs inside the step), post-hooks after ``on_before_optimizer_step``,
    LBFGS calls the closure several times per step; the trained weights are the same."""
    runs = {name: _optimizer_run(H.import_framework(name), tmp_path / name, optimizer, hooked)
            for name in ("pytorch_lightning", "raylit")}
    (events, weights), (lightning_events, lightning_weights) = runs["raylit"], runs["pytorch_lightning"]
    assert events == lightning_events
    if optimizer != "lbfgs":
        pre = ["pre_hook"] if hooked != "none" else []
        assert events == (pre + ["training_step", "on_before_optimizer_step", "post_hook"]) * 3
    if optimizer == "lbfgs":
        assert events.count("training_step") > 3  # LBFGS evaluates the closure more than once per step
    torch.testing.assert_close(weights, lightning_weights, rtol=0, atol=0)


def test_under_torch_profiler_the_step_range_holds_forward_and_backward(tmp_path):
    """With torch's profiler running, ``training_step`` runs inside the ``Optimizer.step#SGD.step`` range (the
    closure is called by the step, as in Lightning), so a trace shows the same nesting under both."""
    nested = {}
    for name in ("pytorch_lightning", "raylit"):
        pl = H.import_framework(name)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            _fit(pl, _trained(pl, train=8)(), tmp_path / name, limit_train_batches=3)
        events = prof.events()
        steps = [(e.time_range.start, e.time_range.end) for e in events if e.name == "Optimizer.step#SGD.step"]
        forwards = [e.time_range.start for e in events if e.name == "aten::linear"]
        nested[name] = (len(steps), sum(any(a <= t <= b for a, b in steps) for t in forwards))
    assert nested["raylit"] == nested["pytorch_lightning"] == (3, 3)
