"""Interleaved rounds, one writer: a plain ``torch.save`` of the checkpoint dict; a snapshot that copies every
tensor in the call (``capture`` without the optimizers: no deferral, the design before the deferred copy); and
the deferred copy, in the call and call + wait for the background copies (the conservative bound). Ratios to the
plain save of the same round. Local files, CPU, the model of ``bench_checkpoint.py``.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_checkpoint_deferral.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_checkpoint as bench  # noqa: E402

import raylit  # noqa: E402
from raylit.async_checkpoint import AsyncCheckpointWriter  # noqa: E402
from raylit.checkpoint import dump_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=2048)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    base = tempfile.mkdtemp(prefix="bench-deferral-")
    names = ("plain", "all in the call", "deferred: call", "deferred: call + wait")
    times: dict[str, list[float]] = {name: [] for name in names}

    class Rounds(raylit.Callback):
        def on_train_end(self, trainer, pl_module):
            writer = AsyncCheckpointWriter()
            for i in range(args.rounds + 1):  # round 0 warms up
                dump = dump_checkpoint(trainer._run)
                plain = bench.plain_save(dump, os.path.join(base, "plain.ckpt"))[0]
                del dump
                t = time.perf_counter()
                with writer.capture(2 * i):
                    trainer.save_checkpoint(os.path.join(base, "all.ckpt"))
                everything = time.perf_counter() - t
                writer.wait()
                t = time.perf_counter()
                with writer.capture(2 * i + 1, trainer.optimizers):
                    trainer.save_checkpoint(os.path.join(base, "deferred.ckpt"))
                call = time.perf_counter() - t
                writer.wait_copied()
                bound = time.perf_counter() - t
                writer.wait()
                if i:
                    for key, value in zip(times, (plain, everything, call, bound)):
                        times[key].append(value)
            writer.close()

    trainer = raylit.Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             enable_checkpointing=False, callbacks=[Rounds()])
    print(f"load average before: {os.getloadavg()}")
    trainer.fit(bench.module_class(raylit)(args.hidden, bench.make_loader(3, 64)))
    for key, values in times.items():
        ratios = [v / p for v, p in zip(values, times["plain"])]
        print(f"{key:22s} median {statistics.median(values) * 1e3:6.1f} ms   ratio to plain: median "
              f"{statistics.median(ratios):.2f}, max {max(ratios):.2f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
