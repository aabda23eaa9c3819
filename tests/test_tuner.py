"""The Tuner (``raylit.tuner.Tuner``: ``lr_find``, ``scale_batch_size``) and the ``LearningRateFinder`` /
``BatchSizeFinder`` callbacks. The same program runs under Lightning 2.6 and raylit: the learning rates tried, the
smoothed losses, the suggestion, the batch sizes tried and found, the model afterwards (weights, attributes) and a
whole fit with the callbacks must match. Out-of-memory errors are simulated on CPU (a ``RuntimeError`` saying
"CUDA out of memory", which both frameworks recognise)."""

from __future__ import annotations

import importlib

import _parity_helpers as H
import pytest
import torch
from torch import nn

pytestmark = [pytest.mark.filterwarnings(f"ignore:{p}") for p in H.NOISY_WARNINGS]
H.quiet_warnings()

QUIET = {**H.QUIET, "max_epochs": 3}


def _framework(name: str):
    pl = H.import_framework(name)
    H.quiet_logging()
    return pl, importlib.import_module(f"{name}.tuner"), H.submodule(pl, "callbacks")


def _model_class(pl, oom_above: int = 10**9, n_train: int = 64, lr_in_hparams: bool = False):
    class Model(pl.LightningModule):
        def __init__(self, batch_size: int = 4, lr: float = 0.01) -> None:
            super().__init__()
            if lr_in_hparams:
                self.save_hyperparameters()
            else:
                self.batch_size, self.lr = batch_size, lr
            self.layer = nn.Linear(32, 1)
            self.sizes: list[int] = []

        @property
        def _bs(self) -> int:
            return self.hparams.batch_size if lr_in_hparams else self.batch_size

        def _check(self, batch):
            self.sizes.append(len(batch))
            if len(batch) > oom_above:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

        def training_step(self, batch, batch_idx):
            self._check(batch)
            return ((self.layer(batch) - 1) ** 2).mean()

        def validation_step(self, batch, batch_idx):
            self._check(batch)
            self.log("val", self.layer(batch).sum())

        def train_dataloader(self):
            return H.loader(n_train, self._bs)

        def val_dataloader(self):
            return H.loader(16, self._bs)

        def configure_optimizers(self):
            lr = self.hparams.lr if lr_in_hparams else self.lr
            return torch.optim.SGD(self.parameters(), lr=lr)

    return Model


def _weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


# --- lr_find ----------------------------------------------------------------------------------------------
def _lr_program(name: str, root, mode: str, max_lr: float, lr_in_hparams: bool) -> dict:
    pl, tuner, _ = _framework(name)
    pl.seed_everything(0)
    model = _model_class(pl, lr_in_hparams=lr_in_hparams)()
    before = _weights(model)
    trainer = pl.Trainer(default_root_dir=root, **QUIET)
    finder = tuner.Tuner(trainer).lr_find(model, num_training=30, min_lr=1e-4, max_lr=max_lr, mode=mode)
    return {
        "lr": finder.results["lr"], "loss": finder.results["loss"], "suggestion": finder.suggestion(),
        "model_lr": model.hparams.lr if lr_in_hparams else model.lr, "weights_kept": _same(before, _weights(model)),
        "trainer_steps": trainer.global_step, "rng_after": torch.rand(3).tolist(),
    }


@pytest.mark.parametrize("mode,max_lr,lr_in_hparams", [("exponential", 10, False), ("linear", 0.3, True)])
def test_lr_find_matches_lightning(mode, max_lr, lr_in_hparams, tmp_path, lightning_reference):
    key = ("lr_find", mode, lr_in_hparams)
    if key not in lightning_reference:
        lightning_reference[key] = _lr_program(H.REFERENCE, tmp_path / "l", mode, max_lr, lr_in_hparams)
    expected = lightning_reference[key]
    actual = _lr_program("raylit", tmp_path / "r", mode, max_lr, lr_in_hparams)
    assert actual["lr"] == expected["lr"]  # the same schedule, to the bit
    assert actual["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert actual["suggestion"] is not None
    assert actual["suggestion"] == expected["suggestion"] == actual["model_lr"] == expected["model_lr"]
    assert actual["weights_kept"] and expected["weights_kept"]
    assert actual["trainer_steps"] == 0
    assert actual["rng_after"] == expected["rng_after"]  # the search runs inside isolate_rng


def test_lr_find_with_datamodule_and_attr_name(tmp_path):
    import raylit
    from raylit.tuner import Tuner

    class Data(raylit.LightningDataModule):
        def train_dataloader(self):
            return H.loader(64, 4)

    class Model(_model_class(raylit)):
        def __init__(self):
            super().__init__()
            del self.lr
            self.my_lr = 0.5

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.my_lr)

        def train_dataloader(self):
            raise AssertionError("the datamodule's loader is used")

    model = Model()
    callbacks = [raylit.callbacks.LearningRateMonitor()]
    trainer = raylit.Trainer(default_root_dir=tmp_path, callbacks=callbacks, **{**QUIET, "logger": None})
    loggers = list(trainer.loggers)
    with pytest.raises(AttributeError, match="should have one of these fields"):
        Tuner(trainer).lr_find(model, datamodule=Data(), num_training=20)
    finder = Tuner(trainer).lr_find(model, Data(), num_training=20, attr_name="my_lr")
    assert len(finder.results["lr"]) == 20 and model.my_lr == finder.suggestion()
    # the user's Trainer was not run: callbacks, loggers and counters are as they were; nothing was logged
    assert trainer.callbacks[-1] is callbacks[0] and trainer.loggers == loggers
    assert (trainer.global_step, trainer.current_epoch, trainer.lightning_module) == (0, 0, None)
    assert not (tmp_path / "lightning_logs").exists()
    with pytest.raises(AttributeError, match="was set to nope"):
        Tuner(trainer).lr_find(model, Data(), attr_name="nope")


def test_lr_find_keeps_dtype_and_device_of_weights(tmp_path):
    import raylit
    from raylit.tuner import Tuner

    model = _model_class(raylit)()
    before = _weights(model)
    trainer = raylit.Trainer(default_root_dir=tmp_path, precision="bf16-true", **QUIET)
    Tuner(trainer).lr_find(model, num_training=15, update_attr=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the search ran in bf16
    assert _same(before, _weights(model)) and model.lr == 0.01


def test_lr_finder_suggestion_and_plot():
    from pytorch_lightning.tuner.lr_finder import _LRFinder as LightningFinder

    from raylit.tuner.lr_finder import _LRFinder
    from raylit.utilities.exceptions import MisconfigurationException

    finder, reference = _LRFinder("exponential", 1e-3, 1.0, 20), LightningFinder("exponential", 1e-3, 1.0, 20)
    lrs = [finder.lr_at(i) for i in range(16)]
    losses = [1.0, 0.9, 0.5, 0.4, 0.45, float("nan"), 0.3, 0.2, 0.25, 0.1, 0.05, 0.07, float("inf"), 0.5, 1.0, 3.0]
    for f in (finder, reference):
        f.results = {"lr": lrs, "loss": losses}
    for kwargs in ({}, {"skip_begin": 0}, {"skip_begin": 2, "skip_end": 3}, {"skip_begin": 14}):
        assert finder.suggestion(**kwargs) == reference.suggestion(**kwargs)
        assert finder._optimal_idx == reference._optimal_idx
    assert finder.suggestion(skip_begin=14) is None  # fewer than two points left
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(MisconfigurationException, match="pip install -U matplotlib"):
            finder.plot()
    else:
        assert finder.plot(suggest=True) is not None


def test_lr_find_errors_match_lightning(tmp_path):
    def errors(name):
        pl, tuner, _ = _framework(name)
        Model = _model_class(pl)

        class TwoOptimizers(Model):
            def __init__(self):
                super().__init__()
                self.automatic_optimization = False

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.SGD(self.parameters(), lr=0.1)

            def training_step(self, batch, batch_idx):
                pass

        out = {}
        for case, call in {
            "method": lambda t: tuner.Tuner(t).lr_find(Model(), method="test"),
            "mode": lambda t: tuner.Tuner(t).lr_find(Model(), mode="cubic"),
            "dataloaders": lambda t: tuner.Tuner(t).lr_find(Model(), dataloaders=H.loader()),
            "optimizers": lambda t: tuner.Tuner(t).lr_find(TwoOptimizers(), num_training=3),
        }.items():
            trainer = pl.Trainer(default_root_dir=tmp_path / name, **QUIET)
            try:
                call(trainer)
                out[case] = None
            except Exception as err:  # noqa: BLE001
                out[case] = (type(err).__name__, str(err)[:60])
        return out

    assert errors("raylit") == errors(H.REFERENCE)


# --- scale_batch_size ------------------------------------------------------------------------------------
def _bs_program(name: str, root, oom_above: int, n_train: int) -> dict:
    pl, tuner, _ = _framework(name)
    out = {}
    for method in ("fit", "validate"):
        for mode in ("power", "binsearch"):
            model = _model_class(pl, oom_above=oom_above, n_train=n_train)(batch_size=2)
            before = _weights(model)
            trainer = pl.Trainer(default_root_dir=root, **QUIET)
            found = tuner.Tuner(trainer).scale_batch_size(model, method=method, mode=mode, max_trials=6)
            out[(method, mode)] = (found, model.batch_size, sorted(set(model.sizes)), _same(before, _weights(model)))
    return out


@pytest.mark.parametrize("oom_above,n_train", [(40, 1000), (40, 20), (10**9, 100), (1, 100)])
def test_scale_batch_size_matches_lightning(oom_above, n_train, tmp_path, lightning_reference):
    key = ("scale_batch_size", oom_above, n_train)
    if key not in lightning_reference:
        lightning_reference[key] = _bs_program(H.REFERENCE, tmp_path / "l", oom_above, n_train)
    expected = lightning_reference[key]
    assert _bs_program("raylit", tmp_path / "r", oom_above, n_train) == expected
    assert all(kept for *_, kept in expected.values())


def test_scale_batch_size_in_datamodule_hparams(tmp_path):
    import raylit
    from raylit.tuner import Tuner

    class Data(raylit.LightningDataModule):
        def __init__(self, batch_size: int = 2):
            super().__init__()
            self.save_hyperparameters()

        def train_dataloader(self):
            return H.loader(256, self.hparams.batch_size)

    class Model(_model_class(raylit, oom_above=24)):
        def __init__(self):
            super().__init__()
            del self.batch_size

        def val_dataloader(self):
            return H.loader(16, 4)

    dm = Data()
    assert Tuner(raylit.Trainer(default_root_dir=tmp_path, **QUIET)).scale_batch_size(
        Model(), datamodule=dm, mode="binsearch", margin=0.0) == 24
    assert dm.hparams.batch_size == 24 and dm.trainer is None


def test_scale_batch_size_errors(tmp_path):
    import raylit
    from raylit.tuner import Tuner
    from raylit.utilities.exceptions import MisconfigurationException

    Model = _model_class(raylit)
    tuner = Tuner(raylit.Trainer(default_root_dir=tmp_path, **QUIET))
    with pytest.raises(MisconfigurationException, match="passed directly to `.fit"):
        tuner.scale_batch_size(Model(), train_dataloaders=H.loader())
    with pytest.raises(MisconfigurationException, match="Field bs not found"):
        tuner.scale_batch_size(Model(), batch_arg_name="bs")
    with pytest.raises(ValueError, match="`mode` should be either of"):
        tuner.scale_batch_size(Model(), mode="linear")

    class Broken(Model):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("not a memory problem")

    with pytest.raises(RuntimeError, match="not a memory problem"):  # only out-of-memory errors are caught
        tuner.scale_batch_size(Broken())


def test_fast_dev_run_skips_the_tuner(tmp_path):
    import raylit
    from raylit.tuner import Tuner

    model = _model_class(raylit)()
    tuner = Tuner(raylit.Trainer(default_root_dir=tmp_path, fast_dev_run=True, **H.QUIET))
    with pytest.warns(UserWarning, match="Skipping learning rate finder since `fast_dev_run` is enabled."):
        assert tuner.lr_find(model) is None
    with pytest.warns(UserWarning, match="Skipping batch size scaler since `fast_dev_run` is enabled."):
        assert tuner.scale_batch_size(model) is None


def test_tuner_refuses_ray_workers(tmp_path):
    from types import SimpleNamespace

    import raylit
    from raylit.tuner import Tuner
    from raylit.utilities.exceptions import MisconfigurationException

    for kwargs in ({"accelerator": "cpu", "devices": 2}, {"scaling_config": SimpleNamespace(num_workers=1)}):
        tuner = Tuner(raylit.Trainer(default_root_dir=tmp_path, **kwargs, **QUIET))
        for method in ("lr_find", "scale_batch_size"):
            with pytest.raises(MisconfigurationException, match="in-process.*Trainer\\(devices=1"):
                getattr(tuner, method)(_model_class(raylit)())


# --- the callbacks --------------------------------------------------------------------------------------
def _callbacks_program(name: str, root) -> dict:
    pl, _, callbacks = _framework(name)
    pl.seed_everything(0)
    model = _model_class(pl, oom_above=16, lr_in_hparams=True)(batch_size=2)
    lrf = callbacks.LearningRateFinder(num_training_steps=20, min_lr=1e-4)
    bsf = callbacks.BatchSizeFinder(max_trials=5)
    trainer = pl.Trainer(default_root_dir=root, callbacks=[bsf, lrf], **{**QUIET, "max_epochs": 10})
    trainer.fit(model)
    return {"batch_size": (bsf.optimal_batch_size, model.hparams.batch_size),
            "lr": (model.hparams.lr, trainer.optimizers[0].param_groups[0]["lr"]),
            "lr_results": lrf.optimal_lr.results["lr"], "steps": (trainer.global_step, trainer.current_epoch),
            "weights": torch.cat([w.flatten() for w in _weights(model)]).tolist()}


def test_finder_callbacks_match_lightning(tmp_path, lightning_reference):
    """Both searches at on_fit_start, then the whole fit with what they found: same sizes, rates and weights."""
    key = ("finder-callbacks",)
    if key not in lightning_reference:
        lightning_reference[key] = _callbacks_program(H.REFERENCE, tmp_path / "l")
    expected = lightning_reference[key]
    actual = _callbacks_program("raylit", tmp_path / "r")
    assert expected["batch_size"] == actual["batch_size"] == (16, 16)
    assert expected["lr"][0] != 0.01 and actual["lr"] == pytest.approx(expected["lr"])
    assert actual["lr_results"] == expected["lr_results"] and actual["steps"] == expected["steps"]
    assert actual["weights"] == pytest.approx(expected["weights"], abs=1e-6)


def test_batch_size_finder_for_test_and_with_fit_dataloaders(tmp_path):
    import raylit
    from raylit.callbacks import BatchSizeFinder
    from raylit.utilities.exceptions import MisconfigurationException

    class Model(_model_class(raylit, oom_above=8)):
        def test_step(self, batch, batch_idx):
            self._check(batch)

        def test_dataloader(self):
            return H.loader(64, self.batch_size)

    model = Model(batch_size=2)
    finder = BatchSizeFinder(max_trials=6)
    trainer = raylit.Trainer(default_root_dir=tmp_path, callbacks=[finder], **QUIET)
    trainer.test(model, verbose=False)
    assert finder.optimal_batch_size == model.batch_size == 8
    assert trainer.num_test_batches == [8]  # the run itself used the size found (64 rows / 8)
    class NoHooks(_model_class(raylit)):
        train_dataloader = raylit.LightningModule.train_dataloader
        val_dataloader = raylit.LightningModule.val_dataloader

    for model in (NoHooks(), _model_class(raylit)()):  # the hooks of the second are not what fit() would use
        with pytest.raises(MisconfigurationException, match="passed directly"):
            raylit.Trainer(default_root_dir=tmp_path, callbacks=[BatchSizeFinder()], **QUIET).fit(
                model, train_dataloaders=H.loader())
