#!/usr/bin/env bash
# Idempotent environment set-up shared by demo.sh and test.sh.
# Creates .venv if missing, installs the CPU torch wheel first (so pip does not pull a multi-GB CUDA build
# to satisfy a looser requirement), then raylit in editable mode with its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${RAYLIT_TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.raylit-setup-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip show torch >/dev/null 2>&1 || .venv/bin/python -m pip install -q "$TORCH_SPEC"
  .venv/bin/python -m pip install -q -e ".[test]"
  rm -f .venv/.raylit-setup-*
  touch "$stamp"
fi
