"""GPU step time: a plain PyTorch loop vs raylit vs Lightning, in one process (issue 12's bench_gpu).

Two models: a ~100M-parameter decoder-only transformer (compute-bound) and a small MLP (launch-bound), each at
32-true, bf16-mixed and 16-mixed (GradScaler). The three loops run interleaved, ``--rounds`` times, and the
median of each is kept: ms per training step over the steady steps (after ``--warmup``), the achieved TFLOP/s
(6 x parameters x tokens per step for the transformer, 6 x parameters x samples for the MLP; attention's
sequence-squared term is left out, so it is a lower bound), and host syncs per steady step counted by
``torch.cuda.set_sync_debug_mode("warn")`` (each sync warns once).

    python benchmarks/bench_gpu.py --out benchmarks/results/gpu.md     # on a GPU machine
    python benchmarks/bench_gpu.py --dry-run                           # CPU, tiny sizes: checks the script

The frameworks run with their defaults for a training script: progress bar on, a CSV logger,
``self.log("train_loss", loss, prog_bar=True)``, ``log_every_n_steps=50``; no checkpointing, no validation.
Ray is not involved (in-process ``Trainer(devices=1)``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


# --- models ----------------------------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, seq: int) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.zeros(seq, d))
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
        self.register_buffer("mask", torch.triu(torch.full((seq, seq), float("-inf")), 1), persistent=False)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        (tokens,) = batch
        x = self.tok(tokens[:, :-1]) + self.pos[: tokens.shape[1] - 1]
        mask = self.mask[: x.shape[1], : x.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        logits = self.head(self.ln(x))
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x).float(), y)


def workloads(dry: bool) -> dict[str, dict[str, Any]]:
    if dry:
        gpt = dict(vocab=256, d=64, layers=2, heads=4, seq=33, batch=4)
        mlp = dict(width=32, hidden=64, batch=16)
    else:
        gpt = dict(vocab=16384, d=768, layers=12, heads=12, seq=513, batch=16)
        mlp = dict(width=256, hidden=1024, batch=256)
    return {
        "transformer": dict(
            make=lambda: TinyGPT(gpt["vocab"], gpt["d"], gpt["layers"], gpt["heads"], gpt["seq"]),
            data=lambda n: TensorDataset(torch.randint(0, gpt["vocab"], (n * gpt["batch"], gpt["seq"]),
                                                       generator=torch.Generator().manual_seed(0))),
            batch=gpt["batch"], items_per_step=gpt["batch"] * (gpt["seq"] - 1)),
        "mlp": dict(
            make=lambda: MLP(mlp["width"], mlp["hidden"]),
            data=lambda n: TensorDataset(torch.randn(n * mlp["batch"], mlp["width"]),
                                         torch.randn(n * mlp["batch"], 1)),
            batch=mlp["batch"], items_per_step=mlp["batch"]),
    }


# --- the three loops: each returns (seconds over the steady steps, syncs over the steady steps) ---------------
class SyncCounter:
    """Host syncs, counted from ``torch.cuda.set_sync_debug_mode("warn")``'s warnings (CUDA only)."""

    def __init__(self, device: torch.device) -> None:
        self.on, self.count = device.type == "cuda", 0
        self._ctx: Any = None

    def start(self) -> None:
        if self.on:
            self._ctx = warnings.catch_warnings(record=True)
            self._log = self._ctx.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> None:
        if self.on and self._ctx is not None:
            torch.cuda.set_sync_debug_mode("default")
            self.count = sum("synchroniz" in str(w.message) for w in self._log)
            self._ctx.__exit__(None, None, None)
            self._ctx = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raw_loop(model: nn.Module, loader: DataLoader, precision: str, device: torch.device,
             warmup: int) -> tuple[float, int]:
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    syncs, t0 = SyncCounter(device), 0.0
    for i, batch in enumerate(loader):
        if i == warmup:
            _sync(device)
            syncs.start()
            t0 = time.perf_counter()
        batch = tuple(t.to(device, non_blocking=True) for t in batch)
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
    syncs.stop()
    _sync(device)
    return time.perf_counter() - t0, syncs.count


def framework_loop(pl: Any, model: nn.Module, loader: DataLoader, precision: str, device: torch.device,
                   warmup: int) -> tuple[float, int]:
    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            loss = self.model.loss(batch)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-4)

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.t0, self.t1, self.syncs = 0.0, 0.0, SyncCounter(device)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warmup:
                _sync(device)
                self.syncs.start()
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            self.syncs.stop()
            _sync(device)
            self.t1 = time.perf_counter()

    clock = Clock()
    with tempfile.TemporaryDirectory() as root, contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision, max_epochs=1,
            default_root_dir=root, logger=pl.loggers.CSVLogger(root), enable_checkpointing=False,
            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[clock])
        trainer.fit(Module(), train_dataloaders=loader)
    return clock.t1 - clock.t0, clock.syncs.count


# --- driver ------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60, help="training steps per run, warmup included")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="transformer,mlp")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny models, 8 steps, one round")
    ap.add_argument("--out", default=None, help="write the markdown table here too")
    args = ap.parse_args()

    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda" if cuda else "cpu")
    steps, warmup, rounds = (8, 2, 1) if args.dry_run else (args.steps, args.warmup, args.rounds)
    precisions = [p for p in args.precisions.split(",") if cuda or p != "16-mixed"]  # no fp16 GradScaler on CPU
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # 32-true means fp32 for every loop alike

    import raylit

    loops: dict[str, Callable[..., tuple[float, int]]] = {
        "raw": raw_loop, "raylit": lambda *a: framework_loop(raylit, *a)}
    try:
        import pytorch_lightning as lightning

        loops["lightning"] = lambda *a: framework_loop(lightning, *a)
    except ImportError:
        print("pytorch_lightning is not installed: raw vs raylit only", file=sys.stderr)

    work = workloads(args.dry_run)
    results: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    n_params: dict[str, int] = {}
    for r in range(rounds):
        for name in args.models.split(","):
            w = work[name]
            loader = DataLoader(w["data"](steps), batch_size=w["batch"], shuffle=False, pin_memory=cuda)
            for precision in precisions:
                for variant, loop in loops.items():
                    torch.manual_seed(0)
                    model = w["make"]()
                    n_params[name] = sum(p.numel() for p in model.parameters())
                    seconds, syncs = loop(model, loader, precision, device, warmup)
                    steady = steps - warmup
                    results.setdefault((name, precision, variant), []).append((1000 * seconds / steady,
                                                                               syncs / steady))
                    print(f"round {r + 1}/{rounds} {name:11s} {precision:10s} {variant:9s} "
                          f"{1000 * seconds / steady:8.2f} ms/step  {syncs / steady:5.2f} syncs/step", flush=True)
                    del model
                    if cuda:
                        torch.cuda.empty_cache()

    gpu = torch.cuda.get_device_name(device) if cuda else "CPU (dry run: the figures mean nothing)"
    lines = [f"# bench_gpu: {gpu}", "",
             f"torch {torch.__version__}, raylit {raylit.__version__}"
             + (f", pytorch-lightning {lightning.__version__}" if "lightning" in loops else "")
             + f"; {steps} steps per run ({warmup} warmup), {rounds} interleaved rounds, medians.", "",
             "| model | params | precision | loop | ms/step | x raw | TFLOP/s | syncs/step |",
             "|---|---:|---|---|---:|---:|---:|---:|"]
    for name in args.models.split(","):
        for precision in precisions:
            raw_ms = statistics.median(ms for ms, _ in results[(name, precision, "raw")])
            for variant in loops:
                runs = results[(name, precision, variant)]
                ms = statistics.median(m for m, _ in runs)
                syncs = statistics.median(s for _, s in runs)
                flops = 6 * n_params[name] * work[name]["items_per_step"] / (ms / 1000) / 1e12
                lines.append(f"| {name} | {n_params[name] / 1e6:.1f}M | {precision} | {variant} | {ms:.2f} | "
                             f"{ms / raw_ms:.3f} | {flops:.1f} | "
                             f"{syncs:.2f}{'' if cuda else ' (n/a)'} |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)
    assert all(math.isfinite(m) for runs in results.values() for m, _ in runs)


if __name__ == "__main__":
    main()
