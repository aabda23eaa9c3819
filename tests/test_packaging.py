"""The built wheel works on its own: built from a clean copy of the sources, installed into a fresh venv that sees
none of the test environment's packages, where the console script and the quick start run.

The venv gets the CPU torch wheel first (as scripts/setup.sh does; it lies on disk here, so that step takes
seconds), then the wheel, whose other runtime dependencies come from the package index or pip's cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import raylit

ROOT = Path(__file__).resolve().parents[1]
TORCH_SPEC = os.environ.get("RAYLIT_TORCH_SPEC", "torch==2.13.0")


def _clean_env() -> dict:
    """This environment without anything that would let the venv see this checkout or the test venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(cmd: list, *, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_pyproject_license_is_an_spdx_string():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert doc["project"]["license"] == "Apache-2.0"
    # an SPDX string in project.license needs setuptools 77 (PEP 639)
    assert any(r.replace(" ", "").startswith("setuptools>=") and int(r.split(">=")[1].split(".")[0]) >= 77
               for r in doc["build-system"]["requires"])


@pytest.mark.slow
@pytest.mark.timeout(1200)  # ~75 s on a quiet 2-core machine with a warm pip cache; 4-6 min under load 10-17
def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    timings = {}
    start = time.monotonic()
    env = _clean_env()

    # 1. build from a copy, so that build/ and *.egg-info never land in the checkout; with build isolation, so
    #    that the setuptools of [build-system] requires is the one that reads pyproject.toml
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "raylit", src / "raylit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    build = _run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", dist, src], cwd=tmp_path, env=env)
    wheels = list(dist.glob("raylit-*.whl"))
    assert [w.name for w in wheels] == [f"raylit-{raylit.__version__}-py3-none-any.whl"]
    build_log = build.stdout + build.stderr
    assert "deprecated" not in build_log.lower(), build_log  # e.g. setuptools' project.license warning
    timings["build"] = time.monotonic() - start

    # 2. a fresh venv: no --system-site-packages, so nothing of the test environment is visible
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=env)
    py = venv / "bin" / "python"
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    t = time.monotonic()
    # --no-compile: byte-compiling torch's and Ray's thousands of modules is most of an install's time here
    _run([py, "-m", "pip", "install", "-q", "--no-compile", TORCH_SPEC], cwd=tmp_path, env=env)
    timings["torch"] = time.monotonic() - t
    t = time.monotonic()
    _run([py, "-m", "pip", "install", "-q", "--no-compile", wheels[0]], cwd=tmp_path, env=env)
    timings["wheel + deps"] = time.monotonic() - t

    # 3. what a user runs first, from a directory outside the checkout
    t = time.monotonic()
    where = _run([py, "-c", "import raylit; print(raylit.__file__)"], cwd=tmp_path, env=env).stdout.strip()
    assert Path(where).is_relative_to(venv), where
    help_ = _run([venv / "bin" / "raylit", "--help"], cwd=tmp_path, env=env).stdout
    assert "raylit fit|validate|test|predict" in help_ and "raylit submit" in help_
    version = _run([venv / "bin" / "raylit", "--version"], cwd=tmp_path, env=env).stdout
    assert version.strip() == f"raylit {raylit.__version__}"
    quick = _run([py, ROOT / "examples" / "quickstart.py", "--skip-ray", "--max-epochs", "2"], cwd=tmp_path, env=env,
                 timeout=300)
    assert "Traceback" not in quick.stderr, quick.stderr
    # the test tools and the reference framework are not runtime dependencies
    probe = ("import importlib.util as u; "
             "print([m for m in ('pytest', 'pytorch_lightning', 'lightning', 'moto') if u.find_spec(m)])")
    assert _run([py, "-c", probe], cwd=tmp_path, env=env).stdout.strip() == "[]"
    timings["runs"] = time.monotonic() - t
    timings["total"] = time.monotonic() - start
    print("wheel test timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
