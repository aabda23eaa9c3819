"""Wall time of an ASHA sweep: raylit's in-process Tune trials vs Ray Tune + ``ray.train.lightning``.

    .venv/bin/python benchmarks/bench_tune.py [--variants raylit,baseline] [--trials 8] [--epochs 8]

Both variants run the same sweep: the same MLP and synthetic regression data, the same 8 learning rates (a grid,
so both sweeps see the same trials), ASHA(max_t=epochs, grace_period=1, reduction_factor=2) on ``val_loss``,
2 trials at a time on a fresh 2-CPU Ray instance (one per variant, each in its own process).

- **raylit**: ``raylit.tune.Tuner(build, trainer=raylit.Trainer(max_epochs=...))``: each trial trains inside its
  Tune trial actor (1 CPU), reporting after each validation with a checkpoint.
- **baseline**: Ray's documented pattern for Lightning in Tune with Train V2: each Tune trial is a driver
  function that runs a ``TorchTrainer`` (1 worker, 1 CPU) whose train function builds a
  ``pytorch_lightning.Trainer`` with ``RayDDPStrategy``, ``RayLightningEnvironment`` and
  ``RayTrainReportCallback``; ``ray.tune.integration.ray_train.TuneReportCallback`` passes the metrics to
  Tune. The trial actor asks for one byte of memory (not CPU), so two 1-CPU workers fit on 2 CPUs. Ray is started
  with the dashboard so that the State API can release stopped trials' placement groups.

Reported: ``fit_s`` (``Tuner.fit()`` wall time), ``total_s`` (the process, incl. imports and ``ray.init``), the
trial-epochs run and pruned (ASHA), and the best trial. Needs pytorch_lightning for the baseline only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# a fixed order (not sorted) so that ASHA meets good trials early and has something to prune against
LRS = [3e-2, 1e-1, 3e-4, 1e-2, 2e-1, 1e-3, 6e-2, 3e-3]


# --------------------------------------------------------------------------------------------------------------
# the workload, written once for either LightningModule base class
# --------------------------------------------------------------------------------------------------------------
def make_module(base: type) -> type:
    import torch
    from torch import nn

    class Net(base):
        def __init__(self, lr: float = 1e-2, hidden: int = 64) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(
                nn.Linear(32, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
            )

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

    return Net


def make_loaders(batch_size: int = 64) -> tuple:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 32, generator=g)
    w = torch.randn(32, 1, generator=g)
    y = torch.tanh(x @ w) + 0.1 * torch.randn(4096, 1, generator=g)
    train = DataLoader(TensorDataset(x[:3584], y[:3584]), batch_size=batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x[3584:], y[3584:]), batch_size=256)
    return train, val


def asha(epochs: int, scheduler: str = "asha"):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if scheduler == "fifo":  # no pruning: every trial runs all its epochs
        return FIFOScheduler()
    return ASHAScheduler(max_t=epochs, grace_period=1, reduction_factor=2)


# --------------------------------------------------------------------------------------------------------------
# raylit
# --------------------------------------------------------------------------------------------------------------
def build_raylit(config):
    import raylit

    return make_module(raylit.LightningModule)(lr=config["lr"]), *make_loaders()


def run_raylit(args, storage: str) -> object:
    from ray import tune

    import raylit
    from raylit.tune import Tuner

    trainer = raylit.Trainer(max_epochs=args.epochs, enable_progress_bar=False, enable_model_summary=False)
    return Tuner(
        build_raylit,
        trainer=trainer,
        param_space={"lr": tune.grid_search(LRS[: args.trials])},
        tune_config=tune.TuneConfig(
            metric="val_loss", mode="min", scheduler=asha(args.epochs, args.scheduler), max_concurrent_trials=2
        ),
        run_config=tune.RunConfig(name="raylit", storage_path=storage, verbose=0),
        reuse_actors=False if args.variant == "raylit-noreuse" else None,
    ).fit()


# --------------------------------------------------------------------------------------------------------------
# baseline: Ray Tune + Ray Train V2 + ray.train.lightning
# --------------------------------------------------------------------------------------------------------------
def baseline_train_func(config):
    import pytorch_lightning as pl
    import ray.train
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, RayTrainReportCallback, prepare_trainer

    model = make_module(pl.LightningModule)(lr=config["lr"])
    train, val = make_loaders()
    trainer = pl.Trainer(
        max_epochs=config["epochs"],
        accelerator="cpu",
        devices="auto",
        strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()],
        callbacks=[RayTrainReportCallback()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer = prepare_trainer(trainer)
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            trainer.fit(model, train, val, ckpt_path=os.path.join(d, RayTrainReportCallback.CHECKPOINT_NAME))
    else:
        trainer.fit(model, train, val)


def baseline_driver(config):
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    TorchTrainer(
        baseline_train_func,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=1),
        run_config=ray.train.RunConfig(
            name=f"train_{tune.get_context().get_trial_id()}",
            storage_path=config["storage"],
            callbacks=[TuneReportCallback()],
        ),
    ).fit()


def run_baseline(args, storage: str) -> object:
    from ray import tune

    space = {"lr": tune.grid_search(LRS[: args.trials]), "epochs": args.epochs, "storage": storage + "/train"}
    return tune.Tuner(
        tune.with_resources(baseline_driver, {"memory": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="val_loss", mode="min", scheduler=asha(args.epochs, args.scheduler), max_concurrent_trials=2
        ),
        run_config=tune.RunConfig(name="baseline", storage_path=storage, verbose=0),
    ).fit()


# --------------------------------------------------------------------------------------------------------------
def run_variant(args) -> dict:
    t_start = time.perf_counter()
    import ray

    storage = tempfile.mkdtemp(prefix=f"bench-tune-{args.variant}-")
    ray.init(
        num_cpus=2,
        include_dashboard=args.variant == "baseline",
        logging_level="ERROR",
        runtime_env={"worker_process_setup_hook": "raylit.launch.session.quiet_ray_workers"},
    )
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address  # several Ray instances may share the host
    t0 = time.perf_counter()
    results = (run_baseline if args.variant == "baseline" else run_raylit)(args, storage)
    fit_s = time.perf_counter() - t0
    iters = [int((r.metrics or {}).get("training_iteration", 0)) for r in results]
    best = results.get_best_result()
    ray.shutdown()
    return {
        "variant": args.variant,
        "fit_s": round(fit_s, 1),
        "total_s": round(time.perf_counter() - t_start, 1),
        "trials": len(iters),
        "errors": len(results.errors),
        "trial_epochs": sum(iters),
        "max_trial_epochs": len(iters) * args.epochs,
        "pruned_fraction": round(1 - sum(iters) / (len(iters) * args.epochs), 3),
        "iterations_per_trial": iters,
        "best_lr": best.config["lr"],
        "best_val_loss": round(float(best.metrics["val_loss"]), 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="raylit,baseline", help="raylit, raylit-noreuse, baseline")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1, help="rounds; variants are interleaved within each round")
    p.add_argument("--scheduler", default="asha", choices=["asha", "fifo"], help="fifo: no pruning")
    args = p.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args)), flush=True)
        return
    rows: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for variant in args.variants.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--trials",
                str(args.trials),
                "--epochs",
                str(args.epochs),
                "--scheduler",
                args.scheduler,
            ]
            load_before = os.getloadavg()[0]
            out = subprocess.run(cmd, capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if not lines:
                print(out.stdout[-3000:], out.stderr[-6000:], file=sys.stderr)
                raise SystemExit(f"{variant} failed")
            row = json.loads(lines[-1][len("RESULT ") :])
            row["loadavg_1min_before"] = round(load_before, 1)
            rows.setdefault(variant, []).append(row)
            print(json.dumps(row), flush=True)
    medians = {v: statistics.median(r["fit_s"] for r in rs) for v, rs in rows.items()}
    for v, m in medians.items():
        print(f"{v}: median fit {m:.1f} s over {len(rows[v])} run(s)")
    if "baseline" in medians:
        for v, m in medians.items():
            if v != "baseline":
                print(f"{v} / baseline fit time: {m / medians['baseline']:.2f}x")


if __name__ == "__main__":
    main()
