"""Per-step time of raylit's training loop vs a plain PyTorch loop (and Lightning's, when installed), on the
same model, data and optimizer, in one process. Also measures import times in fresh interpreters.

    .venv/bin/python benchmarks/bench_loop.py [--steps 3000] [--repeats 5]

Ratios, not absolute times, are the result: every loop runs the same number of steps here, interleaved, and the
best of ``--repeats`` runs is kept for each.
"""

import argparse
import json
import subprocess
import sys
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)


def make_data(n: int, width: int, batch: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n * batch, width, generator=g)
    y = torch.randn(n * batch, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)


def make_net(width: int, hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def plain_loop(net: nn.Module, loader: DataLoader) -> float:
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    t0 = time.perf_counter()
    for x, y in loader:
        loss = nn.functional.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def closure_loop(net: nn.Module, loader: DataLoader) -> float:
    """The plain loop written the way Lightning's contract runs a step: ``optimizer.step(closure)`` with
    zero_grad and backward inside the closure, and a detached copy of the loss kept for ``outputs``. Any
    Lightning-compatible loop pays this; it is the floor for raylit's fixed cost."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    t0 = time.perf_counter()
    for x, y in loader:
        out = {}

        def closure(x: torch.Tensor = x, y: torch.Tensor = y, out: dict = out) -> torch.Tensor:
            loss = nn.functional.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            out["loss"] = loss.detach().clone()
            return out["loss"]

        opt.step(closure)
    return time.perf_counter() - t0


def module_class(base: type) -> type:
    class Net(base):
        def __init__(self, net: nn.Module, loader: DataLoader) -> None:
            super().__init__()
            self.net, self.loader = net, loader

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def train_dataloader(self):
            return self.loader

    return Net


def framework_loop(pl, net: nn.Module, loader: DataLoader) -> float:
    model = module_class(pl.LightningModule)(net, loader)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0)
    t = {}

    class Timer(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            t["start"] = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            t["end"] = time.perf_counter()

    trainer.callbacks.append(Timer())
    trainer.fit(model)
    return t["end"] - t["start"]


def import_time(module: str) -> float:
    code = f"import time; t=time.perf_counter(); import {module}; print(time.perf_counter()-t)"
    best = min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                     .stdout.strip()) for _ in range(3))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None, help="write results to this file")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import raylit

    frameworks = {"raylit": raylit}
    try:
        import pytorch_lightning

        frameworks["lightning"] = pytorch_lightning
    except ImportError:
        pass
    results = {}
    for name, (width, hidden, batch) in {"tiny_mlp": (32, 32, 8), "larger_mlp": (512, 2048, 64)}.items():
        steps = args.steps if name == "tiny_mlp" else max(args.steps // 10, 200)
        loader = make_data(steps, width, batch)
        best = {"plain": float("inf"), "plain_closure": float("inf"), **{k: float("inf") for k in frameworks}}
        for _ in range(args.repeats):
            best["plain"] = min(best["plain"], plain_loop(make_net(width, hidden), loader))
            best["plain_closure"] = min(best["plain_closure"], closure_loop(make_net(width, hidden), loader))
            for fw_name, fw in frameworks.items():
                best[fw_name] = min(best[fw_name], framework_loop(fw, make_net(width, hidden), loader))
        per_step = {k: v / steps * 1e3 for k, v in best.items()}
        results[name] = {"steps": steps, "ms_per_step": per_step,
                         "ratio_vs_plain": {k: per_step[k] / per_step["plain"] for k in ["plain_closure", *frameworks]}}
        print(f"{name}: " + ", ".join(f"{k} {v:.3f} ms/step" for k, v in per_step.items()) + " | ratio vs plain: "
              + ", ".join(f"{k} {v:.3f}x" for k, v in results[name]["ratio_vs_plain"].items()))
    imports = {m: import_time(m) for m in ["torch", "raylit"] + (["pytorch_lightning"] if "lightning" in frameworks
                                                                  else [])}
    results["import_seconds"] = imports
    print("import time (s): " + ", ".join(f"{k} {v:.2f}" for k, v in imports.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
