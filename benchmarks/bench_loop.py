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


def plain_loop(net: nn.Module, loader: DataLoader, mode: str = "32") -> float:
    """``mode``: "32"; "bf16" (forward and loss under CPU bf16 autocast, as precision="bf16-mixed" runs them);
    "acc2" (gradients of 2 batches accumulated, the loss divided by 2, as accumulate_grad_batches=2)."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    if mode == "acc2":
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(loader):
            loss = nn.functional.mse_loss(net(x), y) / 2
            if i % 2 == 0:
                opt.zero_grad()
            loss.backward()
            if i % 2 == 1:
                opt.step()
        return time.perf_counter() - t0
    autocast = mode == "bf16"
    t0 = time.perf_counter()
    for x, y in loader:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
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


MODE_FLAGS = {"32": {}, "bf16": {"precision": "bf16-mixed"}, "acc2": {"accumulate_grad_batches": 2}}


def framework_loop(pl, net: nn.Module, loader: DataLoader, mode: str = "32") -> float:
    model = module_class(pl.LightningModule)(net, loader)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0,
                         **MODE_FLAGS[mode])
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
    ap.add_argument("--modes", default="32", help="tiny MLP modes, comma-separated: 32, bf16 (bf16-mixed), acc2 "
                    "(accumulate_grad_batches=2); the larger MLP runs in 32-bit only")
    ap.add_argument("--no-imports", action="store_true", help="skip the import-time measurement")
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
    cases = [(f"tiny_mlp{'' if m == '32' else '_' + m}", (32, 32, 8), m) for m in args.modes.split(",")]
    cases.append(("larger_mlp", (512, 2048, 64), "32"))
    for name, (width, hidden, batch), mode in cases:
        steps = args.steps if name.startswith("tiny") else max(args.steps // 10, 200)
        loader = make_data(steps, width, batch)
        best = {"plain": float("inf"), **({"plain_closure": float("inf")} if mode == "32" else {}),
                **{k: float("inf") for k in frameworks}}
        ratios: dict[str, list[float]] = {k: [] for k in best if k != "plain"}
        for _ in range(args.repeats):
            plain = plain_loop(make_net(width, hidden), loader, mode)
            best["plain"] = min(best["plain"], plain)
            if mode == "32":
                t = closure_loop(make_net(width, hidden), loader)
                best["plain_closure"] = min(best["plain_closure"], t)
                ratios["plain_closure"].append(t / plain)
            for fw_name, fw in frameworks.items():
                t = framework_loop(fw, make_net(width, hidden), loader, mode)
                best[fw_name] = min(best[fw_name], t)
                ratios[fw_name].append(t / plain)
        per_step = {k: v / steps * 1e3 for k, v in best.items()}
        results[name] = {"steps": steps, "ms_per_step": per_step,
                         "ratio_vs_plain": {k: per_step[k] / per_step["plain"] for k in ratios},
                         "median_paired_ratio": {k: sorted(v)[len(v) // 2] for k, v in ratios.items()}}
        print(f"{name}: " + ", ".join(f"{k} {v:.3f} ms/step" for k, v in per_step.items()) + " | best vs best: "
              + ", ".join(f"{k} {v:.3f}x" for k, v in results[name]["ratio_vs_plain"].items())
              + " | median of paired rounds: "
              + ", ".join(f"{k} {v:.3f}x" for k, v in results[name]["median_paired_ratio"].items()), flush=True)
    if args.no_imports:
        return
    imports = {m: import_time(m) for m in ["torch", "raylit"] + (["pytorch_lightning"] if "lightning" in frameworks
                                                                  else [])}
    results["import_seconds"] = imports
    print("import time (s): " + ", ".join(f"{k} {v:.2f}" for k, v in imports.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
