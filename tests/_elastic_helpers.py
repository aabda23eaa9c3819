"""Model, data, records and pause points for the elastic tests (test_elastic.py, test_elastic_ray.py) and
benchmarks/bench_elastic.py. Ray workers cannot import this module by name: callers register it with
``cloudpickle.register_pickle_by_value``.

The model is deterministic (no dropout): what an elastic run may change is only the float summation order.
Every rank appends one JSON line per micro-batch to ``<record>.<rank>``: the optimizer step it belongs to, the
epoch, the world size, the process, the sample ids and the sum of the per-sample losses, from which the tests
rebuild each optimizer step's global batch and its mean loss.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from raylit import LightningModule
from raylit.callbacks import Callback


class Ids(Dataset):
    """A small regression problem; items are (x, y, sample id)."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


class ElasticModel(LightningModule):
    """Deterministic (no dropout); SGD with momentum and a per-step LR schedule (state a resume must carry)."""

    def __init__(self, record: str, n: int, batch_size: int, lr: float = 0.1, dropout: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, 1))
        self.record, self.n, self.batch_size, self.lr = record, n, batch_size, lr

    def on_train_start(self) -> None:
        self.start_step = self.global_step  # identifies the attempt (each restores a newer checkpoint)
        self.estimated = self.trainer.estimated_stepping_batches  # optimizer steps of the whole fit, at any W

    def training_step(self, batch, batch_idx):
        x, y, ids = batch
        per_sample = ((self.net(x) - y) ** 2).mean(dim=1)
        row = {
            "step": self.global_step,
            "epoch": self.current_epoch,
            "ws": self.trainer.world_size,
            "pid": os.getpid(),
            "start": self.start_step,
            "estimated": self.estimated,
            "time": time.time(),
            "ids": ids.tolist(),
            "loss_sum": per_sample.sum().item(),
        }
        with open(f"{self.record}.{self.global_rank}", "a") as f:
            f.write(json.dumps(row) + "\n")
        loss = per_sample.mean()
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        # stepped every 2nd optimizer step: counted in full-size batches at any world size
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.8)
        return [opt], [{"scheduler": sched, "interval": "step", "frequency": 2}]

    def train_dataloader(self):
        return DataLoader(Ids(self.n), batch_size=self.batch_size, shuffle=True)


def read_records(record: str) -> list[dict]:
    rows = []
    for path in sorted(Path(record).parent.glob(Path(record).name + ".*")):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


def effective(rows: list[dict]) -> list[dict]:
    """The rows whose results the run kept: a step trained by several attempts (a restore from an older
    checkpoint trains the lost attempt's last steps again) counts from the attempt that started last."""
    latest: dict[int, int] = {}
    for r in rows:
        latest[r["step"]] = max(latest.get(r["step"], -1), r["start"])
    return [r for r in rows if r["start"] == latest[r["step"]]]


def batches(rows: list[dict]) -> dict[int, list[int]]:
    """Sorted sample ids of each optimizer step's global batch."""
    out: dict[int, list[int]] = {}
    for r in rows:
        out.setdefault(r["step"], []).extend(r["ids"])
    return {k: sorted(v) for k, v in sorted(out.items())}


def loss_curve(rows: list[dict]) -> dict[int, float]:
    """Mean loss over each optimizer step's global batch."""
    sums: dict[int, list[float]] = {}
    for r in rows:
        s = sums.setdefault(r["step"], [0.0, 0])
        s[0] += r["loss_sum"]
        s[1] += len(r["ids"])
    return {k: v[0] / v[1] for k, v in sorted(sums.items())}


class PauseAt(Callback):
    """Rank 0 of a ``world_size``-worker attempt stops after optimizer step ``step`` (once the resume checkpoint
    of ``ckpt_step`` is complete), writes ``marker`` and waits -- for ``release`` or for Ray to end the process
    (a lost node, a resize). The other ranks wait in their next collective. Fires once (the marker)."""

    def __init__(
        self, marker: str, world_size: int, step: int, resume_file: str, release: str, timeout_s: float = 300
    ) -> None:
        self.marker, self.world_size, self.step = marker, world_size, step
        self.resume_file, self.release, self.timeout_s = resume_file, release, timeout_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (
            trainer.global_rank != 0
            or trainer.world_size != self.world_size
            or trainer.global_step != self.step
            or os.path.exists(self.marker)
        ):
            return
        deadline = time.monotonic() + self.timeout_s
        while not os.path.exists(self.resume_file) and time.monotonic() < deadline:
            time.sleep(0.01)
        import raylit

        Path(self.marker).write_text(
            json.dumps({"time": time.time(), "step": trainer.global_step, "raylit": raylit.__file__})
        )
        while not os.path.exists(self.release) and time.monotonic() < deadline:
            time.sleep(0.05)


# --- the worker body on hand-made gloo process groups (no Ray) ---------------------------------------------------
def trainer_args(root: str, epochs: int, max_workers: int, every: int = 1, resume_name: str = "resume") -> dict:
    from raylit.loggers.continuity import LoggerContinuity
    from raylit.resume import ResumeCheckpoint

    resume = ResumeCheckpoint(
        os.path.join(root, resume_name), every_n_train_steps=every, every_n_seconds=None, keep=100
    )
    return dict(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        callbacks=[resume, LoggerContinuity()],
        elastic=(1, max_workers),
    )


def _fit(rank: int, root: str, cfg: dict, tag: str, max_steps: int, ckpt: str | None) -> None:
    from raylit import Trainer
    from raylit.launch.ray import run_worker

    kwargs = trainer_args(root, cfg["epochs"], cfg["max_workers"], resume_name=cfg.get("resume", "resume"))
    if not cfg.get("elastic", True):  # raylit without elastic=: the per-worker batch stays, the global one changes
        kwargs.pop("elastic")
        kwargs["devices"] = 2
    trainer = Trainer(max_steps=max_steps, **kwargs)
    model = ElasticModel(os.path.join(root, f"{tag}.jsonl"), cfg["n"], cfg["batch"], dropout=cfg.get("dropout", 0.0))
    spec = trainer._spec("fit", model, ckpt_path=ckpt)
    spec.seed, spec.cwd = "5", None
    out = run_worker(spec, "cpu", local_rank=rank)
    if rank == 0:
        torch.save(
            {
                "weights": out["results"]["state_dict"],
                "state": out["results"]["state"],
                "metrics": {k: float(v) for k, v in out["results"]["callback_metrics"].items()},
            },
            os.path.join(root, f"{tag}.pt"),
        )


def _entry(rank: int, world: int, init_file: str, root: str, cfg: dict, runs: list) -> None:
    import torch.distributed as dist

    os.environ["PL_GLOBAL_SEED"] = "5"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        for tag, max_steps, ckpt, *overrides in runs:
            _fit(rank, root, {**cfg, **(overrides[0] if overrides else {})}, tag, max_steps, ckpt)
            dist.barrier()
    finally:
        dist.destroy_process_group()
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as test_distributed._exit_now: skip the interpreter teardown that torch sometimes aborts


def spawn(world: int, root: str, cfg: dict, runs: list[tuple], name: str) -> None:
    """Run ``runs`` ((tag, max_steps, ckpt_path[, cfg overrides]), one after the other) on ``world`` processes; each saves
    ``<root>/<tag>.pt`` (weights, state, metrics) and records ``<root>/<tag>.jsonl.<rank>``."""
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(world, os.path.join(root, f"pg_{name}"), root, cfg, runs), nprocs=world, join=True)
