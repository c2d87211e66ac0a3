"""Workflows and activities of the liveness tests: a worker frozen (SIGSTOP) or starved
(its event loop blocked) while it holds work. Shared by the test process and
``liveness_worker_process.py``; every run of an activity or a blocking activation is
written to the file named by ``PERDURE_TEST_EXECUTIONS``: ``what attempt pid``."""

from __future__ import annotations

import asyncio
import os
import time
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


@activity.defn
async def block_loop(name: str, seconds: float) -> str:
    """Blocks its worker's event loop (``time.sleep`` in an async activity) for ``seconds``."""
    record(name, activity.info().attempt)
    time.sleep(seconds)  # noqa: ASYNC251 (the point: the event loop cannot run meanwhile)
    return name


@workflow.defn
class BlockTheLoop:
    """Blocks its worker's event loop in workflow code (the determinism guard must be off),
    then in two activities in turn."""

    @workflow.run
    async def run(self, seconds: float) -> list[str]:
        if not workflow.unsafe.is_replaying():
            record("activation", 1)
            time.sleep(seconds)  # noqa: ASYNC251 (the point: the event loop cannot run)
        done = []
        for name in ("first", "second"):
            done.append(await workflow.execute_activity(
                block_loop, name, seconds,
                start_to_close_timeout=timedelta(seconds=120), retry_policy=RETRY_AT_ONCE))
        return done


@workflow.defn
class OneBlockingActivity:
    """One activity that blocks its worker's event loop for ``seconds``."""

    @workflow.run
    async def run(self, seconds: float) -> str:
        result: str = await workflow.execute_activity(
            block_loop, "only", seconds, start_to_close_timeout=timedelta(seconds=120),
            retry_policy=RETRY_AT_ONCE)
        return result
