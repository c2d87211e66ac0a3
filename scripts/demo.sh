#!/usr/bin/env bash
# Install Perdure into .venv and run the agent demo: a lead agent and two sub-agents build a Kanban app
# (scripted models: offline, no keys) while their worker is SIGKILLed twice and a human answers with
# no worker running. `./scripts/demo.sh --crash` runs the plain durable-workflow demo instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet -e .
if [ "${1:-}" = "--crash" ]; then
    shift
    exec .venv/bin/python examples/crash_demo.py "$@"
fi
exec .venv/bin/python examples/agent_build.py "$@"
