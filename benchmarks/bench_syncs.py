"""Host reads of tensor values per training step: a plain PyTorch loop, raylit and Lightning, on CPU.

    .venv/bin/python benchmarks/bench_syncs.py [--steps 300] [--window 100,200] [--where] [--tty]

A read is a call of ``Tensor.item``, ``tolist``, ``__bool__``, ``__float__``, ``__int__`` or ``__index__`` (the
methods are wrapped for the run; ``f"{t:.3f}"`` on a 0-d tensor goes through ``item``). On a GPU each one waits
for the device to finish all queued work (a host-device synchronisation); on CPU they are cheap, but they are
counted the same way, so this runs anywhere. Counted over the steady steps ``--window`` (global steps 100-200 of
a 300-step epoch by default), divided by the number of steps.

Configuration (Lightning's defaults): the default progress bar and logger (TensorBoard), ``log_every_n_steps=50``,
``self.log("train_loss", loss, prog_bar=True)`` in ``training_step``, SGD with momentum (Adam's ``step`` reads
its step counter, one ``item`` per parameter on CPU tensors, which is not a device sync: it would only add the
same count to every loop). ``--tty`` makes the progress bar believe it
draws on a terminal (it redraws, so it reads metrics, as often as it would on screen); otherwise stdout is
what it is (a file/pipe when run from a script or CI, where bars redraw less). ``--where`` prints the code
locations of the reads.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import time
import traceback
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


class ReadCounter:
    """Wraps the tensor read methods; counts calls while ``active`` (and their call sites with ``where``)."""

    def __init__(self, where: bool = False) -> None:
        self.active = False
        self.count = 0
        self.where = where
        self.sites: collections.Counter = collections.Counter()
        self._saved: dict[str, object] = {}
        self._depth = 0

    def __enter__(self) -> ReadCounter:
        for name in READS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original
            setattr(torch.Tensor, name, self._wrap(name, original))
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)

    def _wrap(self, name: str, original):
        counter = self

        def read(tensor, *args, **kwargs):
            # one read per outermost call (__format__ -> item -> ... counts once)
            if counter.active and counter._depth == 0:
                counter.count += 1
                if counter.where:
                    frames = [f for f in traceback.extract_stack(limit=12)[:-1] if "bench_syncs" not in f.filename]
                    site = frames[-1] if frames else None
                    if site is not None:
                        counter.sites[f"{name} <- {os.path.relpath(site.filename)}:{site.lineno} {site.name}"] += 1
            counter._depth += 1
            try:
                return original(tensor, *args, **kwargs)
            finally:
                counter._depth -= 1

        read.__name__ = name
        return read


def per_step(counts: dict, window: tuple[int, int]) -> tuple[float, float]:
    """(reads per step, milliseconds per step) between the two window marks."""
    (c0, t0), (c1, t1) = counts[window[0]], counts[window[1]]
    n = window[1] - window[0]
    return (c1 - c0) / n, (t1 - t0) / n * 1e3


def make_data(steps: int, batch: int = 16, width: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * batch, width, generator=g)
    return DataLoader(TensorDataset(x, torch.randn(steps * batch, 1, generator=g)), batch_size=batch)


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))


def plain(counter: ReadCounter, steps: int, window: tuple[int, int]) -> tuple[float, float]:
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    counts = {}
    for step, (x, y) in enumerate(make_data(steps)):
        if step in window:
            counts[step] = (counter.count, time.perf_counter())
        loss = nn.functional.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return per_step(counts, window)


def framework(
    pl, counter: ReadCounter, steps: int, window: tuple[int, int], root: str, bar: str = "default"
) -> tuple[float, float]:
    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3, momentum=0.9)

        def train_dataloader(self):
            return make_data(steps)

    counts = {}

    class Window(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step in window:
                counts[trainer.global_step] = (counter.count, time.perf_counter())

    callbacks = [Window()]
    if bar != "default":
        callbacks.append(getattr(pl.callbacks, "TQDMProgressBar" if bar == "tqdm" else "RichProgressBar")())
    trainer = pl.Trainer(
        max_epochs=1,
        default_root_dir=root,
        log_every_n_steps=50,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    trainer.fit(Net())
    return per_step(counts, window)


@contextlib.contextmanager
def terminal(on: bool):
    """Make the progress bars treat stdout as a terminal (tqdm's and rich's checks)."""
    if not on:
        yield
        return
    import raylit.callbacks.progress.tqdm_progress as raylit_tqdm

    saved = raylit_tqdm._isatty
    raylit_tqdm._isatty = lambda fp: True
    os.environ["FORCE_COLOR"] = "1"  # rich: a terminal
    try:
        yield
    finally:
        raylit_tqdm._isatty = saved
        os.environ.pop("FORCE_COLOR", None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--window", default="100,200")
    ap.add_argument("--where", action="store_true", help="print where the reads come from")
    ap.add_argument("--tty", action="store_true", help="progress bars draw as on a terminal")
    ap.add_argument("--bar", choices=["default", "tqdm", "rich"], default="default")
    args = ap.parse_args()
    window = tuple(int(s) for s in args.window.split(","))
    warnings.filterwarnings("ignore")
    import logging
    import tempfile

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import pytorch_lightning

    import raylit

    results = {}
    with ReadCounter(args.where) as counter, terminal(args.tty), tempfile.TemporaryDirectory() as root:
        for name, run in (
            ("plain loop", lambda: plain(counter, args.steps, window)),
            ("raylit", lambda: framework(raylit, counter, args.steps, window, os.path.join(root, "r"), args.bar)),
            (
                "lightning",
                lambda: framework(pytorch_lightning, counter, args.steps, window, os.path.join(root, "l"), args.bar),
            ),
        ):
            counter.sites.clear()
            counter.active = True
            with contextlib.redirect_stdout(open(os.devnull, "w")) if not args.tty else contextlib.nullcontext():
                results[name] = run()
            counter.active = False
            if args.where:
                print(f"{name}: read sites over the whole run", file=sys.stderr)
                for site, n in counter.sites.most_common(12):
                    print(f"  {n:6d}  {site}", file=sys.stderr)
    base = results["plain loop"][0]
    print(
        f"reads per step, steps {window[0]}-{window[1]} of {args.steps} (bar: {args.bar}, "
        f"{'terminal' if args.tty else 'no terminal'}; load average {os.getloadavg()[0]:.1f}):"
    )
    print("| loop | reads / step | beyond the plain loop | ms / step | reads / s |")
    print("|---|---|---|---|---|")
    for name, (value, ms) in results.items():
        print(f"| {name} | {value:.2f} | {value - base:+.2f} | {ms:.1f} | {value / ms * 1e3:.1f} |")


if __name__ == "__main__":
    main()
