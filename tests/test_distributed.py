"""DistributedRuntime on two local processes (torch.multiprocessing + gloo), without Ray.

Each test spawns two processes that run one ``_check_*`` function; an assertion error in either fails the
test (torch.multiprocessing.spawn re-raises it here and terminates the other process).
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from raylit.distributed import DistributedRuntime, _equal_batch_counts, _ShardedSampler
from raylit.runtime import Runtime

WORLD = 2



def _worker_spec(trainer, fn, model, **options):
    """What the driver would hand the workers for ``trainer.<fn>(model, **options)``, seeded as on a driver."""
    spec = trainer._spec(fn, model, **options)
    spec.seed, spec.cwd = "5", None
    return spec

def _entry(rank: int, fn_name: str, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        globals()[fn_name](DistributedRuntime("cpu"), rank)
    finally:
        dist.destroy_process_group()
    _exit_now()


def _exit_now() -> None:
    """End a spawned process that finished its checks without the interpreter's teardown: under load, a C++
    thread that torch leaves behind now and then aborts it ("terminate called without an active exception",
    SIGABRT) after every check has passed. Failures still raise before this and reach the parent."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _spawn(fn_name: str, tmp_path) -> None:
    mp.spawn(_entry, args=(fn_name, str(tmp_path / "pg_init")), nprocs=WORLD, join=True)


# --- collectives ---------------------------------------------------------------------------------------------
def _check_collectives(rt: DistributedRuntime, rank: int) -> None:
    assert (rt.global_rank, rt.world_size, rt.distributed, rt.is_global_zero) == (rank, 2, True, rank == 0)
    from raylit.utilities.rank_zero import rank_zero_only

    assert rank_zero_only.rank == rank
    x = torch.tensor([1.0, 2.0]) * (rank + 1)  # rank0: [1, 2], rank1: [2, 4]
    assert torch.equal(rt.reduce(x, "mean"), torch.tensor([1.5, 3.0]))
    assert torch.equal(rt.reduce(x, "sum"), torch.tensor([3.0, 6.0]))
    assert torch.equal(rt.reduce(x, "max"), torch.tensor([2.0, 4.0]))
    assert torch.equal(rt.reduce(x, torch.min), torch.tensor([1.0, 2.0]))
    assert torch.equal(x, torch.tensor([1.0, 2.0]) * (rank + 1)), "reduce must not modify its input"
    assert rt.reduce(torch.tensor(rank), "mean").item() == 0.5  # integer mean becomes float
    assert rt.reduce(3.0, "sum").item() == 6.0
    with pytest.raises(ValueError, match="reduce_fx"):
        rt.reduce(x, "median")

    gathered = rt.all_gather(torch.full((2, 3), float(rank)))
    assert gathered.shape == (2, 2, 3) and torch.equal(gathered[1], torch.ones(2, 3))
    scalar = rt.all_gather(torch.tensor(float(rank)))
    assert torch.equal(scalar, torch.tensor([0.0, 1.0]))

    # Uneven shapes (an exactly-once eval shard): a list of per-rank tensors, trimmed correctly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uneven = rt.all_gather(torch.arange(3 + rank, dtype=torch.float32))
    assert isinstance(uneven, list) and [t.tolist() for t in uneven] == [[0, 1, 2], [0, 1, 2, 3]]

    # sync_grads: every rank computes L = sum(1 * g[0] + 10 * g[1]) with g[r] = (r + 1) * w_r; the gradient
    # reaching w_r sums dL/dg[r] over both ranks' losses: rank 0 -> 2 * 1 * 1, rank 1 -> 2 * 10 * 2.
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    g = rt.all_gather(w * (rank + 1), sync_grads=True)
    (g * torch.tensor([[1.0], [10.0]])).sum().backward()
    assert torch.allclose(w.grad, torch.full((2,), [2.0, 40.0][rank])), w.grad

    assert rt.broadcast({"a": rank}, src=1) == {"a": 1}
    assert rt.all_gather_object(("r", rank)) == [("r", 0), ("r", 1)]
    assert rt.reduce_boolean_decision(rank == 0, all=True) is False
    assert rt.reduce_boolean_decision(rank == 0, all=False) is True
    assert rt.reduce_boolean_decision(True) is True
    rt.barrier("end")


def test_collectives(tmp_path) -> None:
    _spawn("_check_collectives", tmp_path)


# --- samplers ----------------------------------------------------------------------------------------------
class _IndexDataset(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class _MyLoader(DataLoader):
    """A subclass with an extra constructor argument stored under the same name."""

    def __init__(self, dataset, tag: str, **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        self.tag = tag


class _EvenFirstSampler(Sampler):
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter(list(range(0, self.n, 2)) + list(range(1, self.n, 2)))

    def __len__(self) -> int:
        return self.n


class _Stream(IterableDataset):
    def __iter__(self):
        return iter(range(4))


def _collate_plus_1000(items):
    return torch.tensor(items) + 1000


def _epoch_indices(rt: DistributedRuntime, loader, epoch: int | None = None) -> tuple[list[list[int]], list]:
    sampler = getattr(loader, "sampler", None)
    if epoch is not None and hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    mine = [int(i) for batch in loader for i in torch.as_tensor(batch).reshape(-1)]
    return rt.all_gather_object(mine), mine


def _check_samplers(rt: DistributedRuntime, rank: int) -> None:
    os.environ["PL_GLOBAL_SEED"] = "7"
    # train: shuffled, seeded, padded to equal length, different order each epoch
    loader = DataLoader(_IndexDataset(10), batch_size=2, shuffle=False, collate_fn=_collate_plus_1000)
    train = rt.setup_dataloader(loader, "train")
    assert type(train) is DataLoader and train.collate_fn is _collate_plus_1000 and train.batch_size == 2
    assert isinstance(train.sampler, torch.utils.data.DistributedSampler) and train.sampler.seed == 7
    assert train.sampler.shuffle is True  # Lightning shuffles training data even when the user did not
    per_rank, _ = _epoch_indices(rt, train, epoch=0)
    assert len(per_rank[0]) == len(per_rank[1]) == 5
    assert sorted(per_rank[0] + per_rank[1]) == [1000 + i for i in range(10)]
    assert per_rank[0] + per_rank[1] != [1000 + i for i in range(10)]
    again, _ = _epoch_indices(rt, train, epoch=1)
    assert again != per_rank
    # the same seed in a fresh loader gives the same epoch-0 order (determinism across runs)
    fresh, _ = _epoch_indices(rt, rt.setup_dataloader(loader, "train"), epoch=0)
    assert fresh == per_rank
    # shuffle=False (overfit_batches) keeps order
    seq, _ = _epoch_indices(rt, rt.setup_dataloader(loader, "train", shuffle=False), epoch=0)
    assert seq == [[1000, 1002, 1004, 1006, 1008], [1001, 1003, 1005, 1007, 1009]]
    # uneven train set: padded so both ranks step the same number of times
    odd, _ = _epoch_indices(rt, rt.setup_dataloader(DataLoader(_IndexDataset(7), batch_size=2), "train"), 0)
    assert len(odd[0]) == len(odd[1]) == 4 and set(odd[0] + odd[1]) == set(range(7))

    # val: exactly once when batch counts are equal (7 samples, batch 4 -> 4 + 3, one batch each)
    val = rt.setup_dataloader(DataLoader(_IndexDataset(7), batch_size=4, shuffle=True), "val")
    per_rank, _ = _epoch_indices(rt, val)
    assert per_rank == [[0, 2, 4, 6], [1, 3, 5]]
    # val with unequal batch counts (5 samples, batch 2 -> 3 vs 2 batches): Lightning-style padding + warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        padded = rt.setup_dataloader(DataLoader(_IndexDataset(5), batch_size=2), "test")
    if rank == 0:
        assert any("repeated sample" in str(w.message) for w in caught)
    per_rank, _ = _epoch_indices(rt, padded)
    assert len(per_rank[0]) == len(per_rank[1]) == 3 and sorted(set(per_rank[0] + per_rank[1])) == list(range(5))
    assert _equal_batch_counts(7, 2, 4, False) and not _equal_batch_counts(5, 2, 2, False)
    assert _equal_batch_counts(5, 2, 2, True)  # 3 vs 2 samples, drop_last -> one batch each

    # predict: contiguous, exactly once, so rank-order concatenation is dataset order
    pred = rt.setup_dataloader(DataLoader(_IndexDataset(7), batch_size=2), "predict")
    per_rank, _ = _epoch_indices(rt, pred)
    assert per_rank == [[0, 1, 2, 3], [4, 5, 6]]

    # custom sampler: its order is kept and dealt out
    custom = rt.setup_dataloader(DataLoader(_IndexDataset(6), sampler=_EvenFirstSampler(6)), "val")
    per_rank, _ = _epoch_indices(rt, custom)
    assert per_rank == [[0, 4, 3], [2, 1, 5]]

    # DataLoader subclass with an extra argument: rebuilt as the same class with the same arguments
    sub = rt.setup_dataloader(_MyLoader(_IndexDataset(4), tag="x", batch_size=2, drop_last=True), "val")
    assert type(sub) is _MyLoader and sub.tag == "x" and sub.drop_last and sub.batch_size == 2
    assert _epoch_indices(rt, sub)[0] == [[0, 2], [1, 3]]

    # left alone: iterable datasets, loaders that already have a DistributedSampler, collections recurse
    stream = DataLoader(_Stream())
    assert rt.setup_dataloader(stream, "train") is stream
    mine = DataLoader(_IndexDataset(4), sampler=torch.utils.data.DistributedSampler(_IndexDataset(4), 2, rank))
    assert rt.setup_dataloader(mine, "train") is mine
    both = rt.setup_dataloader([stream, loader], "val")
    assert isinstance(both, list) and both[0] is stream and both[1] is not loader
    as_dict = rt.setup_dataloader({"a": loader}, "val")
    assert isinstance(as_dict["a"].sampler, _ShardedSampler)

    off = DistributedRuntime("cpu", use_distributed_sampler=False)
    assert off.setup_dataloader(loader, "train") is loader


def test_samplers(tmp_path) -> None:
    _spawn("_check_samplers", tmp_path)


def test_sharded_sampler_lengths() -> None:
    for n in range(12):
        for mode in ("pad", "interleave", "contiguous"):
            shards = [list(_ShardedSampler(n, 3, r, mode)) for r in range(3)]
            assert [len(_ShardedSampler(n, 3, r, mode)) for r in range(3)] == [len(s) for s in shards]
            flat = [i for s in shards for i in s]
            if mode == "pad":
                assert len({len(s) for s in shards}) == 1 and set(flat) == set(range(n))
            else:
                assert sorted(flat) == list(range(n))
            if mode == "contiguous":
                assert flat == list(range(n))  # rank order is dataset order


# --- DDP ----------------------------------------------------------------------------------------------------
class _StepModule(nn.Module):
    """A module whose training_step calls self(x), as LightningModules do."""

    def __init__(self, unused: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
        self.extra = nn.Linear(4, 1) if unused else None
        self.forward_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_calls += 1
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict:
        x, y = batch
        return {"loss": nn.functional.mse_loss(self(x), y)}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)


def _data(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)


def _train(rt: Runtime, module: nn.Module, batches: list, accumulate: int = 1) -> nn.Module:
    wrapped = rt.wrap_model(module)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    for i, batch in enumerate(batches):
        stepping = (i + 1) % accumulate == 0
        ctx = rt.no_sync(wrapped) if not stepping else torch.enable_grad()
        with ctx:
            loss = rt.call_step(wrapped, module, "training_step", batch, i)["loss"] / accumulate
            loss.backward()
        if stepping:
            opt.step()
            opt.zero_grad()
    return wrapped


def _check_ddp(rt: DistributedRuntime, rank: int) -> None:
    x, y = _data(16)

    # Reference: one process, global batch 8, same order -> 2 steps. Distributed: each rank takes its half
    # of every global batch. BatchNorm makes the check strict: with plain BN the two runs would differ
    # (per-rank batch statistics), so first train without BN sync on a BN-free copy.
    def plain() -> nn.Module:
        m = _StepModule()
        m.net[1] = nn.Identity()
        return m

    ref = plain()
    _train(Runtime(), ref, [(x[0:8], y[0:8]), (x[8:16], y[8:16])])
    mine = plain()
    shard = [(x[s + rank * 4 : s + rank * 4 + 4], y[s + rank * 4 : s + rank * 4 + 4]) for s in (0, 8)]
    wrapped = _train(rt, mine, shard)
    assert isinstance(wrapped, nn.parallel.DistributedDataParallel) and rt.unwrap_model(wrapped) is mine
    assert mine.forward_calls == 2 and "forward" not in mine.__dict__  # redirection restored forward
    for a, b in zip(ref.parameters(), mine.parameters()):
        assert torch.allclose(a, b, atol=1e-6), (a, b)

    # no_sync accumulation: 2 micro-batches of 2 per rank == one global batch of 8 in one process
    ref = plain()
    _train(Runtime(), ref, [(x[0:8], y[0:8])])
    acc = plain()
    micro = [(x[rank * 4 + k * 2 : rank * 4 + k * 2 + 2], y[rank * 4 + k * 2 : rank * 4 + k * 2 + 2]) for k in (0, 1)]
    wrapped = rt.wrap_model(acc)
    opt = torch.optim.SGD(acc.parameters(), lr=0.1)
    with rt.no_sync(wrapped):
        (rt.call_step(wrapped, acc, "training_step", micro[0], 0)["loss"] / 2).backward()
    # after the no_sync backward, grads are still rank-local (they differ between ranks)
    local = [p.grad.clone() for p in acc.parameters()]
    other = rt.all_gather_object(local)
    assert any(not torch.allclose(a, b) for a, b in zip(other[0], other[1]))
    (rt.call_step(wrapped, acc, "training_step", micro[1], 1)["loss"] / 2).backward()
    opt.step()
    for a, b in zip(ref.parameters(), acc.parameters()):
        assert torch.allclose(a, b, atol=1e-6)

    # sync_batchnorm: the BN statistics cover the global batch -> parity with one process, BN included
    ref = _StepModule()
    _train(Runtime(), ref, [(x[0:8], y[0:8]), (x[8:16], y[8:16])])
    sync_rt = DistributedRuntime("cpu", sync_batchnorm=True)
    bn_model = _StepModule()
    original_bn = bn_model.net[1]
    wrapped = _train(sync_rt, bn_model, shard)
    assert type(bn_model.net[1]).__name__ == "_CPUSyncBatchNorm"
    sync_rt.teardown()
    assert bn_model.net[1] is original_bn and type(original_bn) is nn.BatchNorm1d
    for (name, a), b in zip(ref.state_dict().items(), bn_model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name

    # find_unused_parameters: a parameter the step never touches would make plain DDP fail on step 2
    unused = _StepModule(unused=True)
    wrapped = rt.wrap_model(unused, find_unused_parameters=True)
    for i in range(2):
        rt.call_step(wrapped, unused, "training_step", shard[0], i)["loss"].backward()
    assert unused.extra.weight.grad is None

    # validation_step also runs through DDP (under no_grad) and restores forward
    with torch.no_grad():
        out = rt.call_step(wrapped, unused, "validation_step", shard[0], 0)
    assert out.dim() == 0 and "forward" not in unused.__dict__
    # predict_step bypasses DDP; a module without trainable parameters is not wrapped
    frozen = plain().requires_grad_(False)
    assert rt.wrap_model(frozen) is frozen


def test_ddp_parity_no_sync_sync_batchnorm(tmp_path) -> None:
    _spawn("_check_ddp", tmp_path)


def test_requires_initialised_group() -> None:
    with pytest.raises(RuntimeError, match="process group"):
        DistributedRuntime("cpu")


def test_import_raylit_distributed_does_not_import_ray() -> None:
    import subprocess
    import sys

    code = "import raylit, raylit.distributed, sys; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the Trainer on two processes (the launcher's worker body, without Ray) -------------------------------------
class _Rows(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(3)
        self.x, self.y = torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


def _lightning_module():
    from raylit import LightningModule

    class TwoProcModule(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y, _ = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, prog_bar=True, sync_dist=True)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y, idx = batch
            # prog_bar + sync_dist: rank 0's progress bar reads these after the sanity check, rank 1 does not
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y), prog_bar=True, sync_dist=True)
            self.log("val_count", float(len(idx)), reduce_fx="sum", sync_dist=True)

        test_step = validation_step

        def predict_step(self, batch, batch_idx):
            return batch[2]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return DataLoader(_Rows(16), batch_size=4, shuffle=True)

        def val_dataloader(self):
            return DataLoader(_Rows(7), batch_size=4)

        test_dataloader = val_dataloader

        def predict_dataloader(self):
            return DataLoader(_Rows(9), batch_size=2)

    TwoProcModule.__module__ = __name__
    return TwoProcModule()


def _check_trainer(rt: DistributedRuntime, rank: int) -> None:
    import io
    import sys

    from raylit import Trainer
    from raylit.launch.ray import run_worker

    out = sys.stdout = io.StringIO()  # keep the progress bar out of the test log
    try:
        model = _lightning_module()
        trainer = Trainer(
            accelerator="cpu",
            devices=2,
            max_epochs=2,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=True,
            num_sanity_val_steps=2,
        )
        fit = run_worker(_worker_spec(trainer, "fit", model), "cpu", local_rank=rank)
        assert (fit is None) == (rank == 1)
        if rank == 0:
            assert fit["results"]["state"]["global_step"] == 4  # 16 samples / 2 ranks / batch 4, 2 epochs
            assert fit["results"]["callback_metrics"]["val_count"].item() == 7  # each val sample once
        for fn, check in (
            ("validate", lambda o: o[0]["val_count"] == 7),
            ("test", lambda o: o[0]["val_count"] == 7),
            ("predict", lambda o: torch.cat(o).tolist() == list(range(9))),  # dataset order, 5 + 4 samples
        ):
            got = run_worker(_worker_spec(trainer, fn, model), "cpu", local_rank=rank)
            if rank == 0:
                assert check(got["output"]), (fn, got["output"])
    finally:
        sys.stdout = sys.__stdout__
    assert "val_loss" in out.getvalue() or rank == 1


def test_trainer_on_two_processes(tmp_path) -> None:
    """fit (with sanity check and a rank-0 progress bar over sync_dist metrics: the case that used to abort
    with a collective mismatch), validate, test and predict through ``run_worker``."""
    _spawn("_check_trainer", tmp_path)


# --- time-based decisions ---------------------------------------------------------------------------------------
def _check_shared_deadline(rt: DistributedRuntime, rank: int) -> None:
    import time

    from raylit import Callback, Trainer
    from raylit.launch.ray import run_worker
    from raylit.utilities.clock import SharedDeadline

    # the ranks' clocks disagree (as after a slow first batch on one of them): rank 0's decides for both
    for rank0_due in (True, False):
        deadline = SharedDeadline(10.0)
        own_due = rank0_due if rank == 0 else not rank0_due
        deadline._start = time.monotonic() - (100.0 if own_due else -100.0)
        answers = [deadline.due(count, rt) for count in range(6)]
        everyone = rt.all_gather_object(answers)
        assert everyone[0] == everyone[1], everyone
        assert any(answers) == rank0_due, answers

    # a time-based val_check_interval: every rank validates at the same batches (0 s: after every batch)
    class CountValidations(Callback):
        def __init__(self):
            self.ends = []

        def on_validation_end(self, trainer, pl_module):
            self.ends.append(trainer.global_step)

    counter = CountValidations()
    trainer = Trainer(accelerator="cpu", devices=2, max_epochs=2, logger=False, enable_checkpointing=False,
                      enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0,
                      val_check_interval="00:00:00:00", callbacks=[counter])
    run_worker(_worker_spec(trainer, "fit", _lightning_module()), "cpu", local_rank=rank)
    ends = rt.all_gather_object(counter.ends)
    assert ends[0] == ends[1] == [1, 2, 3, 4], ends  # 2 batches per rank and epoch, 2 epochs


def test_time_based_decisions_follow_rank_zero(tmp_path) -> None:
    """``SharedDeadline`` (time-based val_check_interval, ResumeCheckpoint(every_n_seconds)) gives every rank
    rank 0's answer, so a collective that follows it cannot hang on a rank whose clock disagrees."""
    _spawn("_check_shared_deadline", tmp_path)
