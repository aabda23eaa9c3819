"""Lightning's own tests that pass against raylit keep passing (issue 10's ratchet).

The conformance kit in ``../shared/lightning-conformance`` runs 13 files of Lightning 2.6's test suite against
raylit (the import renamed, nothing else). ``lightning_conformance_passing.txt`` lists the test ids that pass
today; this test runs the kit's raylit arm and fails when one of them stops passing. The list only grows: add
the ids a fix makes pass (the failure message of a run prints them), never remove one to make this test pass.
The kit's tests are third-party code used as an external check; they are not copied into this project.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT.parent / "shared" / "lightning-conformance"
PASSING = Path(__file__).with_name("lightning_conformance_passing.txt")


def _expected() -> list[str]:
    lines = (line.strip() for line in PASSING.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.slow
def test_lightning_tests_that_pass_keep_passing(tmp_path):
    if not (KIT / "conformance.py").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"the conformance kit is missing: {KIT}")
        pytest.skip(f"the conformance kit is not beside this checkout ({KIT})")
    out = tmp_path / "conformance"
    env = {**os.environ, "CONFORMANCE_OUT": str(out), "CONFORMANCE_PYTHON": sys.executable}
    proc = subprocess.run([sys.executable, str(KIT / "conformance.py"), "--arms", "raylit"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    results_file = out / "raylit_results.tsv"
    assert results_file.is_file(), f"the kit wrote no results:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    with results_file.open() as f:
        status = {row["nodeid"]: row["status"] for row in csv.DictReader(f, delimiter="\t")}
    expected = _expected()
    lost = sorted(t for t in expected if status.get(t) != "passed")
    assert not lost, f"{len(lost)} Lightning tests no longer pass against raylit:\n" + "\n".join(
        f"  {t}: {status.get(t, 'not run')}" for t in lost)
    gained = sorted(t for t, s in status.items() if s == "passed" and t not in set(expected))
    if gained:  # not a failure: a reminder to grow the list
        print(f"{len(gained)} more Lightning tests pass; add them to {PASSING.name}:\n" + "\n".join(gained))
