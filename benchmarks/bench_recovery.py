"""Recovery after a lost worker on Ray: seconds from a worker's death to the first training step of the
restarted group, and steps lost beyond the last resume checkpoint.

    .venv/bin/python benchmarks/bench_recovery.py [--kills 5,11,17,23] [--every 2]

One 2-worker CPU run (the model, data and faults of ``tests/_ft_helpers.py``) on a private local Ray, or the
cluster in ``RAY_ADDRESS``. At each step in ``--kills`` (first attempt that reaches it) a worker kills itself
with SIGKILL, alternating rank 1 and rank 0, right after that step's ``on_train_batch_end``. A resume checkpoint
is written every ``--every`` steps. For each kill:

- *death -> first step*: from the moment before ``os.kill`` (recorded in the fault's marker file) to rank 0's
  first ``on_train_batch_start`` in the new process (recorded by ``StepClock``). Includes Ray noticing the death
  (the controller polls every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``: raylit sets 0.5 s on the local instances
  it starts, Ray's default is 2 s), shutting the old group down, starting new worker processes (torch import),
  the process group, and restoring the checkpoint.
- *steps lost*: the step the kill happened at minus the step restored; *beyond the last checkpoint*: the last
  checkpoint written before the kill minus the step restored (0 = nothing lost that a checkpoint had saved).

Exactness of the restored run is checked by ``tests/test_fault_tolerance.py``, not here. The load average is
printed with the numbers, since they depend on it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import _ft_helpers as h  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", default="5,11,17,23", help="steps at which a worker is killed")
    parser.add_argument("--every", type=int, default=2, help="resume checkpoint every N steps")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    kills = [int(s) for s in args.kills.split(",")]

    from ray import cloudpickle
    from ray.train import FailureConfig, RunConfig

    import raylit
    from raylit.resume import ResumeCheckpoint

    cloudpickle.register_pickle_by_value(h)
    raylit.seed_everything(h.SEED, verbose=False)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clock = root / "steps.jsonl"
        faults = [h.KillInTrainStep(root / f"kill{i}", rank=(i + 1) % 2, step=s) for i, s in enumerate(kills)]
        trainer = h.make_trainer(
            root,
            [*faults, h.StepClock(clock)],
            max_epochs=args.epochs,
            logger=False,
            run_config=RunConfig(name="bench-recovery", storage_path=str(root / "storage"),
                                 failure_config=FailureConfig(max_failures=len(kills))),
        )
        trainer.callbacks[0] = ResumeCheckpoint(every_n_train_steps=args.every, every_n_seconds=None, keep=2)
        start = time.time()
        trainer.fit(h.FTModel())
        wall = time.time() - start
        steps = [json.loads(line) for line in clock.read_text().splitlines()]
        records = [json.loads(Path(f.marker).read_text()) for f in faults]
    load_after = os.getloadavg()

    first_by_pid: dict[int, dict] = {}
    for s in steps:
        first_by_pid.setdefault(s["pid"], s)
    attempts = sorted(first_by_pid.values(), key=lambda s: s["time"])
    rows = []
    for rec in records:
        resumed = next(a for a in attempts if a["time"] > rec["time"])
        last_ckpt = (rec["step"] // args.every) * args.every
        rows.append((rec["step"], rec["rank"], resumed["time"] - rec["time"], resumed["step"],
                     rec["step"] - resumed["step"], last_ckpt - resumed["step"]))

    print(f"2 CPU workers, {args.epochs * h.N_TRAIN // 8} steps, resume checkpoint every {args.every} steps; "
          f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS', '(private local instance)')}")
    print(f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}; {os.cpu_count()} CPUs")
    print("| killed at step | rank | death -> first resumed step (s) | restored step | steps lost | "
          "lost beyond last checkpoint |")
    print("|---|---|---|---|---|---|")
    for step, rank, secs, restored, lost, beyond in rows:
        print(f"| {step} | {rank} | {secs:.1f} | {restored} | {lost} | {beyond} |")
    secs = sorted(r[2] for r in rows)
    print(f"median {secs[len(secs) // 2]:.1f} s, max {secs[-1]:.1f} s; whole run {wall:.1f} s "
          f"({len(kills)} kills); final step {trainer.global_step}")


if __name__ == "__main__":
    main()
