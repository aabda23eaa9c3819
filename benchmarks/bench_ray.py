"""2 Ray Train workers on one local Ray instance: raylit vs a hand-written Ray ``TorchTrainer`` loop vs Ray's
``TorchTrainer`` + ``ray.train.lightning``. Measures time to first step, steady-state step time and time spent
reporting at epoch ends.

    .venv/bin/python benchmarks/bench_ray.py [--steps 300] [--epochs 3] [--repeats 2] [--poll SECONDS]
    .venv/bin/python benchmarks/bench_ray.py --paired 10 [--steps 300]   # step time only, load-cancelling
    .venv/bin/python benchmarks/bench_ray.py --fresh 4 [--steps 300 --epochs 1]  # start-up as a script sees it

``--fresh``: each run in a new interpreter that starts its own Ray (raylit: inside ``fit``; hand-written: a plain
``ray.init``), timed from the interpreter's start, rounds interleaved; see ``run_one``. The default mode below
shares one Ray instance (started by this script, with raylit's setup hook) between all variants, so it does not
see what raylit's own ``ray.init`` costs or saves.

All variants run in this one process, one after the other, on one private ``ray.init(num_cpus=2)``. They
share the model (an MLP 32-64-64-1), the synthetic regression data (``2 x steps x batch`` rows, so each of the 2
workers gets ``--steps`` batches of ``--batch`` rows per epoch through a ``DistributedSampler`` with shuffling),
SGD with momentum, DDP over gloo, 1 CPU per worker, and one checkpoint per epoch:

- **raylit**: ``raylit.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=E)`` with its
  defaults (ModelCheckpoint writes ``last``/top-1 each epoch; raylit never calls ``ray.train.report`` in
  ``fit``), ``logger=False``, no progress bar or model summary.
- **handwritten**: ``TorchTrainer`` running a plain loop: ``ray.train.torch.prepare_model`` (DDP),
  ``DistributedSampler`` + ``set_epoch``, SGD; at each epoch end rank 0 saves the ``state_dict`` and every
  rank calls ``ray.train.report(metrics, checkpoint)`` (Ray's documented pattern).
- **lightning**: ``TorchTrainer`` running ``pytorch_lightning.Trainer`` with ``RayDDPStrategy``,
  ``RayLightningEnvironment``, ``RayTrainReportCallback`` (checkpoint + report each epoch) and
  ``prepare_trainer`` (Ray's documented pattern), ``enable_checkpointing=False``, ``logger=False``.

Measured on rank 0 (clocks are those of this one machine):

- ``first_step_s``: from the driver's call (``raylit.Trainer.fit`` / ``TorchTrainer.fit``) to the start of the
  first training step; split into ``worker_s`` (call -> the train function's first line; raylit: the moment
  rank 0 unpickles the model, the first thing its Ray train function does) and ``setup_s`` (the rest).
- ``ms_per_step``: the median time between consecutive step starts within an epoch, for steps >= ``--warmup``.
- ``report_s``: time blocked per epoch in the epoch-end report (baselines: ``ray.train.report`` with the
  checkpoint save before it; raylit: none). ``epoch_gap_s``: the time an epoch boundary costs beyond a normal
  step (start of the first step of epoch k+1 - start of the last step of epoch k - median step), for every
  variant: checkpointing, reporting, sampler/iterator reset, epoch-end hooks.
- ``wall_s``: the driver's call until it returns; ``teardown_s``: the last step's start until it returns.

Variants are interleaved and their order rotates between repeats. pytorch_lightning is needed for the
``lightning`` variant only. ``--poll`` sets ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` for all variants (unset: Ray's
2 s; note that raylit sets 0.5 s on the Ray instances it starts itself, but not on one the user started).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

VARIANTS = ("raylit", "handwritten", "lightning")
WIDTH, HIDDEN, LR = 32, 64, 0.01


# --------------------------------------------------------------------------------------------------------------
# the workload, shared by all variants
# --------------------------------------------------------------------------------------------------------------
def make_dataset(rows: int):
    import torch
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, WIDTH, generator=g)
    y = torch.tanh(x @ torch.randn(WIDTH, 1, generator=g)) + 0.1 * torch.randn(rows, 1, generator=g)
    return TensorDataset(x, y)


def make_net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(WIDTH, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))


class Clock:
    """Rank 0's record: the train function's entry, each step's start, the epoch-end report times."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.entry: float | None = None  # time.time()
        self.first_step: float | None = None  # time.time()
        self.steps: list[tuple[int, float]] = []  # (epoch, perf_counter)
        self.cpu: list[tuple[int, float]] = []  # (epoch, thread_time): the training thread's CPU time
        self.report_s: list[float] = []
        self.last_step: float | None = None  # time.time()
        self.marks: dict[str, float] = {}  # hook name -> time.time() of its first call on rank 0

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.time())

    def step(self, epoch: int) -> None:
        now = time.time()
        if self.first_step is None:
            self.first_step = now
        self.last_step = now
        self.steps.append((epoch, time.perf_counter()))
        self.cpu.append((epoch, time.thread_time()))

    def dump(self) -> None:
        Path(self.path).write_text(json.dumps(self.__dict__))


def make_module(base: type) -> type:
    """The MLP as a LightningModule of either framework (raylit's or Lightning's base class)."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    class Net(base):
        def __init__(self, rows: int, batch: int) -> None:
            super().__init__()
            self.net = make_net()
            self.rows, self.batch = rows, batch
            self.unpickled_at: float | None = None

        def __setstate__(self, state):  # raylit: the first thing rank 0's Ray train function does is unpickle us
            super().__setstate__(state)
            self.unpickled_at = time.time()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)

        def train_dataloader(self):
            return DataLoader(make_dataset(self.rows), batch_size=self.batch, shuffle=True)

    return Net


def make_clock_callback(base: type) -> type:
    class ClockCallback(base):
        def __init__(self, path: str) -> None:
            self.clock = Clock(path)

        def setup(self, trainer, pl_module, stage) -> None:
            self.clock.mark("setup")

        def on_fit_start(self, trainer, pl_module) -> None:
            self.clock.mark("on_fit_start")

        def on_train_start(self, trainer, pl_module) -> None:
            self.clock.mark("on_train_start")

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.clock.mark("on_train_epoch_start")

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_rank == 0:
                self.clock.step(trainer.current_epoch)

        def on_train_end(self, trainer, pl_module) -> None:
            if trainer.global_rank == 0:
                if self.clock.entry is None:
                    self.clock.entry = getattr(pl_module, "unpickled_at", None)
                self.clock.dump()

    return ClockCallback


# --------------------------------------------------------------------------------------------------------------
# 1. raylit
# --------------------------------------------------------------------------------------------------------------
def run_raylit(args, out: str, root: str) -> float:
    import raylit
    from raylit.callbacks import Callback

    trainer = raylit.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=args.epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(Path(root) / Path(out).stem),
        callbacks=[make_clock_callback(Callback)(out)],
    )
    model = make_module(raylit.LightningModule)(rows=2 * args.steps * args.batch, batch=args.batch)
    t0 = time.time()
    trainer.fit(model)
    return t0


# --------------------------------------------------------------------------------------------------------------
# 2. hand-written Ray Train loop
# --------------------------------------------------------------------------------------------------------------
def handwritten_train_func(config: dict) -> None:
    entry = time.time()
    import ray.train
    import ray.train.torch
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, DistributedSampler

    rank = ray.train.get_context().get_world_rank()
    clock = Clock(config["out"])
    clock.entry = entry
    clock.mark("imports")
    model = ray.train.torch.prepare_model(make_net())
    clock.mark("prepare_model")
    dataset = make_dataset(config["rows"])
    sampler = DistributedSampler(dataset, shuffle=True)
    loader = DataLoader(dataset, batch_size=config["batch"], sampler=sampler)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    for epoch in range(config["epochs"]):
        sampler.set_epoch(epoch)
        total, n = torch.zeros(()), 0
        for x, y in loader:
            if rank == 0:
                clock.step(epoch)
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach()
            n += 1
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                torch.save({"model": model.module.state_dict(), "optimizer": opt.state_dict()}, f"{d}/model.pt")
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report({"loss": (total / n).item(), "epoch": epoch}, checkpoint=checkpoint)
        clock.report_s.append(time.perf_counter() - t)
    if rank == 0:
        clock.dump()


def _run_torch_trainer(train_func, args, out: str, root: str) -> float:
    """Both baselines: the train function on a 2-worker ``TorchTrainer``; returns the driver's start time."""
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_func,
        train_loop_config={"out": out, "rows": 2 * args.steps * args.batch, "batch": args.batch,
                           "epochs": args.epochs},
        scaling_config=ray.train.ScalingConfig(num_workers=2),
        run_config=ray.train.RunConfig(name=Path(out).stem, storage_path=root),
    )
    t0 = time.time()
    trainer.fit()
    return t0


def run_handwritten(args, out: str, root: str) -> float:
    return _run_torch_trainer(handwritten_train_func, args, out, root)


# --------------------------------------------------------------------------------------------------------------
# 3. Ray TorchTrainer + ray.train.lightning
# --------------------------------------------------------------------------------------------------------------
def lightning_train_func(config: dict) -> None:
    entry = time.time()
    import pytorch_lightning as pl
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, RayTrainReportCallback, prepare_trainer

    clock_cb = make_clock_callback(pl.Callback)(config["out"])
    clock_cb.clock.entry = entry
    clock_cb.clock.mark("imports")

    class TimedReport(RayTrainReportCallback):  # Ray's callback, timed
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            t = time.perf_counter()
            super().on_train_epoch_end(trainer, pl_module)
            clock_cb.clock.report_s.append(time.perf_counter() - t)

    trainer = pl.Trainer(
        max_epochs=config["epochs"],
        accelerator="cpu",
        devices="auto",
        strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()],
        callbacks=[TimedReport(), clock_cb],
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer = prepare_trainer(trainer)
    trainer.fit(make_module(pl.LightningModule)(rows=config["rows"], batch=config["batch"]))


def run_lightning(args, out: str, root: str) -> float:
    return _run_torch_trainer(lightning_train_func, args, out, root)


RUNNERS = {"raylit": run_raylit, "handwritten": run_handwritten, "lightning": run_lightning}


# --------------------------------------------------------------------------------------------------------------
# --paired: raylit's loop vs the hand-written loop in the same 2 Ray Train workers, alternating blocks
# --------------------------------------------------------------------------------------------------------------
def paired_train_func(config: dict) -> list | None:
    """Alternates, ``config["blocks"]`` times: one epoch of the hand-written DDP loop, then one epoch of raylit's
    loop (``raylit.launch.ray.run_worker``: exactly what raylit's Ray train function runs, on a fresh copy of the
    pickled run). Both see the same machine load, so their step-time ratio is meaningful even on a busy host."""
    import ray.train
    import ray.train.torch
    import torch
    from ray import cloudpickle
    from torch import nn
    from torch.utils.data import DataLoader, DistributedSampler

    from raylit.launch.ray import run_worker

    rank = ray.train.get_context().get_world_rank()
    model = ray.train.torch.prepare_model(make_net())
    dataset = make_dataset(config["rows"])
    sampler = DistributedSampler(dataset, shuffle=True)
    loader = DataLoader(dataset, batch_size=config["batch"], sampler=sampler)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    payload = ray.get(config["payload"])
    rows = []
    for block in range(config["blocks"]):
        sampler.set_epoch(block)
        clock = Clock("")
        for x, y in loader:
            clock.step(0)
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        spec = cloudpickle.loads(payload)
        run_worker(spec, torch.device("cpu"), local_rank=rank)
        if rank == 0:
            raylit_clock = next(cb.clock for cb in spec.callbacks if hasattr(cb, "clock"))
            rows.append({"handwritten": _median_step(clock.steps, config["warmup"]),
                         "raylit": _median_step(raylit_clock.steps, config["warmup"]),
                         "handwritten_cpu": _median_step(clock.cpu, config["warmup"]),
                         "raylit_cpu": _median_step(raylit_clock.cpu, config["warmup"])})
    return rows if rank == 0 else None


def _median_step(steps: list, warmup: int) -> float:
    return statistics.median(b[1] - a[1] for i, (a, b) in enumerate(zip(steps, steps[1:]))
                             if a[0] == b[0] and i + 1 >= warmup)


def run_paired(args, root: str) -> None:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    import raylit
    from raylit.callbacks import Callback
    from raylit.launch.ray import pack

    rows = 2 * args.steps * args.batch
    trainer = raylit.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=str(Path(root) / "paired"),
                             callbacks=[make_clock_callback(Callback)(str(Path(root) / "paired.json"))])
    spec = trainer._spec("fit", make_module(raylit.LightningModule)(rows=rows, batch=args.batch))
    payload = pack(spec)
    result = TorchTrainer(
        paired_train_func,
        train_loop_config={"payload": ray.put(payload), "rows": rows, "batch": args.batch, "blocks": args.paired,
                           "warmup": args.warmup},
        scaling_config=ray.train.ScalingConfig(num_workers=2),
        run_config=ray.train.RunConfig(name="paired", storage_path=root),
    ).fit()
    blocks = result.return_value
    print(f"\npaired: {args.paired} alternating blocks of {args.steps} steps on the same 2 Ray workers "
          f"(median step after {args.warmup})\n")
    print("| block | hand-written ms/step | raylit ms/step | raylit / hand-written | training-thread CPU ms/step, "
          "hand-written / raylit | CPU ratio |")
    print("|---|---|---|---|---|---|")
    for i, b in enumerate(blocks):
        print(f"| {i} | {1000 * b['handwritten']:.3f} | {1000 * b['raylit']:.3f} | "
              f"{b['raylit'] / b['handwritten']:.3f} | {1000 * b['handwritten_cpu']:.3f} / "
              f"{1000 * b['raylit_cpu']:.3f} | {b['raylit_cpu'] / b['handwritten_cpu']:.3f} |")
    ratio = statistics.median(b["raylit"] / b["handwritten"] for b in blocks)
    cpu = statistics.median(b["raylit_cpu"] / b["handwritten_cpu"] for b in blocks)
    print(f"median ratio raylit / hand-written: {ratio:.3f} (wall), {cpu:.3f} (training thread's CPU time per step)")


# --------------------------------------------------------------------------------------------------------------
# --fresh: each run in a new interpreter with its own Ray instance, as a user's script would start
# --------------------------------------------------------------------------------------------------------------
FRESH_VARIANTS = ("raylit", "handwritten", "raylit_preinit")


def run_one(args) -> None:
    """--fresh's child: the interpreter started at ``$BENCH_T0``; imports, Ray's start and the run all count.
    ``handwritten`` starts Ray as a user would (``ray.init`` on a private local instance, no dashboard);
    ``raylit`` lets ``Trainer.fit`` start it (raylit's own ``ray.init``); ``raylit_preinit`` starts Ray like the
    hand-written script and then calls raylit (isolates what raylit's own ``ray.init`` costs)."""
    import logging

    root = tempfile.mkdtemp(prefix="bench-ray-fresh-")
    if args.one in ("handwritten", "raylit_preinit"):
        import ray

        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    t_call = (run_handwritten if args.one == "handwritten" else run_raylit)(args, args.out, root)
    c = json.loads(Path(args.out).read_text())
    c["call"] = t_call
    c["done"] = time.time()
    Path(args.out).write_text(json.dumps(c))


def run_fresh(args, variants: list[str]) -> None:
    import subprocess
    import sys

    rows = []
    for r in range(args.fresh):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            out = tempfile.mktemp(prefix=f"bench-ray-{v}-", suffix=".json")
            load = os.getloadavg()[0]
            t0 = time.time()
            subprocess.run([sys.executable, __file__, "--one", v, "--out", out, "--steps", str(args.steps),
                            "--epochs", str(args.epochs), "--batch", str(args.batch)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            end = time.time()
            c = json.loads(Path(out).read_text())
            steps = [t for e, t in c["steps"]]
            gaps = sorted(b - a for a, b in zip(steps[args.warmup:], steps[args.warmup + 1:]))
            row = {"variant": v, "round": r, "first_step_s": round(c["first_step"] - t0, 2),
                   "call_s": round(c["call"] - t0, 2), "entry_s": round(c["entry"] - t0, 2) if c["entry"] else None,
                   "ms_per_step": round(1000 * gaps[len(gaps) // 2], 3) if gaps else None,
                   "exit_s": round(end - t0, 2), "load": round(load, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nfresh interpreters, {args.fresh} rounds, time from the interpreter's start\n")
    print("| variant | round | first step (s) | call (s) | train fn entry (s) | ms/step | process exit (s) | load |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['round']} | {row['first_step_s']} | {row['call_s']} | {row['entry_s']} | "
              f"{row['ms_per_step']} | {row['exit_s']} | {row['load']} |")
    if "handwritten" in variants:
        base = {row["round"]: row for row in rows if row["variant"] == "handwritten"}
        for v in variants:
            if v == "handwritten":
                continue
            mine = [row for row in rows if row["variant"] == v]
            first = [row["first_step_s"] / base[row["round"]]["first_step_s"] for row in mine]
            step = [row["ms_per_step"] / base[row["round"]]["ms_per_step"] for row in mine]
            print(f"{v} / handwritten, per round: first step {', '.join(f'{x:.2f}' for x in first)} (median "
                  f"{statistics.median(first):.2f}); ms/step median {statistics.median(step):.2f}")


# --------------------------------------------------------------------------------------------------------------
class FitEntry:
    """Records when ``TorchTrainer.fit`` is entered on the driver (raylit calls it after its own driver-side
    work: pickling the run, resource checks, the console relay)."""

    def __enter__(self) -> FitEntry:
        from ray.train.torch import TorchTrainer

        self.cls, self.orig, self.at = TorchTrainer, TorchTrainer.fit, None
        had = "fit" in TorchTrainer.__dict__

        def fit(trainer, *a, **kw):
            self.at = time.time()
            return self.orig(trainer, *a, **kw)

        self.had = had
        TorchTrainer.fit = fit
        return self

    def __exit__(self, *exc) -> None:
        if self.had:
            self.cls.fit = self.orig
        else:
            del self.cls.fit


def measure(variant: str, args, root: str, tag: str) -> dict:
    out = str(Path(root) / f"{variant}-{tag}.json")
    load = os.getloadavg()[0]
    with FitEntry() as fit_entry:
        t0 = RUNNERS[variant](args, out, root)
    end = time.time()
    c = json.loads(Path(out).read_text())
    per_step, gaps = [], []
    steps = c["steps"]
    for i, ((e0, t_a), (e1, t_b)) in enumerate(zip(steps, steps[1:])):
        if e0 == e1 and i + 1 >= args.warmup:
            per_step.append(t_b - t_a)
    med = statistics.median(per_step)
    for (e0, t_a), (e1, t_b) in zip(steps, steps[1:]):
        if e1 != e0:
            gaps.append(t_b - t_a - med)
    return {
        "variant": variant,
        "first_step_s": round(c["first_step"] - t0, 2),
        "driver_s": round(fit_entry.at - t0, 2),
        "worker_s": round(c["entry"] - t0, 2) if c["entry"] else None,
        "setup_s": round(c["first_step"] - c["entry"], 2) if c["entry"] else None,
        "ms_per_step": round(1000 * med, 3),
        "steps": len(steps),
        "report_s": [round(s, 3) for s in c["report_s"]],
        "epoch_gap_s": [round(g, 3) for g in gaps],
        "setup_marks_s": {k: round(v - c["entry"], 2) for k, v in c["marks"].items()} if c["entry"] else None,
        "teardown_s": round(end - c["last_step"], 2),
        "wall_s": round(end - t0, 2),
        "loadavg_1min_before": round(load, 1),
    }


def _mean(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f}" if xs else "-"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default=None, help="comma-separated: " + ", ".join(VARIANTS) + " (--fresh: "
                   + ", ".join(FRESH_VARIANTS) + "; default raylit,handwritten)")
    p.add_argument("--steps", type=int, default=300, help="steps per epoch per worker")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=32, help="batch size per worker")
    p.add_argument("--warmup", type=int, default=50, help="steps left out of the step-time median")
    p.add_argument("--repeats", type=int, default=1, help="rounds; variants interleaved, order rotated")
    p.add_argument("--poll", type=float, default=None, help="RAY_TRAIN_HEALTH_CHECK_INTERVAL_S for all variants")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the private Ray instance")
    p.add_argument("--fresh", type=int, default=0, metavar="ROUNDS",
                   help="instead: each variant in a new interpreter that starts its own Ray (time to first step "
                        "as a user's script sees it), ROUNDS interleaved rounds")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # --fresh's child: run this variant once
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--paired", type=int, default=0, metavar="BLOCKS",
                   help="instead: raylit's loop vs the hand-written loop alternating in the same 2 workers")
    args = p.parse_args()
    default = "raylit,handwritten" if args.fresh else ",".join(VARIANTS)
    variants = [v for v in (args.variants or default).split(",") if v]
    if args.poll is not None:
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(args.poll)

    if args.one:
        run_one(args)
        return
    if args.fresh:
        run_fresh(args, variants)
        return
    import ray

    root = tempfile.mkdtemp(prefix="bench-ray-")
    ray.init(
        address="local",  # a private instance, never a cluster that `ray start` left on this host
        num_cpus=args.num_cpus,
        include_dashboard=False,
        logging_level="ERROR",
        runtime_env={"worker_process_setup_hook": "raylit.launch.session.quiet_ray_workers"},
    )
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address  # several Ray instances may share the host
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs; "
          f"poll {os.environ.get('RAY_TRAIN_HEALTH_CHECK_INTERVAL_S', 'Ray default (2 s)')}", flush=True)
    rows = []
    try:
        if args.paired:
            run_paired(args, root)
            return
        for r in range(args.repeats):
            order = variants[r % len(variants):] + variants[: r % len(variants)]
            for v in order:
                row = measure(v, args, root, f"r{r}")
                row["repeat"] = r
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        ray.shutdown()  # the instance this script started, nothing else
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    print(f"\n{args.steps} steps/epoch x {args.epochs} epochs per worker, batch {args.batch}, 2 workers; "
          f"step median over steps >= {args.warmup}\n")
    print("| variant | run | first step (s) | = driver | + Ray start | + train fn -> step | ms/step | "
          "report s/epoch | epoch gap s | teardown (s) | wall (s) | load before |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for v in variants:
        for row in (x for x in rows if x["variant"] == v):
            print(f"| {v} | {row['repeat']} | {row['first_step_s']:.1f} | {row['driver_s']:.1f} | "
                  f"{row['worker_s'] - row['driver_s']:.1f} | {row['setup_s']:.1f} | {row['ms_per_step']:.2f} | "
                  f"{_mean(row['report_s'])} | {_mean(row['epoch_gap_s'])} | {row['teardown_s']:.1f} | "
                  f"{row['wall_s']:.1f} | {row['loadavg_1min_before']} |")
    med = {v: {k: statistics.median(x[k] for x in rows if x["variant"] == v) for k in ("first_step_s", "ms_per_step")}
           for v in variants}
    print()
    for v in variants:
        line = f"{v}: median first step {med[v]['first_step_s']:.1f} s, {med[v]['ms_per_step']:.2f} ms/step"
        if v != "handwritten" and "handwritten" in med:
            line += f" ({med[v]['ms_per_step'] / med['handwritten']['ms_per_step']:.2f}x hand-written)"
        print(line)


if __name__ == "__main__":
    main()
