"""Workflows and activities of the liveness tests: a worker frozen (SIGSTOP) while it
holds work. Shared by the test process and
``liveness_worker_process.py``; every run of an activity or a blocking activation is
written to the file named by ``PERDURE_TEST_EXECUTIONS``: ``what attempt pid``."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path

from perdure import RetryPolicy, activity, workflow

EXECUTIONS_ENV = "PERDURE_TEST_EXECUTIONS"
RETRY_AT_ONCE = RetryPolicy(initial_interval=timedelta(milliseconds=50))


def record(what: str, attempt: int) -> None:
    """One line per execution, in one O_APPEND write (several processes share the file)."""
    path = os.environ.get(EXECUTIONS_ENV)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{what} {attempt} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


def executions(path: Path) -> list[tuple[str, int, int]]:
    """What ran, in order: (what, attempt, pid)."""
    if not path.exists():
        return []
    return [(what, int(attempt), int(pid)) for what, attempt, pid in
            (line.split() for line in path.read_text().splitlines())]


@activity.defn
async def wait_for_go(folder: str) -> str:
    """Runs until the file ``go-ATTEMPT`` appears in ``folder`` (waiting, not blocking)."""
    attempt = activity.info().attempt
    record("wait_for_go", attempt)
    go = Path(folder) / f"go-{attempt}"
    while not go.exists():
        await asyncio.sleep(0.02)
    return f"attempt {attempt}"


@workflow.defn
class WaitForGo:
    @workflow.run
    async def run(self, folder: str) -> str:
        return await workflow.execute_activity(
            wait_for_go, folder, start_to_close_timeout=timedelta(seconds=120),
            retry_policy=RETRY_AT_ONCE)
