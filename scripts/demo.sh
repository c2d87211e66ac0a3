#!/usr/bin/env bash
# Install Perdure into .venv and run the durable demo: a worker is SIGKILLed mid-run, a second one finishes the job.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/python examples/crash_demo.py "$@"
