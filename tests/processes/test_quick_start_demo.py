"""The README's quick start: the agent build demo, run as a user runs it (its worker is
SIGKILLed twice and every sandbox wiped on the way)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).parents[2] / "examples" / "agent_build.py"
pytestmark = pytest.mark.slow


def test_the_agent_build_demo_finishes_after_its_worker_is_killed(tmp_path: Path) -> None:
    env = dict(os.environ, PERDURE_DEMO_DB=str(tmp_path / "demo.db"),
               PERDURE_DEMO_SANDBOXES=str(tmp_path / "sandboxes"))
    done = subprocess.run([sys.executable, str(DEMO)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert out.count("SIGKILL the worker") == 2
    # the sandboxes were wiped with the worker: the backend's came back from its checkpoint
    assert re.search(r"\[backend\] sandbox restored from its checkpoint \([12] files\)", out)
    assert "Tests: all checks pass." in out
    assert "README.md, backend/api.py, backend/models.py, web/board.html, web/board.js" in out
    assert "== sub-agents: " in out and out.count("(completed)") == 2
