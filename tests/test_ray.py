"""raylit on Ray Train workers.

Unmarked tests check the driver-side planning and validation without starting Ray. Tests marked
``@pytest.mark.ray`` share one session-scoped two-node cluster (``_ray_fixtures.ray_cluster``: two raylets on
127.0.0.1 / 127.0.0.2, one CPU each), so every 2-worker run there is also a 2-node run.

Each Ray run costs ~15-25 s on a 2-core machine (actor start-up, torch import in each worker), so each run
checks several things.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from raylit import LightningModule, Trainer
from raylit.callbacks import Callback, ModelCheckpoint
from raylit.launch import ray as ray_launch
from raylit.launch import resources, session
from raylit.loggers import CSVLogger
from raylit.utilities.exceptions import MisconfigurationException

REPO = Path(__file__).resolve().parents[1]
SEED = 7


@pytest.fixture(autouse=True, scope="module")
def _ship_this_module_by_value():
    """The workers cannot import ``test_ray`` (Ray puts only the driver's script dir and cwd on their
    sys.path), so pickle the classes defined here by value, as cloudpickle does for a script's __main__."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


# --------------------------------------------------------------------------------------------------------------
# modules and helpers (module level: the workers import them by name)
# --------------------------------------------------------------------------------------------------------------
class IndexedData(Dataset):
    """(x, y, index) rows from a fixed generator, so every process holds the same data."""

    def __init__(self, n: int, features: int = 4) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, features, generator=g)
        self.y = self.x @ torch.randn(features, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


class ParityModule(LightningModule):
    def __init__(
        self,
        n_train: int = 32,
        n_eval: int = 7,
        batch_size: int = 4,
        use_bn: bool = False,
        unused: bool = False,
        fail_on_rank: int | None = None,
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers: list[nn.Module] = [nn.Linear(4, 8)]
        if use_bn:
            layers.append(nn.BatchNorm1d(8))
        layers += [nn.Tanh(), nn.Linear(8, 1)]
        self.net = nn.Sequential(*layers)
        self.unused = nn.Linear(4, 1) if unused else None
        self.n_train, self.n_eval, self.batch_size = n_train, n_eval, batch_size
        self.fail_on_rank = fail_on_rank

    def forward(self, x):
        return self.net(x)

    def _log_indices(self, prefix: str, idx: torch.Tensor) -> None:
        idx = idx.float()
        kw = dict(on_step=False, on_epoch=True, sync_dist=True, reduce_fx="sum")
        self.log(f"{prefix}_count", float(len(idx)), **kw)
        self.log(f"{prefix}_idx_sum", idx.sum(), **kw)
        self.log(f"{prefix}_idx_sq_sum", (idx * idx).sum(), **kw)

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        if self.fail_on_rank is not None and self.trainer.global_rank == self.fail_on_rank and batch_idx == 1:
            raise ValueError(f"boom on rank {self.trainer.global_rank}")
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        self._log_indices("train", idx)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, idx = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)
        self._log_indices("val", idx)

    def predict_step(self, batch, batch_idx):
        x, y, idx = batch
        return idx

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        return DataLoader(IndexedData(self.n_train), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(IndexedData(self.n_eval), batch_size=4)

    def predict_dataloader(self):
        return DataLoader(IndexedData(self.n_eval), batch_size=2)


class GlobalBatchSampler(Sampler):
    """For the one-process reference: yields, per step, rank 0's then rank 1's batch of a 2-process run
    (DistributedSampler with the same seed and epoch), so a batch of 2 x b holds exactly what DDP sees."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        shards = []
        for rank in range(2):
            s = DistributedSampler(range(self.n), num_replicas=2, rank=rank, shuffle=True, seed=self.seed)
            s.set_epoch(self.epoch)
            shards.append(list(s))
        b = self.batch_size
        for k in range(0, len(shards[0]), b):
            yield from shards[0][k : k + b] + shards[1][k : k + b]

    def __len__(self) -> int:
        return self.n


class RankRecorder(Callback):
    """Records every rank's (global, node, local rank, world size, nodes) and rank 0's step timestamps; its
    state_dict travels back to the driver with the results."""

    def __init__(self) -> None:
        self.ranks: list = []
        self.step_times: list[float] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        rt = trainer._runtime
        mine = torch.tensor([rt.global_rank, rt.node_rank, rt.local_rank, rt.world_size, rt.num_nodes])
        self.ranks = pl_module.all_gather(mine).tolist()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.step_times.append(time.time())

    def state_dict(self) -> dict:
        return {"ranks": self.ranks, "step_times": self.step_times}

    def load_state_dict(self, state: dict) -> None:
        self.ranks, self.step_times = state["ranks"], state["step_times"]


def _trainer(**kw) -> Trainer:
    base = dict(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    base.update(kw)
    return Trainer(**base)


def _reference_fit(model: ParityModule, accumulate: int, epochs: int = 2) -> Trainer:
    """One process, global batch 2 x batch_size, same sample grouping as the 2-worker run."""
    loader = DataLoader(
        IndexedData(model.n_train),
        batch_size=2 * model.batch_size,
        sampler=GlobalBatchSampler(model.n_train, model.batch_size, SEED),
    )
    trainer = _trainer(devices=1, max_epochs=epochs, accumulate_grad_batches=accumulate)
    trainer.fit(model, train_dataloaders=loader)
    return trainer


def _assert_close_params(a: nn.Module, b: nn.Module, atol: float = 1e-5) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=atol), (k, sa[k], sb[k])


# --------------------------------------------------------------------------------------------------------------
# driver side, no Ray start
# --------------------------------------------------------------------------------------------------------------
def test_plan_maps_lightning_flags_to_scaling_config() -> None:
    p = resources.plan(_trainer(devices=2))
    sc = resources.scaling_config(_trainer(devices=2), p, cluster_gpus=0)
    assert (sc.num_workers, sc.use_gpu, sc.placement_strategy) == (2, False, "PACK")
    assert sc.resources_per_worker == {"CPU": 1.0}

    t = _trainer(devices=1, num_nodes=2)
    sc = resources.scaling_config(t, resources.plan(t), cluster_gpus=0)
    assert (sc.num_workers, sc.placement_strategy) == (2, "STRICT_SPREAD")  # one worker per node

    t = _trainer(devices=2, num_nodes=2)
    sc = resources.scaling_config(t, resources.plan(t), cluster_gpus=0)
    assert (sc.num_workers, sc.placement_strategy) == (4, "SPREAD")

    t = Trainer(accelerator="gpu", devices=2)
    p = resources.plan(t)
    sc = resources.scaling_config(t, p, cluster_gpus=0)
    assert sc.use_gpu and sc.resources_per_worker == {"CPU": 1.0, "GPU": 1}

    t = Trainer(accelerator="auto", devices=2)  # "auto" follows the cluster, not this machine
    assert resources.scaling_config(t, resources.plan(t), cluster_gpus=8).use_gpu
    assert not resources.scaling_config(t, resources.plan(t), cluster_gpus=0).use_gpu

    t = _trainer(devices=2, strategy="ddp_find_unused_parameters_true")
    assert resources.plan(t).find_unused_parameters


def test_user_ray_configs_win() -> None:
    from ray.train import RunConfig, ScalingConfig

    sc, rc = ScalingConfig(num_workers=3, resources_per_worker={"CPU": 0.5}), RunConfig(name="mine")
    t = _trainer(devices=2, scaling_config=sc, run_config=rc)
    p = resources.plan(t)
    assert p.explicit_scaling and p.num_workers == 3
    assert resources.scaling_config(t, p, cluster_gpus=4) is sc
    assert ray_launch.run_config(t, "fit") is rc
    derived = ray_launch.run_config(_trainer(devices=2), "fit")
    assert derived.name.startswith("raylit-fit-")


def test_impossible_requests_fail_on_the_driver() -> None:
    t = _trainer(devices=2)
    # a strategy the launcher cannot run ("fsdp" runs: tests/test_fsdp.py)
    t.config = dataclasses.replace(t.config, strategy="deepspeed")
    with pytest.raises(MisconfigurationException, match="not supported on Ray"):
        resources.plan(t)
    t = _trainer(devices=2)
    t.config = dataclasses.replace(t.config, devices=0, num_workers=0)  # devices=0 as the launcher would see it
    with pytest.raises(MisconfigurationException, match="no worker"):
        resources.plan(t)
    with pytest.raises(MisconfigurationException):
        Trainer(devices=0)  # the Trainer itself refuses it too


class Unpicklable(ParityModule):
    def __init__(self) -> None:
        super().__init__()
        self.helper = nn.Module()
        self.helper.lock = threading.Lock()


def test_unpicklable_module_names_the_attribute() -> None:
    t = _trainer(devices=2)
    with pytest.raises(MisconfigurationException, match=r"`model\.helper\.lock` \(a _thread\.lock\)"):
        ray_launch.pack(t._spec("fit", Unpicklable()))


def test_connect_policy(monkeypatch) -> None:
    """No Ray is started here: ray.init is replaced by a recorder."""
    import ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR as hook_var

    monkeypatch.setattr(ray, "init", lambda **kw: calls.append({**kw, "hook_env": os.environ.get(hook_var)}))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name, value in (("_started_here", False), ("_connected_here", False), ("_keep", False),
                        ("_env_set_by_ray", {})):
        monkeypatch.setattr(session, name, value)  # this test's fake connections must not leak into others
    assert session.connect(4, 0) is True
    assert calls[-1]["address"] == "local"  # never a bare init: that would join a `ray start` cluster
    assert calls[-1]["num_cpus"] >= 4 and calls[-1]["include_dashboard"] is False
    # a private instance gets the setup hook through the environment its processes inherit (no job
    # runtime_env, which would keep its actors off Ray's pre-started worker processes), and only during init
    assert calls[-1]["runtime_env"] is None
    assert calls[-1]["hook_env"] == "raylit.launch.session.quiet_ray_workers" and hook_var not in os.environ

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # asked explicitly, or set by a Ray job
    assert session.connect(2, 0) is False
    assert calls[-1]["address"] == "10.0.0.1:6379" and "num_cpus" not in calls[-1]
    assert calls[-1]["runtime_env"] == {"worker_process_setup_hook": "raylit.launch.session.quiet_ray_workers"}

    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # already connected: use it as is
    n = len(calls)
    assert session.connect(2, 0) is False and len(calls) == n


def test_release_leaves_the_process_as_the_call_found_it(monkeypatch) -> None:
    """After a Ray call, a connection raylit made is shut down and the environment variables ray.init set are
    put back (a variable changed since stays); a connection made for Ray Data or Tune, or with
    RAYLIT_KEEP_RAY=1, is kept; one the user made is never touched. ray.init/shutdown are recorders here."""
    import ray

    events: list[str] = []

    def fake_init(**kw):
        events.append("init")
        os.environ["RAY_FAKE_SET"] = "1"
        os.environ["PYTHONBREAKPOINT"] = "ray.util.rpdb.set_trace"

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "shutdown", lambda: events.append("shutdown"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAYLIT_KEEP_RAY", raising=False)
    monkeypatch.setenv("PYTHONBREAKPOINT", "0")
    for name, value in (("_started_here", False), ("_connected_here", False), ("_keep", False),
                        ("_env_set_by_ray", {})):
        monkeypatch.setattr(session, name, value)

    session.connect(1, 0)
    assert os.environ["RAY_FAKE_SET"] == "1"
    session.release()
    assert events == ["init", "shutdown"]
    assert "RAY_FAKE_SET" not in os.environ and os.environ["PYTHONBREAKPOINT"] == "0"
    session.release()  # nothing left to release
    assert events == ["init", "shutdown"]

    session.connect(1, 0)
    os.environ["RAY_FAKE_SET"] = "mine"  # changed by someone after ray.init: not ours to undo
    monkeypatch.setenv("RAYLIT_KEEP_RAY", "1")
    session.release()
    assert events == ["init", "shutdown", "init"]
    monkeypatch.delenv("RAYLIT_KEEP_RAY")
    session.release()
    assert events[-1] == "shutdown" and os.environ["RAY_FAKE_SET"] == "mine"
    monkeypatch.delenv("RAY_FAKE_SET")

    session.connect(1, 0, keep=True)  # Ray Data read in-process / a Tune sweep
    session.release()
    assert events[-1] == "init"


def test_import_raylit_does_not_import_ray() -> None:
    code = "import raylit, raylit.launch, sys; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------------------------
# on the shared two-node cluster
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.ray
def test_fit_two_nodes_ddp_parity(ray_cluster, tmp_path, monkeypatch, capsys) -> None:
    """2 workers on 2 raylets (num_nodes=2, devices=1), accumulate_grad_batches=2 (no_sync on the first
    micro-batch): final weights match one process with the same global batches; every training sample is
    seen once per epoch; sync_dist values; only rank 0 writes logs and checkpoints; the driver's model and
    trainer hold the results."""
    monkeypatch.setenv("PL_GLOBAL_SEED", str(SEED))
    model = ParityModule(n_train=32, batch_size=4)
    reference = copy.deepcopy(model)
    ref_trainer = _reference_fit(reference, accumulate=2)

    recorder = RankRecorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, monitor="train_loss")
    trainer = _trainer(
        devices=1,
        num_nodes=2,
        accumulate_grad_batches=2,
        callbacks=[recorder, ckpt],
        enable_checkpointing=True,
        logger=CSVLogger(tmp_path / "logs"),
        default_root_dir=tmp_path,
    )
    start = time.time()
    trainer.fit(model)
    wall = time.time() - start

    _assert_close_params(model, reference)  # the user's object holds the trained weights
    assert (trainer.global_step, trainer.current_epoch) == (ref_trainer.global_step, 2) == (4, 2)
    # the progress views read the workers' counters on the driver, as they read the in-process run's
    for fl in (trainer.fit_loop, ref_trainer.fit_loop):
        progress = fl.epoch_loop.batch_progress
        assert fl.epoch_progress.total.completed == 2 and fl.epoch_loop._batches_that_stepped == 4
        assert (progress.total.completed, progress.current.completed, fl.total_batch_idx) == (8, 4, 7)
    m = trainer.callback_metrics
    assert m["train_count"].item() == 32  # per epoch: each of the 32 samples exactly once
    assert m["train_idx_sum"].item() == sum(range(32))
    assert m["train_idx_sq_sum"].item() == sum(i * i for i in range(32))
    assert torch.allclose(m["train_loss"], ref_trainer.callback_metrics["train_loss"], atol=1e-5)

    assert recorder.ranks == [[0, 0, 0, 2, 2], [1, 1, 0, 2, 2]]  # (global, node, local, world, nodes)
    assert Path(trainer.checkpoint_callback.last_model_path).exists()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(
        {Path(trainer.checkpoint_callback.best_model_path).name, "last.ckpt"}
    )
    saved = torch.load(trainer.checkpoint_callback.last_model_path, weights_only=False)["state_dict"]
    assert all(torch.allclose(saved[k], v) for k, v in model.state_dict().items())
    assert [p.name for p in (tmp_path / "logs" / "lightning_logs").iterdir()] == ["version_0"]
    assert trainer.logger.log_dir == str(tmp_path / "logs" / "lightning_logs" / "version_0")  # rank 0's choice
    (tmp_path / "logs" / "lightning_logs" / "version_0" / "metrics.csv").read_text().index("train_loss")

    first_step = recorder.step_times[0] - start
    step_time = (recorder.step_times[-1] - recorder.step_times[0]) / (len(recorder.step_times) - 1)
    with capsys.disabled():
        print(
            f"\n[timing] 2-node fit: wall {wall:.1f}s, time to first step {first_step:.1f}s, "
            f"step time {1000 * step_time:.1f} ms ({len(recorder.step_times)} micro-batches on rank 0)"
        )


@pytest.mark.ray
def test_sync_batchnorm_and_find_unused_parameters_parity(ray_cluster, monkeypatch) -> None:
    """BatchNorm statistics over the global batch (CPU all-reduce implementation) and a parameter that
    never gets a gradient: plain DDP would fail on the second step; with the strategy it trains and matches
    one process holding the global batch."""
    monkeypatch.setenv("PL_GLOBAL_SEED", str(SEED))
    model = ParityModule(n_train=16, batch_size=4, use_bn=True, unused=True)
    reference = copy.deepcopy(model)
    _reference_fit(reference, accumulate=1, epochs=1)
    trainer = _trainer(devices=2, max_epochs=1, sync_batchnorm=True, strategy="ddp_find_unused_parameters_true")
    trainer.fit(model)
    assert type(model.net[1]) is nn.BatchNorm1d  # the driver's module keeps its classes
    _assert_close_params(model, reference)
    assert trainer.global_step == 2


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them as they are (eager)."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


class CompileRecorder(Callback):
    """Each rank writes how many graphs its own copy of the backend compiled (the backend travels in the same
    pickle as this callback, so on a worker both hold the same copy)."""

    def __init__(self, backend: CountingBackend, out: Path) -> None:
        self.backend, self.out = backend, out

    def on_train_end(self, trainer, pl_module) -> None:
        compiled = "training_step" in vars(pl_module)  # the step runs through the compiler on this worker
        (self.out / f"rank{trainer.global_rank}.txt").write_text(f"{self.backend.graphs} {compiled}")


@pytest.mark.ray
def test_fit_a_torch_compiled_module_on_two_workers(ray_cluster, tmp_path, monkeypatch) -> None:
    """``trainer.fit(torch.compile(model))`` with 2 Ray workers: each worker compiles for itself (its backend
    sees graphs), training matches one process with the same global batches, checkpoints keep the plain keys,
    and the driver's module is plain again."""
    monkeypatch.setenv("PL_GLOBAL_SEED", str(SEED))
    model = ParityModule(n_train=16, batch_size=4)
    reference = copy.deepcopy(model)
    _reference_fit(reference, accumulate=1, epochs=1)
    backend = CountingBackend()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(devices=2, max_epochs=1, enable_checkpointing=True, default_root_dir=tmp_path,
                       callbacks=[CompileRecorder(backend, tmp_path), ckpt])
    trainer.fit(torch.compile(model, backend=backend))
    ranks = [(tmp_path / f"rank{r}.txt").read_text().split() for r in range(2)]
    assert all(int(graphs) > 0 and compiled == "True" for graphs, compiled in ranks), ranks
    assert backend.graphs == 0  # nothing was compiled on the driver
    _assert_close_params(model, reference)
    assert "training_step" not in vars(model) and "forward" not in vars(model)
    keys = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"].keys()
    assert set(keys) == set(model.state_dict()) and not any("_orig_mod" in k for k in keys)


@pytest.mark.ray
def test_validate_covers_each_sample_once(ray_cluster) -> None:
    model = ParityModule(n_eval=7)  # 7 samples, batch 4: rank 0 gets 4, rank 1 gets 3, one batch each
    trainer = _trainer(devices=2, limit_val_batches=None)
    results = trainer.validate(model, verbose=False)
    assert trainer.num_val_batches == [1]  # rank 0's count, reported to the driver (as Lightning's rank 0 reads)
    assert len(results) == 1
    r = results[0]
    assert (r["val_count"], r["val_idx_sum"], r["val_idx_sq_sum"]) == (7, 21, 91)
    # sync_dist mean: the same value as one process over all 7 samples (batch-size weighted across ranks)
    local = _trainer(devices=1, limit_val_batches=None).validate(copy.deepcopy(model), verbose=False)[0]
    assert abs(r["val_loss"] - local["val_loss"]) < 1e-6


@pytest.mark.ray
def test_predict_returns_dataset_order(ray_cluster) -> None:
    model = ParityModule(n_eval=7)
    preds = _trainer(devices=2).predict(model)
    assert torch.cat(preds).tolist() == list(range(7))


@pytest.mark.ray
def test_user_exception_reaches_the_driver(ray_cluster) -> None:
    """A ValueError in training_step on rank 1 (rank 0 waits in an all-reduce) ends the run with the user's
    exception type on the driver, not a hang."""
    with pytest.raises(ValueError, match="boom on rank 1"):
        _trainer(devices=2).fit(ParityModule(fail_on_rank=1))


@pytest.mark.ray
def test_impossible_resources_fail_before_scheduling(ray_cluster) -> None:
    with pytest.raises(MisconfigurationException, match="GPUs"):
        Trainer(accelerator="gpu", devices=2, logger=False).fit(ParityModule())
    with pytest.raises(MisconfigurationException, match="alive"):
        _trainer(devices=1, num_nodes=3).fit(ParityModule())  # one worker per node, 2 nodes
    with pytest.raises(MisconfigurationException, match="CPU"):
        _trainer(devices=3).fit(ParityModule())  # 3 x 1 CPU on a 2-CPU cluster


# --------------------------------------------------------------------------------------------------------------
# the example, as a user runs it: no RAY_ADDRESS, so it starts (and stops) a private local Ray
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.slow
def test_example_runs_on_private_local_ray(tmp_path) -> None:
    """The example as a user runs it; afterwards the process is as it was before the call (the private Ray
    instance, its threads in the driver and the environment variables ray.init set are gone)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    example = str(REPO / "examples" / "ddp_ray.py")
    program = (
        "import os, runpy, sys, threading\n"
        "env, threads = dict(os.environ), set(threading.enumerate())\n"
        f"sys.argv = [{example!r}, '--max-epochs', '1']\n"
        f"runpy.run_path({example!r}, run_name='__main__')\n"
        "import ray\n"
        # seed_everything(..., workers=True) in the example sets PL_GLOBAL_SEED/PL_SEED_WORKERS, as in Lightning
        "leaked = sorted(k for k in set(os.environ) | set(env) if os.environ.get(k) != env.get(k) "
        "and not k.startswith('PL_'))\n"
        "alive = sorted(t.name for t in set(threading.enumerate()) - threads if t.is_alive())\n"
        "print('HYGIENE', leaked, alive, ray.is_initialized())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "trained weights on the driver" in out.stdout
    assert "HYGIENE [] [] False" in out.stdout
    noisy = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if "PlacementGroupCleaner" in line or "Token authentication" in line
    ]
    assert not noisy, noisy
