"""Running the ``perdure`` command the way users do: in its own process, through the
installed console script or ``python -m perdure.cli``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/perdure"
"""A PostgreSQL URL where nothing listens (port 1)."""


def perdure(*args: str, console_script: bool = False, env: dict[str, str] | None = None,
            cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``perdure ARGS`` (``python -m perdure.cli``, or the ``perdure`` script installed
    beside this Python), from the repository root unless ``cwd``, with ``tests``
    importable."""
    command = [sys.executable, "-m", "perdure.cli"]
    if console_script:
        script = shutil.which("perdure", path=os.path.dirname(sys.executable))
        assert script is not None, "the perdure console script is not installed"
        command = [script]
    environment = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT))
    environment.pop("PERDURE_DEBUG", None)
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd,
                          env=environment, timeout=60)


def assert_refused(done: subprocess.CompletedProcess[str], status: int, says: str) -> None:
    """The command failed with ``status``, saying ``says`` in one line on standard error
    (no traceback, no usage text)."""
    args = [str(a) for a in done.args]
    where = "perdure " + " ".join(args[args.index("perdure.cli") + 1:] if "perdure.cli" in args
                                  else args[1:])
    assert done.returncode == status, (
        f"{where}: exit {done.returncode}, expected {status}\n"
        f"stdout: {done.stdout[-1500:]}\nstderr: {done.stderr[-3000:]}")
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("perdure: "), (
        f"{where}: expected one line on stderr, got:\n{done.stderr[-3000:]}")
    assert says in lines[0], f"{where}: {says!r} not in {lines[0]!r}"
