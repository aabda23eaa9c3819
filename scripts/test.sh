#!/usr/bin/env bash
# Runs the test suite (creating .venv first if needed). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest "$@"
