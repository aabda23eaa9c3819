"""raylit.tune: sweeps with the Trainer of a single run, on a real (small) Ray instance.

Sweeps run on the session's shared two-node Ray cluster (2 CPUs in all; see tests/_ray_fixtures.py). Trials are
tiny regressions, so Tune's and Ray's overheads dominate the run time.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import signal
import sys
import time

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import raylit
from raylit.tune import TRAINER_PREFIX, TuneConfigError, Tuner, checkpoint_file
from raylit.tune._report import apply_fresh_hparams
from raylit.tune._trial import RESTORE_LOG, TrackedConfig, fit_arguments, split_config

ray = pytest.importorskip("ray")
from ray import cloudpickle, tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining  # noqa: E402

# Tune pickles the trainable (and with it these classes) to its trial actors, which cannot import this test
# module by name: ship it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.ray]


# --------------------------------------------------------------------------------------------------------------
# the workload
# --------------------------------------------------------------------------------------------------------------
class TuneNet(raylit.LightningModule):
    """A small regression that records what the trial's run did into the trial directory."""

    def __init__(self, lr: float = 0.01, hidden: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def _note(self, event: str) -> None:
        with open(os.path.join(self.trainer.default_root_dir, "events.txt"), "a") as f:
            f.write(event + "\n")

    def on_train_start(self):
        if not self.trainer.is_global_zero:
            return
        root = self.trainer.default_root_dir
        restores = os.path.join(root, RESTORE_LOG)
        last_restore = None
        if os.path.exists(restores):
            with open(restores) as f:
                last_restore = json.loads(f.read().splitlines()[-1])
        record = {
            "lr": self.trainer.optimizers[0].param_groups[0]["lr"],
            "hp_lr": self.hparams.lr,
            "global_step": self.trainer.global_step,
            "restore": last_restore,
            "accumulate_grad_batches": self.trainer.accumulate_grad_batches,
            "state_dict": {k: v.detach().clone() for k, v in self.state_dict().items()},
        }
        torch.save(record, os.path.join(root, f"start-{time.time_ns()}.pt"))
        self._note("on_train_start")

    def on_fit_end(self):
        if self.trainer.is_global_zero:
            self._note("on_fit_end")

    def teardown(self, stage):
        if stage == "fit" and self.trainer.is_global_zero:  # (not the driver's validate: it writes to the cwd)
            self._note(f"teardown:{stage}")


class TuneData(raylit.LightningDataModule):
    def __init__(self, batch_size: int = 16) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(192, 4, generator=g)
        y = x.sum(1, keepdim=True)
        self.train_set, self.val_set = TensorDataset(x[:128], y[:128]), TensorDataset(x[128:], y[128:])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=64)


def build(config):
    return TuneNet(lr=config["lr"]), TuneData(batch_size=config.get("batch_size", 16))


def quiet_trainer(**kwargs) -> raylit.Trainer:
    return raylit.Trainer(enable_progress_bar=False, enable_model_summary=False, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_instance(ray_cluster):
    """The session's Ray (tests/_ray_fixtures.py): two raylets on 127.0.0.1 / 127.0.0.2 with one CPU each, so a
    sweep has 2 CPUs, single-worker trials land on either node, and a 2-worker trial spans both."""
    cpus = wait_for_cpus(2.0, timeout=60.0)  # an earlier test may still be bringing a node back
    assert cpus == 2.0 and ray.cluster_resources().get("CPU") == 2.0, ray.cluster_resources()
    return ray_cluster


@pytest.fixture
def storage(tmp_path):
    return str(tmp_path / "sweeps")


def trial_dirs(experiment: str) -> list[str]:
    return sorted(d for d in glob.glob(os.path.join(experiment, "raylit_trial_*")) if os.path.isdir(d))


def wait_for_cpus(expected: float, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while True:
        free = ray.available_resources().get("CPU", 0.0)
        if free >= expected or time.monotonic() > deadline:
            return free
        time.sleep(0.5)


# --------------------------------------------------------------------------------------------------------------
# driver-side checks and helpers (no trials)
# --------------------------------------------------------------------------------------------------------------
def test_split_config_and_trainer_key_convention():
    user, overrides = split_config(
        {"lr": 0.1, "trainer.precision": "bf16-mixed", "trainer": {"accumulate_grad_batches": 2}}
    )
    assert user == {"lr": 0.1}
    assert overrides == {"precision": "bf16-mixed", "accumulate_grad_batches": 2}
    assert TRAINER_PREFIX == "trainer."


def test_bad_trainer_keys_fail_before_any_trial():
    with pytest.raises(TuneConfigError, match="Did you mean trainer.max_epochs"):
        Tuner(build, param_space={"lr": 0.1, "trainer.max_epoch": 3})
    with pytest.raises(TuneConfigError, match="devices=.*cannot vary"):
        Tuner(build, param_space={"lr": 0.1, "trainer.devices": tune.choice([1, 2])})
    with pytest.raises(TuneConfigError, match="trainer.precision='bogus'"):
        Tuner(build, param_space={"lr": 0.1, "trainer.precision": tune.choice(["32", "bogus"])})


def test_pbt_without_checkpoints_is_refused():
    pbt = PopulationBasedTraining(time_attr="training_iteration", hyperparam_mutations={"lr": [0.1, 0.01]})
    with pytest.raises(TuneConfigError, match="checkpointing is disabled"):
        Tuner(
            build,
            trainer=raylit.Trainer(enable_checkpointing=False),
            param_space={"lr": 0.1},
            tune_config=tune.TuneConfig(metric="val_loss", mode="min", scheduler=pbt),
        )
    with pytest.raises(TuneConfigError, match="checkpointing is disabled"):
        Tuner(
            build,
            param_space={"lr": 0.1},
            checkpoint_frequency=0,
            tune_config=tune.TuneConfig(metric="val_loss", mode="min", scheduler=pbt),
        )


def test_tracked_config_counts_reads_and_pickles_as_a_plain_dict():
    cfg = TrackedConfig({"lr": 0.1, "dropout": 0.5, "width": 3})
    assert cfg["lr"] == 0.1 and cfg.get("width") == 3
    assert cfg.unused() == ["dropout"]
    plain = pickle.loads(pickle.dumps(cfg))
    assert type(plain) is dict and plain == {"lr": 0.1, "dropout": 0.5, "width": 3}
    cfg2 = TrackedConfig({"a": 1, "b": 2})
    _ = dict(**cfg2)  # unpacking reads every key
    assert cfg2.unused() == []


def test_fit_arguments_accepts_the_build_return_forms():
    m, dm = TuneNet(), TuneData()
    assert fit_arguments(m) == (m, {})
    assert fit_arguments((m, dm)) == (m, {"datamodule": dm})
    assert fit_arguments((m, "train", "val")) == (m, {"train_dataloaders": "train", "val_dataloaders": "val"})
    assert fit_arguments({"model": m, "datamodule": dm}) == (m, {"datamodule": dm})
    with pytest.raises(TypeError, match="raylit.LightningModule"):
        fit_arguments(torch.nn.Linear(1, 1))


def test_fresh_hparams_replace_restored_ones_and_keep_the_schedule_position():
    """What a PBT exploit does to the optimizer: the donor's state, the new config's lr (and momentum)."""
    p = torch.nn.Parameter(torch.zeros(2))
    donor = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    donor_sched = torch.optim.lr_scheduler.StepLR(donor, step_size=1, gamma=0.5)
    donor.step(), donor_sched.step()  # donor lr now 0.05 (base 0.1, factor 0.5)

    fresh = torch.optim.SGD([p], lr=0.02, momentum=0.5)  # the exploiting trial's configure_optimizers
    sched = torch.optim.lr_scheduler.StepLR(fresh, step_size=1, gamma=0.5)
    groups = [[{k: v for k, v in g.items() if k != "params"} for g in fresh.param_groups]]
    fresh.load_state_dict(donor.state_dict())
    sched.load_state_dict(donor_sched.state_dict())

    class T:
        optimizers = [fresh]
        lr_scheduler_configs = [type("C", (), {"scheduler": sched})()]

    apply_fresh_hparams(T, groups)
    g = fresh.param_groups[0]
    assert g["momentum"] == 0.5 and g["initial_lr"] == 0.02
    assert g["lr"] == pytest.approx(0.01)  # new base x the schedule's factor so far
    assert sched.base_lrs == [0.02]


# --------------------------------------------------------------------------------------------------------------
# sweeps
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_asha_sweep_prunes_trials_and_the_best_checkpoint_reproduces_its_metric(ray_instance, storage):
    max_t = 6
    lrs = [3e-2, 1e-1, 1e-4, 3e-4, 1e-3, 3e-3]  # good ones first, so ASHA has a bar to prune against
    tuner = Tuner(
        build,
        trainer=quiet_trainer(max_epochs=max_t),
        param_space={"lr": tune.grid_search(lrs), "batch_size": 16},
        tune_config=tune.TuneConfig(
            metric="val_loss",
            mode="min",
            max_concurrent_trials=2,
            scheduler=ASHAScheduler(max_t=max_t, grace_period=1, reduction_factor=2),
        ),
        run_config=tune.RunConfig(name="asha", storage_path=storage, verbose=0),
    )
    results = tuner.fit()
    assert len(results) == len(lrs) and not results.errors
    iterations = [r.metrics["training_iteration"] for r in results]
    assert max(iterations) == max_t
    assert any(i < max_t for i in iterations), f"ASHA stopped no trial early: {iterations}"

    best = results.get_best_result()
    model = TuneNet.load_from_checkpoint(checkpoint_file(best))
    assert model.hparams.lr == best.config["lr"]
    out = quiet_trainer(logger=False).validate(model, datamodule=TuneData(), verbose=False)
    assert out[0]["val_loss"] == pytest.approx(best.metrics["val_loss"], rel=1e-5)

    # every trial, stopped or not, ended its run normally, with its TensorBoard logs in the trial dir
    dirs = trial_dirs(os.path.join(storage, "asha"))
    assert len(dirs) == len(lrs)
    for d in dirs:
        with open(os.path.join(d, "events.txt")) as f:
            events = f.read().split()
        assert events[-2:] == ["on_fit_end", "teardown:fit"], (d, events)
        assert glob.glob(os.path.join(d, "lightning_logs", "version_0", "events.out.tfevents.*"))
        assert os.path.exists(os.path.join(d, "lightning_logs", "version_0", "hparams.yaml"))
    assert wait_for_cpus(2.0) >= 2.0  # every stopped trial gave its CPU back


def _optuna_told(searcher) -> list[tuple[float, float]]:
    return [(t.params["lr"], t.value) for t in searcher._ot_study.trials if t.value is not None]


def _hyperopt_told(searcher) -> list[tuple[float, float]]:
    trials = searcher._hpopt_trials.trials
    return [(t["misc"]["vals"]["lr"][0], t["result"]["loss"]) for t in trials if "loss" in t["result"]]


@pytest.mark.slow
@pytest.mark.parametrize("package", ["optuna", "hyperopt"])
def test_search_algorithm_receives_the_logged_metric(ray_instance, storage, package):
    """Search algorithms from the optional extras (Optuna and HyperOpt, through Ray's OptunaSearch and
    HyperOptSearch) drive the sweep: they propose the configs and are told each trial's ``self.log`` value, the
    one Tune's results hold."""
    pytest.importorskip(package)
    if package == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher, told = OptunaSearch(seed=0), _optuna_told
    else:
        from ray.tune.search.hyperopt import HyperOptSearch

        searcher, told = HyperOptSearch(random_state_seed=0), _hyperopt_told
    tuner = Tuner(
        build,
        trainer=quiet_trainer(max_epochs=2),
        param_space={"lr": tune.loguniform(1e-3, 1e-1), "batch_size": 16},
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", search_alg=searcher, num_samples=3,
                                    max_concurrent_trials=1),
        run_config=tune.RunConfig(name=package, storage_path=storage, verbose=0),
    )
    results = tuner.fit()
    assert len(results) == 3 and not results.errors
    lrs = sorted(r.config["lr"] for r in results)
    assert len(set(lrs)) == 3 and all(1e-3 <= lr <= 1e-1 for lr in lrs)
    recorded = sorted(told(searcher))  # what the library recorded: the proposed lr and that trial's val_loss
    reported = sorted((r.config["lr"], r.metrics["val_loss"]) for r in results)
    assert [lr for lr, _ in recorded] == pytest.approx([lr for lr, _ in reported])
    assert [v for _, v in recorded] == pytest.approx([v for _, v in reported])


@pytest.mark.slow
def test_trainer_arguments_are_searched_through_the_param_space(ray_instance, storage):
    tuner = Tuner(
        build,
        trainer=quiet_trainer(max_epochs=1),
        param_space={"lr": 0.01, "trainer.accumulate_grad_batches": tune.grid_search([1, 3])},
        tune_config=tune.TuneConfig(metric="val_loss", mode="min"),
        run_config=tune.RunConfig(name="trainer_args", storage_path=storage, verbose=0),
    )
    results = tuner.fit()
    assert not results.errors
    seen = {}
    for r in results:
        record = torch.load(glob.glob(os.path.join(r.path, "start-*.pt"))[0])
        seen[r.config["trainer.accumulate_grad_batches"]] = record["accumulate_grad_batches"]
        assert r.metrics["step"] == -(-8 // record["accumulate_grad_batches"])  # 8 batches per epoch
    assert seen == {1: 1, 3: 3}


@pytest.mark.slow
def test_pbt_exploit_continues_from_the_donor_weights_with_the_new_lr(ray_instance, storage):
    # synch: the population meets at every interval, so the bad half is always exploited (with fast epochs an
    # asynchronous PBT may see no rival scores in time); resampling from a continuous range: every exploit
    # changes the lr (a list could give back the donor's value)
    pbt = PopulationBasedTraining(
        time_attr="training_iteration",
        perturbation_interval=2,
        quantile_fraction=0.5,
        synch=True,
        resample_probability=1.0,
        hyperparam_mutations={"lr": tune.uniform(1e-2, 1e-1)},
    )
    tuner = Tuner(
        build,
        trainer=quiet_trainer(max_epochs=100),
        param_space={"lr": tune.grid_search([1e-4, 1e-4, 3e-2, 1e-1])},
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", scheduler=pbt),
        run_config=tune.RunConfig(name="pbt", storage_path=storage, verbose=0, stop={"training_iteration": 6}),
        resources_per_trial={"CPU": 0.5},
    )
    results = tuner.fit()
    assert not results.errors
    assert all(r.metrics["training_iteration"] == 6 for r in results)

    exploits = []
    for d in trial_dirs(os.path.join(storage, "pbt")):
        for f in sorted(glob.glob(os.path.join(d, "start-*.pt"))):
            record = torch.load(f)
            if record["restore"] is not None and record["restore"]["hyperparameters_changed"]:
                exploits.append(record)
    assert exploits, "no PBT exploit happened"
    for record in exploits:
        restore = record["restore"]
        assert restore["from_config"]["lr"] != restore["config"]["lr"]
        # the live optimizer runs with the mutated config's lr, not the donor's
        assert record["lr"] == restore["config"]["lr"] == record["hp_lr"]
        # and training continues from the donor checkpoint's weights
        donor = torch.load(os.path.join(restore["checkpoint"], "checkpoint.ckpt"), weights_only=False)
        assert record["global_step"] == donor["global_step"] > 0
        for k, v in donor["state_dict"].items():
            assert torch.equal(record["state_dict"][k], v), k


@pytest.mark.slow
def test_a_metric_the_module_never_logs_is_a_clear_error_on_the_driver(ray_instance, storage):
    tuner = Tuner(
        build,
        trainer=quiet_trainer(max_epochs=3),
        param_space={"lr": tune.grid_search([0.01, 0.02, 0.03, 0.04])},
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", max_concurrent_trials=2),
        run_config=tune.RunConfig(name="bad_metric", storage_path=storage, verbose=0),
    )
    t0 = time.monotonic()
    with pytest.raises(TuneConfigError, match=r"'val_acc'.*never logged.*\['train_loss', 'val_loss'\]"):
        tuner.fit()
    assert time.monotonic() - t0 < 60  # the sweep stopped instead of failing trial after trial


@pytest.mark.slow
def test_a_param_space_key_nothing_reads_is_a_clear_error(ray_instance, storage):
    tuner = Tuner(
        build,
        trainer=quiet_trainer(max_epochs=1),
        param_space={"lr": 0.01, "dropout": tune.choice([0.1, 0.5])},
        tune_config=tune.TuneConfig(metric="val_loss", mode="min"),
        run_config=tune.RunConfig(name="unused_key", storage_path=storage, verbose=0),
    )
    with pytest.raises(TuneConfigError, match=r"\['dropout'\] are never read.*keys read: \['lr'\]"):
        tuner.fit()


class InterruptOnce(tune.Callback):
    """Interrupts the sweep on the driver (as Ctrl+C does) after ``after`` results; once (a marker file)."""

    def __init__(self, marker: str, after: int) -> None:
        self.marker, self.after, self.seen = marker, after, 0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.seen += 1
        if self.seen == self.after and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's graceful interrupt, like the first Ctrl+C


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_with_tuner_restore_and_finishes(ray_instance, storage, tmp_path):
    epochs = 4
    tuner = Tuner(
        build,
        trainer=quiet_trainer(max_epochs=epochs),
        param_space={"lr": tune.grid_search([0.01, 0.03])},
        tune_config=tune.TuneConfig(metric="val_loss", mode="min"),
        run_config=tune.RunConfig(
            name="resume",
            storage_path=storage,
            verbose=0,
            callbacks=[InterruptOnce(str(tmp_path / "interrupted"), after=2)],
        ),
    )
    first = tuner.fit()
    assert any(r.metrics is None or r.metrics.get("training_iteration", 0) < epochs for r in first)

    path = os.path.join(storage, "resume")
    assert Tuner.can_restore(path)
    results = Tuner.restore(path).fit()  # build function and Trainer come from the experiment dir
    assert not results.errors
    assert sorted(r.metrics["epoch"] for r in results) == [epochs - 1] * 2
    assert sorted(r.metrics["training_iteration"] for r in results) == [epochs] * 2
    # at least one trial continued from its checkpoint rather than starting over
    assert glob.glob(os.path.join(path, "*", RESTORE_LOG))


@pytest.mark.slow
def test_multi_worker_trials_run_ddp_through_the_ray_launcher(ray_instance, storage):
    """Each trial is a 2-worker DDP run (Ray Train); ASHA stops the worse one after its first report."""
    max_t = 3
    tuner = Tuner(
        build,
        trainer=quiet_trainer(max_epochs=max_t, devices=2, strategy="ddp"),
        param_space={"lr": tune.grid_search([1e-1, 1e-4])},
        tune_config=tune.TuneConfig(
            metric="val_loss", mode="min", scheduler=ASHAScheduler(max_t=max_t, grace_period=1, reduction_factor=2)
        ),
        run_config=tune.RunConfig(name="ddp", storage_path=storage, verbose=0),
    )
    results = tuner.fit()
    assert not results.errors
    iterations = {r.config["lr"]: r.metrics["training_iteration"] for r in results}
    assert iterations == {1e-1: max_t, 1e-4: 1}

    best = results.get_best_result()
    assert best.config["lr"] == 1e-1
    model = TuneNet.load_from_checkpoint(checkpoint_file(best))
    out = quiet_trainer(logger=False).validate(model, datamodule=TuneData(), verbose=False)
    assert out[0]["val_loss"] == pytest.approx(best.metrics["val_loss"], rel=1e-5)
    for d in trial_dirs(os.path.join(storage, "ddp")):
        with open(os.path.join(d, "events.txt")) as f:
            assert f.read().split()[-2:] == ["on_fit_end", "teardown:fit"]
    assert wait_for_cpus(2.0) >= 2.0  # the stopped trial's worker group released its placement group
