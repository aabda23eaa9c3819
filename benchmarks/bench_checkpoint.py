"""How long a checkpoint stops training: raylit with synchronous and background writes, Lightning, and a plain
synchronous ``torch.save`` of the same checkpoint dict; local files and ``s3://`` (moto's S3 server on loopback).

    .venv/bin/python benchmarks/bench_checkpoint.py [--steps 60] [--every 10] [--hidden 2048] [--s3] [--only NAME]

One process, CPU. The model is an MLP (1024 -> hidden -> hidden -> 1024, ~8.4 M parameters at hidden=2048) trained
with Adam, so a checkpoint holds ~101 MB of tensors (weights + Adam's two moments). Every ``--every`` optimizer
steps a checkpoint is written (``ModelCheckpoint(every_n_train_steps=...)``, keeping the newest; or raylit's
``ResumeCheckpoint``). A callback placed first records the time at every ``on_train_batch_start``, so the
interval between two starts is one whole training iteration, hooks and checkpointing included.

- *blocking*: median over the checkpoints of the wall time spent in the checkpoint callback's
  ``on_train_batch_end`` when it saved: the time training stood still for the checkpoint (measured inside the
  hook, so the noise of the training step on a busy machine stays out of it).
- *iteration - normal*: the same from the iteration clock: (the iteration that saved) - (median iteration
  without a save); noisy when the machine is loaded.
- *after*: the extra time of the ``every - 1`` iterations that follow a save, summed (the background thread
  competes with training for the CPU cores; on a 2-core machine this is where an async write costs).
- *plain save*: at every checkpoint step, just before the checkpoint callback runs, ``torch.save`` of the dict the
  framework builds at that moment, to a local file (no fsync), or to memory then one upload for ``s3://`` (file
  removed again). Blocking is divided by the plain save of the same step (both under the same machine load); the
  median of those ratios is the result. Goal: <= 0.2.

Lightning variants: its ``ModelCheckpoint`` (synchronous) and the same with its ``AsyncCheckpointIO`` plugin
(clones the tensors on the training thread, writes in a thread). Lightning on ``s3://`` needs ``s3fs`` and is
skipped when it is missing. Absolute numbers depend on the machine's load; the load average is printed.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

WIDTH = 1024


def make_loader(steps: int, batch: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * batch, WIDTH, generator=g)
    return DataLoader(TensorDataset(x, x.clone()), batch_size=batch)


def module_class(pl) -> type:
    class Net(pl.LightningModule):
        def __init__(self, hidden: int, loader: DataLoader) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(
                nn.Linear(WIDTH, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, WIDTH)
            )
            self.loader = loader

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-4)

        def train_dataloader(self):
            return self.loader

    return Net


def clock_class(pl) -> type:
    class Clock(pl.Callback):
        """Placed first: times every iteration and, at each checkpoint step (before the checkpoint callback,
        which runs last), a plain ``torch.save`` of the checkpoint dict the framework builds at that moment, so
        that every blocking time has a reference measured under the same machine load."""

        def __init__(self, every: int = 0, scratch: str = "") -> None:
            self.starts: list[float] = []
            self.every, self.scratch = every, scratch
            self.plain: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.every and trainer.global_step % self.every == 0:
                if hasattr(trainer, "_checkpoint_connector"):  # Lightning
                    ckpt = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
                else:
                    from raylit.checkpoint import dump_checkpoint

                    ckpt = dump_checkpoint(trainer)
                self.plain.append(plain_save(ckpt, self.scratch))

        def on_train_end(self, trainer, pl_module):
            self.starts.append(time.perf_counter())

    return Clock


def timed(cls: type, every: int, record: list[float]) -> type:
    """``cls`` whose ``on_train_batch_end`` records its duration at the steps where it saves."""

    def on_train_batch_end(self, trainer, *args, **kwargs):
        t = time.perf_counter()
        cls.on_train_batch_end(self, trainer, *args, **kwargs)
        if trainer.global_step % every == 0:
            record.append(time.perf_counter() - t)

    return type(cls.__name__, (cls,), {"on_train_batch_end": on_train_batch_end})


def summarise(starts: list[float], every: int) -> dict[str, float]:
    """Iteration i (1-based: it ends with global_step == i) lasted starts[i] - starts[i-1]."""
    iters = {i: starts[i] - starts[i - 1] for i in range(1, len(starts))}
    saved = [i for i in iters if i % every == 0 and i + every - 1 in iters]
    skip = 3  # warm-up iterations
    normal = statistics.median(t for i, t in iters.items() if i > skip and i % every != 0)
    blocking = statistics.median(iters[i] - normal for i in saved)
    after = statistics.median(sum(iters[i + k] - normal for k in range(1, every)) for i in saved)
    return {"normal_ms": normal * 1e3, "iter_blocking_ms": blocking * 1e3, "after_ms": after * 1e3,
            "saves": len(saved)}


def plain_save(ckpt: dict, path: str) -> float:
    """Seconds for a plain synchronous ``torch.save`` of ``ckpt``: to a local file (no fsync), or into memory and
    one upload for ``s3://``. The file is removed afterwards."""
    from raylit import fs

    t = time.perf_counter()
    if fs.is_remote(path):
        out = io.BytesIO()
        torch.save(ckpt, out)
        fs.write_bytes_atomic(out.getbuffer(), path)
    else:
        torch.save(ckpt, path)
    elapsed = time.perf_counter() - t
    fs.remove(path)
    return elapsed


def run_variant(name: str, dirpath: str, steps: int, every: int, hidden: int, batch: int) -> dict[str, float]:
    lightning = name.startswith("lightning")
    if lightning:
        import pytorch_lightning as pl
        from pytorch_lightning.callbacks import ModelCheckpoint
    else:
        import raylit as pl
        from raylit.callbacks import ModelCheckpoint
        from raylit.resume import ResumeCheckpoint
    scratch = dirpath.rstrip("/") + "-plain.ckpt"
    if "://" not in scratch:
        os.makedirs(os.path.dirname(scratch), exist_ok=True)
    clock = clock_class(pl)(every, scratch)
    kwargs: dict = {}
    hook: list[float] = []
    if name.startswith("raylit-resume"):
        saver = timed(ResumeCheckpoint, every, hook)(dirpath=dirpath, every_n_train_steps=every, every_n_seconds=None, keep=1,
                                 async_save=name.endswith("async"))
        kwargs["enable_checkpointing"] = False
    elif lightning:
        saver = timed(ModelCheckpoint, every, hook)(dirpath=dirpath, every_n_train_steps=every, save_top_k=1)
        if name.endswith("async"):
            from pytorch_lightning.plugins.io import AsyncCheckpointIO

            kwargs["plugins"] = [AsyncCheckpointIO()]
    else:
        saver = timed(ModelCheckpoint, every, hook)(dirpath=dirpath, every_n_train_steps=every, save_top_k=1,
                                                    async_save=name.endswith("async"))
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, num_sanity_val_steps=0, callbacks=[clock, saver], **kwargs)
    t0 = time.perf_counter()
    trainer.fit(module_class(pl)(hidden, make_loader(steps, batch)))
    wall = time.perf_counter() - t0
    ratios = [h / p for h, p in zip(hook, clock.plain)]
    return {**summarise(clock.starts, every), "blocking_ms": statistics.median(hook) * 1e3,
            "max_blocking_ms": max(hook) * 1e3, "plain_ms": statistics.median(clock.plain) * 1e3,
            "ratio": statistics.median(ratios), "max_ratio": max(ratios), "wall_s": wall}


def checkpoint_size(hidden: int, batch: int) -> dict[str, float]:
    """Size of the checkpoint raylit writes for this model after a few Adam steps."""
    import raylit
    from raylit.checkpoint import dump_checkpoint

    holder = {}

    class Grab(raylit.Callback):
        def on_train_end(self, trainer, pl_module):
            holder["ckpt"] = dump_checkpoint(trainer)

    trainer = raylit.Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             enable_checkpointing=False, callbacks=[Grab()])
    trainer.fit(module_class(raylit)(hidden, make_loader(3, batch)))
    buf = io.BytesIO()
    torch.save(holder["ckpt"], buf)
    return {"mb": buf.tell() / 1e6, "params_m": sum(v.numel() for v in holder["ckpt"]["state_dict"].values()) / 1e6}


def start_moto() -> tuple[subprocess.Popen, dict[str, str]]:
    server = Path(sys.executable).parent / "moto_server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("moto_server did not start")
        time.sleep(0.2)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint}
    os.environ.update(env)
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    return proc, env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--s3", action="store_true", help="also on s3:// (moto_server on loopback)")
    ap.add_argument("--only", default=None, help="comma-separated variant names")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)

    variants = ["raylit-sync", "raylit-async", "raylit-resume-sync", "raylit-resume-async", "lightning-sync",
                "lightning-async"]
    if args.only:
        variants = [v for v in variants if v in args.only.split(",")]
    places = ["local"] + (["s3"] if args.s3 else [])
    moto = None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()}")
    try:
        for place in places:
            if place == "s3":
                moto, _ = start_moto()
                base = "s3://bench"
            else:
                base = tempfile.mkdtemp(prefix="bench-ckpt-")
            size = checkpoint_size(args.hidden, args.batch)
            print(f"\n[{place}] checkpoint {size['mb']:.0f} MB ({size['params_m']:.1f} M parameters + Adam), "
                  f"every {args.every} steps, {args.steps} steps")
            print("| variant | iteration without save | plain torch.save (paired) | blocking per checkpoint (median / "
                  "max) | blocking / plain save (median / max) | iteration - normal | extra time of the next "
                  f"{args.every - 1} iterations | fit wall |")
            print("|---|---|---|---|---|---|---|---|")
            for name in variants:
                if place == "s3" and name.startswith("lightning"):
                    try:
                        import s3fs  # noqa: F401
                    except ImportError:
                        print(f"| {name} | skipped: Lightning writes s3:// through s3fs, which is not installed |||||||")
                        continue
                dirpath = f"{base}/{name}" if place == "s3" else os.path.join(base, name)
                r = run_variant(name, dirpath, args.steps, args.every, args.hidden, args.batch)
                print(f"| {name} | {r['normal_ms']:.0f} ms | {r['plain_ms']:.0f} ms | **{r['blocking_ms']:.0f}** / "
                      f"{r['max_blocking_ms']:.0f} ms | **{r['ratio']:.2f}** / {r['max_ratio']:.2f} | "
                      f"{r['iter_blocking_ms']:.0f} ms | {r['after_ms']:.0f} ms | {r['wall_s']:.1f} s |", flush=True)
            print(f"load average at end: {os.getloadavg()}")
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(timeout=10)


if __name__ == "__main__":
    main()
