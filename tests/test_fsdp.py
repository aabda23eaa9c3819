"""``Trainer(strategy="fsdp")``: FSDP2 on two local processes (torch.multiprocessing + gloo, CPU), without Ray.

One spawn runs every two-process check (starting processes is the expensive part on a small machine); the
parent process computes the one-process references and checks what the FSDP run wrote:

* parity: FSDP's final weights == one process with the same global batch == DDP (float tolerance);
* checkpoints: full, plain tensors in the one-process layout (optimizer state keyed by index); they load in
  ``load_from_checkpoint`` and resume a plain one-process Trainer; an FSDP run resumed from a mid-epoch
  checkpoint ends where the uninterrupted run ends;
* after ``fit`` every rank's module is an ordinary module again (full weights, original class);
* the runtime alone: nested sharding units, parameters held by the root, ``no_sync`` accumulation.
"""

from __future__ import annotations

import io
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_distributed import _exit_now
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

import raylit
from raylit.runtime import Runtime

WORLD = 2
QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False)


# --- model and data (module level: the spawned processes import them) -----------------------------------------
class _Rows(Dataset):
    def __init__(self, n: int, seed: int = 3) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x, self.y = torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class _InOrder(Sampler):
    """Dataset order. Not a plain Sequential/RandomSampler, so raylit deals it out (rank r gets items r, r+2, ...)
    instead of shuffling: a per-rank batch of 4 then holds half of the one-process batch of 8, exactly."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


class FSDPModel(raylit.LightningModule):
    """Blocks in an nn.ModuleList (the default policy shards each on its own), a parameter on the root, odd
    sizes (5 rows over 2 ranks: uneven shards; a 1-row bias: one rank's shard is empty) and Adam (state that is
    sharded like the parameters)."""

    def __init__(self, lr: float = 0.05, batch_size: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([nn.Linear(4, 5), nn.Linear(5, 1)])
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[1](torch.tanh(self.blocks[0](x))) * self.scale.mean()

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self):
        return DataLoader(_Rows(16), batch_size=self.hparams.batch_size, sampler=_InOrder(16))

    def val_dataloader(self):
        return DataLoader(_Rows(8, seed=4), batch_size=4)



def _worker_spec(trainer, fn, model, **options):
    """What the driver would hand the workers for ``trainer.<fn>(model, **options)``, seeded as on a driver."""
    spec = trainer._spec(fn, model, **options)
    spec.seed, spec.cwd = "5", None
    return spec

def _trainer(**kwargs) -> raylit.Trainer:
    # gradient clipping: the norm is over the whole (sharded) gradient, so it must match one process too
    return raylit.Trainer(**{"accelerator": "cpu", "max_epochs": 2, "num_sanity_val_steps": 1,
                             "gradient_clip_val": 0.5, **QUIET, **kwargs})


# name: (Trainer arguments, optimizer steps, tolerance vs one process). bf16-mixed: autocast around the step,
# parameters, gradients and their reduction stay fp32; with gradient accumulation (FSDP's reduce-scatter is off
# on the first micro-batch of each step). *-true: parameters (and so shards and gathers) in that dtype.
PRECISION_RUNS = {
    "bf16-mixed": ({"precision": "bf16-mixed", "accumulate_grad_batches": 2}, 2, 1e-3),
    "64-true": ({"precision": "64-true"}, 4, 1e-9),
    "bf16-true": ({"precision": "bf16-true"}, 4, 2e-2),
}


def _plain_sd(sd: dict) -> dict:
    return {k: v.detach().clone() for k, v in sd.items()}


def _assert_close(a: dict, b: dict, what: str, atol: float = 1e-5) -> None:
    assert list(a) == list(b), (what, list(a), list(b))
    for k in a:
        assert type(b[k]) is torch.Tensor and type(a[k]) is torch.Tensor, (what, k, type(a[k]), type(b[k]))
        assert torch.allclose(a[k], b[k], atol=atol), (what, k, a[k], b[k])


# --- the two-process part ----------------------------------------------------------------------------------------
def _entry(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    sys.stdout = io.StringIO()  # keep the Trainer's messages out of the test log
    try:
        _check_runtime(rank)
        _check_trainer(rank, out_dir)
    finally:
        sys.stdout = sys.__stdout__
        dist.destroy_process_group()
    _exit_now()


def _fit(rank: int, strategy: str, callbacks=(), ckpt_path=None, **trainer_kwargs):
    from raylit.launch.ray import run_worker

    model = FSDPModel()
    trainer = _trainer(devices=2, strategy=strategy, callbacks=list(callbacks), enable_checkpointing=bool(callbacks),
                       **trainer_kwargs)
    out = run_worker(_worker_spec(trainer, "fit", model, ckpt_path=ckpt_path), "cpu", local_rank=rank)
    assert (out is None) == (rank != 0)
    # Every rank's module is ordinary again after fit: original class, full plain parameters.
    assert type(model) is FSDPModel and type(model.blocks[0]) is nn.Linear
    assert all(type(p) is nn.Parameter and type(p.data) is torch.Tensor for p in model.parameters())
    assert model.blocks[0].weight.shape == (5, 4)
    return model, out


def _check_summary_with_example_input(rank: int) -> None:
    """ModelSummary's example forward is a collective under FSDP: it runs on every rank (rank 0 alone used to
    wait forever), and only rank 0 reports the table."""
    from raylit.callbacks import ModelSummary
    from raylit.launch.ray import run_worker

    tables = []

    class Capture(ModelSummary):
        @staticmethod
        def summarize(summary_data, *args, **kwargs):
            tables.append(dict(summary_data))

    model = FSDPModel()
    model.example_input_array = torch.zeros(3, 4)
    trainer = _trainer(devices=2, strategy="fsdp", max_epochs=1, limit_train_batches=1, callbacks=[Capture()])
    run_worker(_worker_spec(trainer, "fit", model), "cpu", local_rank=rank)
    if rank == 0:
        assert len(tables) == 1 and "Out sizes" in tables[0], tables  # the example forward ran
    else:
        assert tables == []


def _check_trainer(rank: int, out_dir: str) -> None:
    from raylit.callbacks import ModelCheckpoint

    ckpt_dir = os.path.join(out_dir, "ckpts")
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    fsdp_model, fsdp = _fit(rank, "fsdp", callbacks=[ckpt])
    everyone = [None, None]
    dist.all_gather_object(everyone, _plain_sd(fsdp_model.state_dict()))
    _assert_close(everyone[0], everyone[1], "ranks hold the same full weights after fit", atol=0)

    _, ddp = _fit(rank, "ddp")
    _check_summary_with_example_input(rank)
    # Resume FSDP from the mid-epoch checkpoint after step 1 of 4 (epoch 0, batch 1 of 2).
    _, resumed = _fit(rank, "fsdp", ckpt_path=os.path.join(ckpt_dir, "step=1.ckpt"))
    runs = [("fsdp", fsdp), ("ddp", ddp), ("resumed", resumed)]
    runs += [(name, _fit(rank, "fsdp", **kwargs)[1]) for name, (kwargs, _, _) in PRECISION_RUNS.items()]
    if rank == 0:
        results = {name: out["results"] for name, out in runs}
        torch.save({k: {"state_dict": _plain_sd(r["state_dict"]), "global_step": r["state"]["global_step"],
                        "val_loss": r["callback_metrics"]["val_loss"]} for k, r in results.items()},
                   os.path.join(out_dir, "results.pt"))


def _check_runtime(rank: int) -> None:
    """FSDPRuntime without the Trainer: explicit wrap policy, parity with one process, no_sync accumulation,
    full checkpoint state on rank 0, optimizer state sliced back on load, teardown, and sharding twice."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from raylit.distributed.fsdp import FSDPRuntime

    data = _Rows(16)
    x, y = data.x, data.y

    def step(rt, module, batch, i):
        return nn.functional.mse_loss(rt.call_step(module, module, "training_step", batch, i)[0], batch[1])

    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 1))
            self.scale = nn.Parameter(torch.ones(1))

        def training_step(self, batch, i):  # does NOT call self(x): the root's hooks must still run
            return (self.net(batch[0]) * self.scale,)

    # reference: one process, global batch 8, 2 steps, SGD+momentum
    ref = Plain()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for i, s in enumerate((0, 8)):
        step(Runtime(), ref, (x[s : s + 8], y[s : s + 8]), i).backward()
        opt.step()
        opt.zero_grad()

    rt = FSDPRuntime("cpu", auto_wrap_policy={nn.Linear})
    mine = Plain()
    wrapped = rt.wrap_model(mine)
    assert wrapped is mine and rt.unwrap_model(wrapped) is mine
    assert isinstance(mine, FSDPModule) and isinstance(mine.net[0], FSDPModule) and not isinstance(mine.net, FSDPModule)
    assert isinstance(mine.net[0].weight, DTensor) and mine.net[0].weight.to_local().shape == ((3, 4), (2, 4))[rank]
    opt = torch.optim.SGD(mine.parameters(), lr=0.1, momentum=0.9)
    # accumulation: step 0 as two micro-batches of 2 per rank under no_sync (no reduce-scatter), then a full one
    micro = [(x[rank * 4 + k * 2 : rank * 4 + k * 2 + 2], y[rank * 4 + k * 2 : rank * 4 + k * 2 + 2]) for k in (0, 1)]
    with rt.no_sync(mine):
        (step(rt, mine, micro[0], 0) / 2).backward()
    (step(rt, mine, micro[1], 0) / 2).backward()
    opt.step()
    opt.zero_grad()
    step(rt, mine, (x[8 + rank * 4 : 12 + rank * 4], y[8 + rank * 4 : 12 + rank * 4]), 1).backward()
    opt.step()

    full = rt.model_state_dict(mine)
    osd = rt.optimizer_state_dict(mine, opt)
    plain_osd = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    if rank == 0:
        _assert_close(ref.state_dict(), full, "FSDPRuntime parity with one process (no_sync accumulation)")
        assert sorted(osd["state"]) == list(range(5)) and osd["param_groups"] == plain_osd.state_dict()["param_groups"]
        assert all(type(v) is torch.Tensor for s in osd["state"].values() for v in s.values() if v is not None)
    else:
        assert full == {} and osd["state"] == {}

    # load the full optimizer state back: each rank keeps its slice, equal to what it had
    full_osd = [osd]
    dist.broadcast_object_list(full_osd, src=0)
    before = {i: s["momentum_buffer"].to_local().clone() for i, s in opt.state_dict()["state"].items()}
    fresh = torch.optim.SGD(mine.parameters(), lr=0.1, momentum=0.9)
    rt.load_optimizer_state_dict(mine, fresh, full_osd[0])
    for i, s in fresh.state_dict()["state"].items():
        assert isinstance(s["momentum_buffer"], DTensor) and torch.equal(s["momentum_buffer"].to_local(), before[i])

    # teardown: an ordinary module with the full trained weights on every rank, and it can be sharded again
    rt.teardown()
    assert type(mine) is Plain and type(mine.net[0]) is nn.Linear
    assert not any(isinstance(p, DTensor) for p in mine.parameters())
    _assert_close(ref.state_dict(), mine.state_dict(), "weights after teardown")
    out = mine.training_step((x[:2], y[:2]), 0)[0]  # no hooks left: runs without collectives
    assert out.shape == (2, 1)
    rt2 = FSDPRuntime("cpu")
    rt2.wrap_model(mine)
    assert isinstance(mine, FSDPModule) and not isinstance(mine.net[0], FSDPModule)  # default policy: root only
    step(rt2, mine, (x[:4], y[:4]), 0).backward()
    rt2.teardown()
    assert type(mine) is Plain


# --- tests ---------------------------------------------------------------------------------------------------------
def test_fsdp_two_processes(tmp_path) -> None:
    """FSDP parity (one process, DDP), full checkpoints that load anywhere, exact resume, plain module after
    fit; plus the runtime's own checks (see _check_runtime)."""
    mp.spawn(_entry, args=(str(tmp_path / "pg_init"), str(tmp_path)), nprocs=WORLD, join=True)
    got = torch.load(tmp_path / "results.pt", weights_only=True)

    # one process, the same global batch (8 = 2 ranks x 4): the same 4 optimizer steps
    raylit.seed_everything(5, verbose=False)
    single = FSDPModel(batch_size=8)
    single_trainer = _trainer(devices=1, enable_checkpointing=False)
    single_trainer.fit(single)
    reference = _plain_sd(single.state_dict())
    assert got["fsdp"]["global_step"] == 4
    _assert_close(reference, got["fsdp"]["state_dict"], "FSDP vs one process")
    _assert_close(got["ddp"]["state_dict"], got["fsdp"]["state_dict"], "FSDP vs DDP")
    assert torch.allclose(got["fsdp"]["val_loss"], single_trainer.callback_metrics["val_loss"], atol=1e-5)
    _assert_close(got["fsdp"]["state_dict"], got["resumed"]["state_dict"], "resumed FSDP vs uninterrupted", atol=1e-6)
    assert got["resumed"]["global_step"] == 4

    for name, (kwargs, steps, atol) in PRECISION_RUNS.items():
        raylit.seed_everything(5, verbose=False)
        single_p = FSDPModel(batch_size=8)
        _trainer(devices=1, enable_checkpointing=False, **kwargs).fit(single_p)
        assert got[name]["global_step"] == steps
        assert got[name]["state_dict"]["scale"].dtype == single_p.scale.dtype
        _assert_close(_plain_sd(single_p.state_dict()), got[name]["state_dict"], name, atol=atol)

    # The FSDP checkpoint has the one-process layout: full plain tensors, optimizer state keyed by index.
    fsdp_ckpt = torch.load(tmp_path / "ckpts" / "step=4.ckpt", weights_only=True)
    plain_path = tmp_path / "single.ckpt"
    single_trainer.save_checkpoint(plain_path)
    plain_ckpt = torch.load(plain_path, weights_only=True)
    assert set(fsdp_ckpt) == set(plain_ckpt) - {"callbacks"} | ({"callbacks"} & set(fsdp_ckpt))
    _assert_close(plain_ckpt["state_dict"], fsdp_ckpt["state_dict"], "checkpointed weights")
    fsdp_opt, plain_opt = fsdp_ckpt["optimizer_states"][0], plain_ckpt["optimizer_states"][0]
    assert fsdp_opt["param_groups"] == plain_opt["param_groups"] and list(fsdp_opt["state"]) == [0, 1, 2, 3, 4]
    for i, state in plain_opt["state"].items():
        _assert_close(state, fsdp_opt["state"][i], f"Adam state of parameter {i}")

    # load_from_checkpoint, and a plain one-process run resumed from the FSDP run's mid-epoch checkpoint
    loaded = FSDPModel.load_from_checkpoint(tmp_path / "ckpts" / "step=4.ckpt")
    _assert_close(got["fsdp"]["state_dict"], loaded.state_dict(), "load_from_checkpoint")
    raylit.seed_everything(5, verbose=False)
    plain_resume = FSDPModel(batch_size=8)
    _trainer(devices=1, enable_checkpointing=False).fit(plain_resume, ckpt_path=tmp_path / "ckpts" / "step=1.ckpt")
    _assert_close(reference, _plain_sd(plain_resume.state_dict()), "one-process resume from an FSDP checkpoint")


def test_fsdp_on_one_device_runs_unsharded_in_process() -> None:
    """devices=1: one process, nothing to shard; raylit runs the plain in-process loop (same numbers as
    Lightning's one-device FSDP) without starting Ray or torch.distributed."""
    raylit.seed_everything(5, verbose=False)
    model = FSDPModel(batch_size=8)
    trainer = _trainer(devices=1, strategy="fsdp", enable_checkpointing=False)
    trainer.fit(model)
    assert trainer.global_step == 4 and not dist.is_initialized()
    assert type(trainer._runtime) is Runtime


def test_fsdp_is_accepted_by_the_ray_launch_plan() -> None:
    from raylit.launch.resources import plan

    assert plan(_trainer(devices=2, strategy="fsdp")).num_workers == 2


@pytest.mark.ray
@pytest.mark.slow  # ~60 s on a busy 2-core machine (Ray Train worker start-up), plus the cluster's start
def test_fsdp_on_ray_workers(ray_cluster) -> None:
    """Through the real launcher: two Ray Train workers pick FSDPRuntime; the driver's model ends with the
    full, plain weights of the one-process run."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    try:
        model = FSDPModel()
        _trainer(devices=2, strategy="fsdp", enable_checkpointing=False).fit(model)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    single = FSDPModel(batch_size=8)
    _trainer(devices=1, enable_checkpointing=False).fit(single)
    assert type(model) is FSDPModel and all(type(p.data) is torch.Tensor for p in model.parameters())
    _assert_close(_plain_sd(single.state_dict()), _plain_sd(model.state_dict()), "FSDP on Ray vs one process")
