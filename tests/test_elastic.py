"""Elastic training that keeps the math (raylit/distributed/elastic.py), without Ray.

* the global sampler and the plan, rank by rank (W=4, 2, 1 and the padded W=3): the same global batches, every
  sample once per epoch, loss weights that give the global mean;
* argument checks on the driver;
* the real worker body (``run_worker``) on hand-made gloo process groups: a 4-process run, a 2-process run, and a
  run resized 4 -> 2 -> 4 through resume checkpoints end at the same step with the same weights (float
  reordering tolerance), having trained the same samples in every optimizer step.

The Ray test (a lost and returned raylet) is ``test_elastic_ray.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, Dataset

from raylit import LightningModule, Trainer
from raylit.distributed.elastic import ElasticPlan, GlobalBatchSampler, elastic_train_loader
from raylit.state import TrainState
from raylit.utilities.exceptions import MisconfigurationException

# Gradients summed in another order differ in the last bits; after a few SGD steps on this model the weights of a
# 2- and a 4-process run differ by ~1e-7. 1e-5 (relative and absolute) is far below any real change of the math
# (a global batch of another size moves these weights by >1e-2).
RTOL = ATOL = 1e-5


def _sampler(n: int, bs: int, max_w: int, W: int, r: int, acc: int = 1, shuffle: bool = True,
             drop_last: bool = False) -> tuple[ElasticPlan, GlobalBatchSampler]:
    plan = ElasticPlan(max_w, W, r, acc)
    plan.sampler = GlobalBatchSampler(n, bs, plan, shuffle, seed=3, drop_last=drop_last)
    return plan, plan.sampler


def _steps(n: int, bs: int, max_w: int, W: int, acc: int = 1, epoch: int = 0, drop_last: bool = False) -> list:
    """Per optimizer step: the sorted sample ids of the global batch and the loss-weighted sum over the ranks
    of per-slot means of f(i) = i (weight / W, as DDP averages), with the padding's ids left out."""
    steps: dict[int, dict] = {}
    for r in range(W):
        plan, s = _sampler(n, bs, max_w, W, r, acc, drop_last=drop_last)
        s.set_epoch(epoch)
        for i, ids in enumerate(s):
            step = steps.setdefault(i // plan.micro_steps, {"ids": [], "mean": 0.0})
            w = plan.loss_weight(i)
            if w:
                step["ids"] += ids
            step["mean"] += w / W * (sum(ids) / len(ids))
    return [(sorted(v["ids"]), v["mean"]) for _, v in sorted(steps.items())]


@pytest.mark.parametrize("n,bs,acc,drop_last", [(64, 4, 1, False), (70, 3, 2, False), (37, 2, 1, False),
                                                (37, 2, 1, True), (10, 4, 1, False)])
def test_same_global_batches_and_global_mean_at_any_world_size(n, bs, acc, drop_last) -> None:
    full = _steps(n, bs, 4, 4, acc, drop_last=drop_last)
    for W in (2, 1, 3):
        other = _steps(n, bs, 4, W, acc, drop_last=drop_last)
        assert [ids for ids, _ in other] == [ids for ids, _ in full], W
        for (ids, mean), (_, mean_full) in zip(other, full):
            assert mean == pytest.approx(sum(ids) / len(ids)) and mean == pytest.approx(mean_full)
    used = [i for ids, _ in full for i in ids]
    assert sorted(used) == (list(range(n)) if not drop_last else sorted(used)) and len(set(used)) == len(used)
    if drop_last:
        assert len(used) == n // (bs * 4 * acc) * bs * 4 * acc


def test_epochs_differ_and_order_is_seeded() -> None:
    a, b = _steps(64, 4, 4, 4, epoch=0), _steps(64, 4, 4, 4, epoch=1)
    assert [x for x, _ in a] != [x for x, _ in b]
    assert [x for x, _ in a] == [x for x, _ in _steps(64, 4, 4, 2, epoch=0)]
    plan, s = _sampler(8, 2, 2, 2, 0, shuffle=False)
    assert list(s) == [[0, 1], [4, 5]]


def test_plan_layout_and_padding() -> None:
    assert ElasticPlan(4, 2, 1, 3).virtual_ranks() == [2, 3] and ElasticPlan(4, 2, 1, 3).micro_steps == 6
    three = ElasticPlan(4, 3, 2)
    assert three.padded and three.virtual_ranks() == [None, None] and "padding" in three.describe()
    plan, s = _sampler(16, 2, 4, 3, 2)
    assert [plan.loss_weight(i) for i in range(len(s))] == [0.0] * len(s)  # a whole padding rank: weight 0


def test_rescale_position_between_world_sizes() -> None:
    st = TrainState(epoch_batches=6, total_batches=26)  # W=2, max 4: 2 micro-batches per step, 3 steps this epoch
    st.pending_resume = {"batch_pending": (5, False, False)}
    ElasticPlan(4, 4, 0).rescale_position(st, {"elastic": {"micro_steps": 2, "max_workers": 4}})
    assert (st.epoch_batches, st.total_batches, st.pending_resume["batch_pending"]) == (3, 13, (2, False, False))
    ElasticPlan(4, 1, 0).rescale_position(st, {"elastic": {"micro_steps": 1, "max_workers": 4}})
    assert (st.epoch_batches, st.pending_resume["batch_pending"]) == (12, (11, False, False))
    with pytest.raises(MisconfigurationException, match="max_workers=8"):
        ElasticPlan(4, 1, 0).rescale_position(st, {"elastic": {"micro_steps": 1, "max_workers": 8}})


class _Ids(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


def test_loader_checks() -> None:
    plan = ElasticPlan(2, 1, 0)
    loader = elastic_train_loader(DataLoader(_Ids(10), batch_size=2, shuffle=True), plan)
    assert plan.sampler is loader.batch_sampler and len(loader) == 6  # 3 steps x 2 virtual ranks
    with pytest.raises(MisconfigurationException, match="custom sampler"):
        elastic_train_loader(DataLoader(_Ids(10), batch_size=2, sampler=list(range(10))), plan)
    with pytest.raises(MisconfigurationException, match="not a torch DataLoader"):
        elastic_train_loader([1, 2], plan)


def test_trainer_arguments() -> None:
    from ray.train import ScalingConfig

    t = Trainer(elastic=(2, 4), accelerator="cpu", logger=False)
    assert (t.config.elastic, t.config.num_workers, t.config.uses_ray) == ((2, 4), 4, True)
    t = Trainer(accelerator="cpu", logger=False, scaling_config=ScalingConfig(num_workers=(1, 2)))
    assert (t.config.elastic, t.config.num_workers) == ((1, 2), 2)
    assert Trainer(elastic=(2, 4), devices=2, num_nodes=2, accelerator="cpu").config.elastic == (2, 4)
    for kwargs, match in [
        (dict(elastic=(3, 4)), r"max_workers=4\) is not valid"),
        (dict(elastic=(0, 4)), "min_workers=0"),
        (dict(elastic=4), "elastic=4"),
        (dict(elastic=(2, 4), devices=3), "must equal max_workers=4"),
        (dict(elastic=(2, 4), limit_train_batches=5), "limit_train_batches=5"),
        (dict(elastic=(2, 4), val_check_interval=3), "val_check_interval=3"),
        (dict(elastic=(2, 4), strategy="fsdp"), "strategy='fsdp'"),
        (dict(elastic=(2, 4), scaling_config=ScalingConfig(num_workers=(1, 4))), "disagrees"),
    ]:
        with pytest.raises(MisconfigurationException, match=match):
            Trainer(accelerator="cpu", logger=False, **kwargs)


# --- the worker body on real process groups ------------------------------------------------------------------
class ElasticModel(LightningModule):
    """Deterministic (no dropout): records which samples each optimizer step trained and the per-sample loss."""

    def __init__(self, record: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
        self.record = record

    def training_step(self, batch, batch_idx):
        x, y, ids = batch
        per_sample = ((self.net(x) - y) ** 2).mean(dim=1)
        with open(f"{self.record}.{self.global_rank}", "a") as f:
            f.write(json.dumps({"step": self.global_step, "epoch": self.current_epoch, "ids": ids.tolist(),
                                "loss_sum": per_sample.sum().item()}) + "\n")
        loss = per_sample.mean()
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)]

    def train_dataloader(self):
        return DataLoader(_Ids(N), batch_size=BATCH, shuffle=True)


N, BATCH, MAX, EPOCHS = 44, 2, 4, 2  # global batch 8: 5 full steps + one of 4 samples per epoch, 12 steps


def read_records(record: str) -> list[dict]:
    rows = []
    for path in Path(record).parent.glob(Path(record).name + ".*"):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


def loss_curve(rows: list[dict]) -> dict[int, float]:
    """Mean loss over each optimizer step's global batch (0-based step), from the per-rank records."""
    sums: dict[int, list[float]] = {}
    for r in rows:
        s = sums.setdefault(r["step"], [0.0, 0])
        s[0] += r["loss_sum"]
        s[1] += len(r["ids"])
    return {k: v[0] / v[1] for k, v in sorted(sums.items())}


def _fit(world: int, rank: int, root: str, tag: str, max_steps: int = -1, ckpt: str | None = None) -> None:
    from raylit.launch.ray import run_worker
    from raylit.loggers.continuity import LoggerContinuity
    from raylit.resume import ResumeCheckpoint

    trainer = Trainer(accelerator="cpu", elastic=(1, MAX), max_epochs=EPOCHS, max_steps=max_steps, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      deterministic=True, callbacks=[ResumeCheckpoint(os.path.join(root, "resume"),
                                                                      every_n_train_steps=1, every_n_seconds=None,
                                                                      keep=100), LoggerContinuity()])
    model = ElasticModel(os.path.join(root, f"{tag}.jsonl"))
    spec = trainer._spec("fit", model, ckpt_path=ckpt)
    spec.seed, spec.cwd = "5", None
    out = run_worker(spec, "cpu", local_rank=rank)
    if rank == 0:
        torch.save({"weights": out["results"]["state_dict"], "state": out["results"]["state"],
                    "metrics": {k: float(v) for k, v in out["results"]["callback_metrics"].items()}},
                   os.path.join(root, f"{tag}.pt"))


def _entry(rank: int, world: int, init_file: str, root: str, runs: list) -> None:
    os.environ["PL_GLOBAL_SEED"] = "5"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        for tag, max_steps, ckpt in runs:
            _fit(world, rank, root, tag, max_steps, ckpt)
            dist.barrier()
    finally:
        dist.destroy_process_group()
    from test_distributed import _exit_now

    _exit_now()


def _spawn(world: int, tmp_path: Path, runs: list, name: str) -> None:
    mp.spawn(_entry, args=(world, str(tmp_path / f"pg_{name}"), str(tmp_path), runs), nprocs=world, join=True)


def test_resized_run_matches_full_size_run(tmp_path) -> None:
    """4 processes for 4 steps (to mid-epoch 1) -> 2 processes to step 9 (across the epoch boundary) -> 4 processes
    to the end, each resuming the previous part's newest resume checkpoint, against an uninterrupted 4-process
    run and a 2-process run from the start. Same global batches step by step, each sample once per epoch, same
    global_step, weights equal to float-reordering tolerance."""
    resume = tmp_path / "resume"
    _spawn(4, tmp_path, [("full", -1, None), ("part1", 4, None)], "a")
    part1_ckpt = str(resume / "resume-step=4.ckpt")
    _spawn(2, tmp_path, [("part2", 9, part1_ckpt), ("two", -1, None)], "b")
    _spawn(4, tmp_path, [("part3", -1, str(resume / "resume-step=9.ckpt"))], "c")

    full = torch.load(tmp_path / "full.pt")
    steps_per_epoch = -(-N // (BATCH * MAX))
    assert full["state"]["global_step"] == EPOCHS * steps_per_epoch
    resized = [r for tag in ("part1", "part2", "part3") for r in read_records(str(tmp_path / f"{tag}.jsonl"))]
    reference = read_records(str(tmp_path / "full.jsonl"))

    def batches(rows):
        out: dict[int, list] = {}
        for r in rows:
            out.setdefault(r["step"], []).extend(r["ids"])
        return {k: sorted(v) for k, v in out.items()}

    assert batches(resized) == batches(reference)  # the same samples in every optimizer step
    for epoch in range(EPOCHS):
        ids = sorted(i for r in resized if r["epoch"] == epoch for i in r["ids"])
        assert ids == list(range(N))  # every sample exactly once per epoch
    end = torch.load(tmp_path / "part3.pt")
    assert end["state"]["global_step"] == full["state"]["global_step"]
    for other in (end, torch.load(tmp_path / "two.pt")):
        for k, v in full["weights"].items():
            torch.testing.assert_close(other["weights"][k], v, rtol=RTOL, atol=ATOL)
        worst = max((other["weights"][k] - v).abs().max().item() for k, v in full["weights"].items())
        print(f"[elastic] max |weight - uninterrupted 4-process weight| = {worst:.2e}")
        assert other["metrics"]["train_loss"] == pytest.approx(full["metrics"]["train_loss"], rel=1e-5)
    a, b = loss_curve(resized), loss_curve(reference)
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(b[k])) for k in a)
