#!/usr/bin/env bash
# Runs the main example end to end: in-process first, then on 2 Ray Train workers of a private local Ray.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PYTHONUNBUFFERED=1
exec .venv/bin/python examples/quickstart.py "$@"
