"""How long a checkpoint stops training: raylit with synchronous and background writes, Lightning, and a plain
synchronous ``torch.save`` of the same checkpoint dict; local files and ``s3://`` (moto's S3 server on loopback).

    .venv/bin/python benchmarks/bench_checkpoint.py [--steps 60] [--every 10] [--hidden 2048] [--s3] [--only NAME]

One process, CPU. The model is an MLP (1024 -> hidden -> hidden -> 1024, ~8.4 M parameters at hidden=2048) trained
with Adam, so a checkpoint holds ~101 MB of tensors (weights + Adam's two moments).

Two measurements:

1. **Interleaved rounds** (the figure to compare; ``--rounds``): after a 3-step fit, inside ``on_train_end`` (the
   Trainer is live), each round times (a) a plain ``torch.save`` of the checkpoint dict the framework builds, to a
   local file (no fsync) or into memory and one upload for ``s3://``; (b) the framework's synchronous save
   (``trainer.save_checkpoint``: raylit's is atomic with fsync); (c) its asynchronous save, blocking part only
   (raylit: the callbacks' writer, i.e. host snapshot + hand-off; Lightning: ``AsyncCheckpointIO``), whose
   background write is then waited for outside the timing. raylit's writer copies the optimizer state in the
   background and makes the next optimizer step wait for that copy, so its blocking is given twice: *in the
   call*, and *call + wait if the next optimizer step came at once* (the time until the deferred copies are
   done, as the step's pre-hook would wait for them; the conservative bound, and the headline). A round's
   measurements share the machine's load of that moment; the ratio to (a) is taken per round and its median
   reported. Goal: async <= 0.2.
2. **In a fit** (``--steps``/``--every``; skipped with ``--no-fit``): the callbacks' own saves
   (``ModelCheckpoint(every_n_train_steps=...)``, keeping the newest; raylit's ``ResumeCheckpoint``). *callback*
   is the wall (and process CPU) time spent in the checkpoint callback's ``on_train_batch_end`` at the steps
   where it saves; *hook wait* the time the next optimizer step then waited for the deferred copies (raylit's
   ``writer.blocked_in_step_s``); *blocking* their sum per save, the figure to read; *iteration - normal* is the same read off an iteration clock (a callback placed first records
   every ``on_train_batch_start``): (the iteration that saved) - (median iteration without a save); *after* is the
   extra time of the ``every - 1`` iterations that follow a save, summed (the background write competes with
   training for the CPU; on a 2-core machine this is where an async write costs). No reference save runs
   inside the fit: writing and deleting 100 MB right before a save was found to slow the save that follows by
   ~3x (page-cache work), so ratios come from the rounds.

Lightning variants: its ``ModelCheckpoint`` (synchronous) and the same with its ``AsyncCheckpointIO`` plugin
(clones the tensors on the training thread, writes in a thread). Lightning on ``s3://`` needs ``s3fs`` and is
skipped when it is missing. Absolute numbers depend on the machine's load; the load average is printed.
"""

from __future__ import annotations

import argparse
import contextlib
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
        """Placed first: the time at every ``on_train_batch_start`` (and at the end)."""

        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.starts.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module):
            self.starts.append(time.perf_counter())

    return Clock


def timed(cls: type, every: int, record: list[tuple], blocked: dict[int, float]) -> type:
    """``cls`` whose ``on_train_batch_end`` records (step, wall, CPU) of its duration at the steps where it saves,
    and at every step the writer's cumulative wait in optimizer step hooks (0 without a raylit writer)."""

    def on_train_batch_end(self, trainer, *args, **kwargs):
        t, cpu = time.perf_counter(), time.process_time()
        cls.on_train_batch_end(self, trainer, *args, **kwargs)
        if trainer.global_step % every == 0:
            record.append((trainer.global_step, time.perf_counter() - t, time.process_time() - cpu))
        blocked[trainer.global_step] = getattr(getattr(self, "_writer", None), "blocked_in_step_s", 0.0)

    return type(cls.__name__, (cls,), {"on_train_batch_end": on_train_batch_end})


def summarise(starts: list[float], every: int) -> dict[str, float]:
    """Iteration i (1-based: it ends with global_step == i) lasted starts[i] - starts[i-1]."""
    iters = {i: starts[i] - starts[i - 1] for i in range(1, len(starts))}
    saved = [i for i in iters if i % every == 0 and i + every - 1 in iters]
    skip = 3  # warm-up iterations
    normal = statistics.median(t for i, t in iters.items() if i > skip and i % every != 0)
    blocking = statistics.median(iters[i] - normal for i in saved)
    after = statistics.median(sum(iters[i + k] - normal for k in range(1, every)) for i in saved)
    return {"normal_ms": normal * 1e3, "iter_blocking_ms": blocking * 1e3, "after_ms": after * 1e3, "saves": len(saved)}


def plain_save(ckpt: dict, path: str) -> tuple[float, float]:
    """Seconds for a plain synchronous ``torch.save`` of ``ckpt``: to a local file (no fsync), or into memory and
    one upload for ``s3://``. The file is removed afterwards."""
    from raylit import fs

    t, cpu = time.perf_counter(), time.process_time()
    if fs.is_remote(path):
        out = io.BytesIO()
        torch.save(ckpt, out)
        fs.write_bytes_atomic(out.getbuffer(), path)
    else:
        torch.save(ckpt, path)
    elapsed = (time.perf_counter() - t, time.process_time() - cpu)
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
    clock = clock_class(pl)()
    kwargs: dict = {}
    hook: list[tuple] = []
    blocked: dict[int, float] = {}
    if name.startswith("raylit-resume"):
        saver = timed(ResumeCheckpoint, every, hook, blocked)(
            dirpath=dirpath, every_n_train_steps=every, every_n_seconds=None, keep=1, async_save=name.endswith("async")
        )
        kwargs["enable_checkpointing"] = False
    elif lightning:
        saver = timed(ModelCheckpoint, every, hook, blocked)(dirpath=dirpath, every_n_train_steps=every, save_top_k=1)
        if name.endswith("async"):
            from pytorch_lightning.plugins.io import AsyncCheckpointIO

            kwargs["plugins"] = [AsyncCheckpointIO()]
    else:
        saver = timed(ModelCheckpoint, every, hook, blocked)(
            dirpath=dirpath, every_n_train_steps=every, save_top_k=1, async_save=name.endswith("async")
        )
    trainer = pl.Trainer(
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=0,
        callbacks=[clock, saver],
        **kwargs,
    )
    t0 = time.perf_counter()
    trainer.fit(module_class(pl)(hidden, make_loader(steps, batch)))
    wall = time.perf_counter() - t0
    out = {**summarise(clock.starts, every), "wall_s": wall}
    for k, kind in enumerate(("", "cpu_"), start=1):
        out[f"{kind}callback_ms"] = statistics.median(h[k] for h in hook) * 1e3
        out[f"{kind}max_callback_ms"] = max(h[k] for h in hook) * 1e3
    # the next optimizer step's wait for the deferred copies of the save at `step` (saves followed by a step)
    waits = [(h[1], blocked[h[0] + 1] - blocked[h[0]]) for h in hook if h[0] + 1 in blocked]
    out["hook_wait_ms"] = statistics.median(w for _, w in waits) * 1e3
    out["max_hook_wait_ms"] = max(w for _, w in waits) * 1e3
    out["blocking_ms"] = statistics.median(c + w for c, w in waits) * 1e3
    out["max_blocking_ms"] = max(c + w for c, w in waits) * 1e3
    return out


def rounds(framework: str, base: str, hidden: int, batch: int, n: int) -> dict[str, dict[str, float]]:
    """Interleaved rounds at the end of a short fit (inside ``on_train_end``, so the Trainer is live): a plain
    ``torch.save`` of the checkpoint dict, the framework's synchronous save, and its asynchronous save (the
    blocking part only; the background write is then waited for, outside the timing). Adjacent measurements
    share the machine's load of that moment; ratios are taken per round."""
    if framework == "raylit":
        import raylit as pl
        from raylit.async_checkpoint import AsyncCheckpointWriter
        from raylit.checkpoint import dump_checkpoint
    else:
        import pytorch_lightning as pl
        from pytorch_lightning.plugins.io import AsyncCheckpointIO, TorchCheckpointIO
    times: dict[str, list] = {"plain": [], "sync": [], "async": [], "bound": []}
    from raylit import fs

    def join(name: str) -> str:
        return fs.join(base, f"{framework}-{name}.ckpt")

    class Rounds(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            writer = AsyncCheckpointWriter() if framework == "raylit" else None
            for i in range(n + 1):  # round 0 warms up (first allocations, thread start) and is dropped
                dump = dump_checkpoint(trainer._run) if writer else trainer._checkpoint_connector.dump_checkpoint(False)
                plain = plain_save(dump, join("plain"))
                del dump
                t = time.perf_counter()
                trainer.save_checkpoint(join("sync"))
                sync = time.perf_counter() - t
                if writer is not None:
                    t = time.perf_counter()
                    with writer.capture(i, trainer.optimizers):
                        trainer.save_checkpoint(join("async"))
                    blocking = time.perf_counter() - t
                    writer.wait_copied()  # what an optimizer step starting now would wait for
                    bound = time.perf_counter() - t
                    writer.wait()
                else:
                    trainer.strategy.checkpoint_io = AsyncCheckpointIO(TorchCheckpointIO())
                    t = time.perf_counter()
                    trainer.save_checkpoint(join("async"))
                    blocking = bound = time.perf_counter() - t  # (it defers nothing past the call)
                    trainer.strategy.checkpoint_io.teardown()  # waits for the write
                    trainer.strategy.checkpoint_io = TorchCheckpointIO()
                if i:
                    times["plain"].append(plain[0])
                    times["sync"].append(sync)
                    times["async"].append(blocking)
                    times["bound"].append(bound)
            if writer is not None:
                writer.close()

    trainer = pl.Trainer(
        max_steps=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
        callbacks=[Rounds()],
    )
    trainer.fit(module_class(pl)(hidden, make_loader(3, batch)))
    out = {}
    for kind in times:
        ratios = [a / p for a, p in zip(times[kind], times["plain"])]
        out[kind] = {
            "median_ms": statistics.median(times[kind]) * 1e3,
            "max_ms": max(times[kind]) * 1e3,
            "ratio": statistics.median(ratios),
            "max_ratio": max(ratios),
        }
    return out


def checkpoint_size(hidden: int, batch: int) -> dict[str, float]:
    """Size of the checkpoint raylit writes for this model after a few Adam steps."""
    import raylit
    from raylit.checkpoint import dump_checkpoint

    holder = {}

    class Grab(raylit.Callback):
        def on_train_end(self, trainer, pl_module):
            holder["ckpt"] = dump_checkpoint(trainer._run)

    trainer = raylit.Trainer(
        max_steps=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[Grab()],
    )
    trainer.fit(module_class(raylit)(hidden, make_loader(3, batch)))
    buf = io.BytesIO()
    torch.save(holder["ckpt"], buf)
    return {"mb": buf.tell() / 1e6, "params_m": sum(v.numel() for v in holder["ckpt"]["state_dict"].values()) / 1e6}


@contextlib.contextmanager
def quiet(on: bool):
    """Lightning's start-up banners go to stdout/stderr; keep the table readable."""
    if not on:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


def start_moto() -> tuple[subprocess.Popen, dict[str, str]]:
    server = Path(sys.executable).parent / "moto_server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("moto_server did not start")
        time.sleep(0.2)
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
    }
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
    ap.add_argument("--only", default=None, help="comma-separated variant names (the in-fit table)")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved save rounds per framework (0: none)")
    ap.add_argument("--no-fit", action="store_true", help="skip the in-fit table")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)

    variants = [
        "raylit-sync",
        "raylit-async",
        "raylit-resume-sync",
        "raylit-resume-async",
        "lightning-sync",
        "lightning-async",
    ]
    if args.only:
        variants = [v for v in variants if v in args.only.split(",")]
    places = ["local"] + (["s3"] if args.s3 else [])
    moto = None
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs, "
        f"load average at start {os.getloadavg()}"
    )
    try:
        for place in places:
            if place == "s3":
                moto, _ = start_moto()
                base = "s3://bench"
            else:
                base = tempfile.mkdtemp(prefix="bench-ckpt-")
            size = checkpoint_size(args.hidden, args.batch)
            print(
                f"\n[{place}] checkpoint {size['mb']:.0f} MB ({size['params_m']:.1f} M parameters + Adam), "
                f"every {args.every} steps, {args.steps} steps"
            )
            if args.rounds:
                print(
                    f"\nInterleaved rounds ({args.rounds}, after a warm-up round): blocking time of one save, median / "
                    "max, and its ratio to the plain torch.save of the same round (median / max). Async: in the "
                    "call, and call + wait if the next optimizer step came at once (conservative bound, headline). "
                    f"Load average before: {os.getloadavg()}"
                )
                print(
                    "| framework | plain torch.save | synchronous save | ratio | async: in the call | ratio | "
                    "async: call + wait if the next step came at once | **ratio** |"
                )
                print("|---|---|---|---|---|---|---|---|")
                for framework in ("raylit", "lightning"):
                    if place == "s3" and framework == "lightning":
                        print("| lightning | skipped: Lightning writes s3:// through s3fs (not installed) |||||||")
                        continue
                    with quiet(framework == "lightning"):
                        r = rounds(framework, base, args.hidden, args.batch, args.rounds)
                    p, sy, a, b = r["plain"], r["sync"], r["async"], r["bound"]
                    print(
                        f"| {framework} | {p['median_ms']:.0f} / {p['max_ms']:.0f} ms | {sy['median_ms']:.0f} / "
                        f"{sy['max_ms']:.0f} ms | {sy['ratio']:.2f} / {sy['max_ratio']:.2f} | {a['median_ms']:.0f} / "
                        f"{a['max_ms']:.0f} ms | {a['ratio']:.2f} / {a['max_ratio']:.2f} | {b['median_ms']:.0f} / "
                        f"{b['max_ms']:.0f} ms | **{b['ratio']:.2f}** / {b['max_ratio']:.2f} |",
                        flush=True,
                    )
                print(f"load average after the rounds: {os.getloadavg()}")
            if args.no_fit:
                continue
            print(f"\nIn a fit (the callbacks' own saves, every {args.every} steps):")
            print(
                "| variant | iteration without save (median) | callback, wall: median / max | callback, process CPU: "
                "median / max | hook wait in the next step: median / max | **blocking = callback + hook wait**: "
                f"median / max | iteration - normal | extra time of the next {args.every - 1} iterations | fit wall |"
            )
            print("|---|---|---|---|---|---|---|---|---|")
            for name in variants:
                if place == "s3" and name.startswith("lightning"):
                    try:
                        import s3fs  # noqa: F401
                    except ImportError:
                        print(f"| {name} | skipped: Lightning writes s3:// through s3fs (not installed) ||||||")
                        continue
                dirpath = f"{base}/{name}" if place == "s3" else os.path.join(base, name)
                with quiet(name.startswith("lightning")):
                    r = run_variant(name, dirpath, args.steps, args.every, args.hidden, args.batch)
                print(
                    f"| {name} | {r['normal_ms']:.0f} ms | {r['callback_ms']:.0f} / {r['max_callback_ms']:.0f} ms | "
                    f"{r['cpu_callback_ms']:.0f} / {r['cpu_max_callback_ms']:.0f} ms | {r['hook_wait_ms']:.1f} / "
                    f"{r['max_hook_wait_ms']:.1f} ms | **{r['blocking_ms']:.0f}** / {r['max_blocking_ms']:.0f} ms | "
                    f"{r['iter_blocking_ms']:.0f} ms | {r['after_ms']:.0f} ms | {r['wall_s']:.1f} s |",
                    flush=True,
                )
            print(f"load average at end: {os.getloadavg()}")
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(timeout=10)


if __name__ == "__main__":
    main()
