"""What ``trainer.fit(torch.compile(model))`` buys in-process: raylit's step time with and without
``torch.compile`` (and the same for a plain PyTorch loop, so the speed-up can be read as torch's, passed through
or not), plus the time the first epoch spends compiling.

    .venv/bin/python benchmarks/bench_compile.py [--steps 300] [--rounds 3] [--backend inductor]

Every round runs the four variants one after the other (order rotated between rounds), each on a fresh model
from the same seed: ``plain`` (eager loop), ``plain+compile`` (``torch.compile(net)`` in the same loop),
``raylit`` and ``raylit+compile`` (``trainer.fit(torch.compile(model))``), 2 epochs of ``--steps`` batches.
``ms/step`` is the median step of the second epoch (compiled code warm); ``first epoch`` includes compiling.
Compiled variants after the first round reuse torch's on-disk/in-memory caches, so their first-epoch time
drops; the first round's is the cold figure. Ratios are per round, compiled / eager of the same family.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

WIDTH, HIDDEN, BATCH = 256, 1024, 64
torch.set_num_threads(1)  # the shared 2-vCPU machine: one thread per process keeps the figures comparable


def make_loader(steps: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * BATCH, WIDTH, generator=g)
    y = torch.randn(steps * BATCH, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(WIDTH, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN), nn.GELU(),
                         nn.Linear(HIDDEN, 1))


def plain(loader: DataLoader, compiled: bool, backend: str) -> tuple[list[float], list[float]]:
    net = make_net()
    model = torch.compile(net, backend=backend) if compiled else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    epochs = []
    for _ in range(2):
        times = []
        for x, y in loader:
            times.append(time.perf_counter())
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter())
        epochs.append(times)
    return epochs[0], epochs[1]


def run_raylit(loader: DataLoader, compiled: bool, backend: str) -> tuple[list[float], list[float]]:
    import raylit

    class Net(raylit.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_net()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    times: dict[int, list[float]] = {0: [], 1: []}

    class Clock(raylit.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            times[trainer.current_epoch].append(time.perf_counter())

        def on_train_epoch_end(self, trainer, pl_module):
            times[trainer.current_epoch].append(time.perf_counter())

    model = Net()
    trainer = raylit.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu", devices=1, callbacks=[Clock()])
    trainer.fit(torch.compile(model, backend=backend) if compiled else model, train_dataloaders=loader)
    return times[0], times[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", default="inductor")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    loader = make_loader(args.steps)
    variants = {"plain": (plain, False), "plain+compile": (plain, True),
                "raylit": (run_raylit, False), "raylit+compile": (run_raylit, True)}
    names = list(variants)
    rows = []
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            fn, compiled = variants[name]
            first, second = fn(loader, compiled, args.backend)
            steps = [b - a for a, b in zip(second, second[1:])]
            row = {"round": r, "variant": name, "first_epoch_s": first[-1] - first[0],
                   "ms_per_step": 1000 * statistics.median(steps)}
            rows.append(row)
            print(f"round {r} {name}: first epoch {row['first_epoch_s']:.2f} s, {row['ms_per_step']:.3f} ms/step",
                  flush=True)
    print(f"\n{args.steps} steps/epoch, MLP {WIDTH}-{HIDDEN}-{HIDDEN}-1, batch {BATCH}, AdamW, backend "
          f"{args.backend!r}, torch {torch.__version__}, 1 thread\n")
    print("| variant | ms/step (median of rounds) | first epoch, round 0 (s) | first epoch, later rounds (s) |")
    print("|---|---|---|---|")
    for name in names:
        mine = [x for x in rows if x["variant"] == name]
        later = [f"{x['first_epoch_s']:.1f}" for x in mine[1:]]
        print(f"| {name} | {statistics.median(x['ms_per_step'] for x in mine):.3f} | {mine[0]['first_epoch_s']:.1f} | "
              f"{', '.join(later) or '-'} |")
    for fam in ("plain", "raylit"):
        ratios = [c["ms_per_step"] / e["ms_per_step"] for e, c in zip(
            [x for x in rows if x["variant"] == fam], [x for x in rows if x["variant"] == fam + "+compile"])]
        print(f"{fam}: compiled / eager step time per round {', '.join(f'{x:.2f}' for x in ratios)} "
              f"(median {statistics.median(ratios):.2f})")
    eager = {x["round"]: x["ms_per_step"] for x in rows if x["variant"] == "plain"}
    comp = {x["round"]: x["ms_per_step"] for x in rows if x["variant"] == "plain+compile"}
    for fam, base in (("raylit", eager), ("raylit+compile", comp)):
        ratios = [x["ms_per_step"] / base[x["round"]] for x in rows if x["variant"] == fam]
        print(f"{fam} / its plain counterpart: median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
