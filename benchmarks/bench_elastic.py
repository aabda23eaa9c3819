"""Elastic resizes: time lost per resize on Ray, and the loss curves with and without ``elastic=``.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_elastic.py [--ray-rounds 2] [--skip-ray]

1. **Time per resize (Ray).** Runs ``tests/test_elastic_ray.py`` (a 4-worker run on the two-raylet test cluster
   loses the second raylet, continues on 2 workers, gets a node back, returns to 4) ``--ray-rounds`` times and
   collects its ``[elastic]`` line: seconds from the raylet's SIGKILL to the first step on 2 workers, and from the
   replacement node's start to the first step on 4 workers. ``--start-timeout``: the placement-group wait of a
   worker-group start (``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``; raylit's default for elastic runs is 5 s,
   the test uses 3 s).
2. **Loss curves (no Ray: the worker body on gloo process groups, ``tests/_elastic_helpers.spawn``).** The same
   model, data and schedule three ways: (a) 4 workers uninterrupted; (b) ``elastic=(1, 4)`` resized 4 -> 2 -> 4
   through resume checkpoints; (c) the same resizes without ``elastic=``, i.e. what Ray Train's elastic restart
   gives: every worker keeps its batch size, so on 2 workers the global batch halves (and the optimizer takes
   twice the steps for the same samples). Loss = the mean over each optimizer step's global batch, averaged over
   windows of samples seen.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import _elastic_helpers as h  # noqa: E402

N, BATCH, MAX, EPOCHS = 256, 4, 4, 3  # global batch 16: 16 steps per epoch, 48 in all
SHRINK_AT, GROW_AT = 10, 26  # (full-size) optimizer steps at which the group shrinks to 2 and grows back to 4


def ray_rounds(rounds: int, start_timeout: str) -> list[str]:
    lines = []
    for i in range(rounds):
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/test_elastic_ray.py", "-q", "-s", "-p", "no:cacheprovider"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "RAYLIT_TEST_START_TIMEOUT_S": start_timeout},
            timeout=900,
        )
        found = re.findall(r"\[elastic\].*", out.stdout)
        load = os.getloadavg()[0]
        lines.append(f"round {i + 1} (start timeout {start_timeout} s, load {load:.1f}): " + (found[0] if found else "FAILED\n" + out.stdout[-2000:]))
        print(lines[-1], flush=True)
    return lines


def curves(root: str) -> dict[str, object]:
    import torch

    cfg = {"n": N, "batch": BATCH, "max_workers": MAX, "epochs": EPOCHS}
    default = {**cfg, "elastic": False}
    out: dict[str, object] = {}
    for name, c, shrink_end in (("elastic", cfg, GROW_AT), ("default", default, SHRINK_AT + 2 * (GROW_AT - SHRINK_AT))):
        d = os.path.join(root, name)
        os.makedirs(d)
        resume = os.path.join(d, "resume")
        h.spawn(4, d, c, [("full", -1, None), ("p1", SHRINK_AT, None)], "a")
        h.spawn(2, d, c, [("p2", shrink_end, f"{resume}/resume-step={SHRINK_AT}.ckpt")], "b")
        h.spawn(4, d, c, [("p3", -1, f"{resume}/resume-step={shrink_end}.ckpt")], "c")
        rows = [r for p in ("p1", "p2", "p3") for r in h.read_records(os.path.join(d, f"{p}.jsonl"))]
        out[name] = (rows, torch.load(os.path.join(d, "p3.pt")))
        if name == "elastic":
            out["full"] = (h.read_records(os.path.join(d, "full.jsonl")), torch.load(os.path.join(d, "full.pt")))
    return out


def by_samples(rows: list[dict], window: int) -> list[float]:
    """Mean global-batch loss over windows of ``window`` samples seen (steps in order)."""
    steps = sorted({r["step"] for r in rows})
    curve, count = h.loss_curve(rows), {}
    for r in rows:
        count[r["step"]] = count.get(r["step"], 0) + len(r["ids"])
    seen, sums = 0, {}
    for s in steps:
        w = seen // window
        acc = sums.setdefault(w, [0.0, 0])
        acc[0] += curve[s] * count[s]
        acc[1] += count[s]
        seen += count[s]
    return [sums[w][0] / sums[w][1] for w in sorted(sums)]


def full_loss(weights: dict) -> float:
    import torch

    model = h.ElasticModel("/dev/null", N, BATCH)
    model.load_state_dict(weights)
    data = h.Ids(N)
    with torch.no_grad():
        return float(((model.net(data.x) - data.y) ** 2).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ray-rounds", type=int, default=2)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-curves", action="store_true")
    parser.add_argument("--start-timeout", default="5", help="RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (s)")
    args = parser.parse_args()
    if not args.skip_ray:
        ray_rounds(args.ray_rounds, args.start_timeout)
    if args.skip_curves:
        return
    with tempfile.TemporaryDirectory() as root:
        got = curves(root)
    full_rows, full = got["full"]
    window = N // 4
    table = {name: by_samples(got[name][0], window) for name in ("full", "elastic", "default")}
    print(
        f"\nmean training loss per quarter epoch ({window} samples); shrink to 2 workers after "
        f"{SHRINK_AT * 16} samples, back to 4 after {GROW_AT * 16}"
    )
    print("| samples seen | uninterrupted, 4 workers | elastic=(1, 4), 4 -> 2 -> 4 | without elastic=, 4 -> 2 -> 4 |")
    print("|---|---|---|---|")
    for i, (a, b, c) in enumerate(zip(table["full"], table["elastic"], table["default"])):
        print(f"| {i * window}-{(i + 1) * window} | {a:.5f} | {b:.5f} | {c:.5f} |")
    for name in ("full", "elastic", "default"):
        rows, res = got[name]
        diff = max((res["weights"][k] - v).abs().max().item() for k, v in full["weights"].items())
        print(
            f"{name}: optimizer steps {res['state']['global_step']}, final loss on all {N} samples "
            f"{full_loss(res['weights']):.6f}, max |weight - uninterrupted| {diff:.2e}, "
            f"samples trained {sum(len(r['ids']) for r in rows)}; per epoch (distinct of trained): "
            f"{[_coverage(rows, e) for e in range(EPOCHS)]}"
        )


def _coverage(rows: list[dict], epoch: int) -> str:
    ids = [i for r in rows if r["epoch"] == epoch for i in r["ids"]]
    return f"{len(set(ids))}/{len(ids)}"


if __name__ == "__main__":
    main()
