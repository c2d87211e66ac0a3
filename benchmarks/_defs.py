"""Workflows and activities the benchmarks run (imported by the worker subprocess too)."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta

from perdure import activity, workflow

TIMEOUT = timedelta(seconds=60)


@activity.defn
async def noop(i: int) -> int:
    """A no-op activity: the cost measured is Perdure's alone."""
    return i


@workflow.defn
class Sequential:
    """W1/W2: ``n`` sequential no-op activities."""

    @workflow.run
    async def run(self, n: int) -> int:
        total = 0
        for i in range(n):
            total += await workflow.execute_activity(noop, i, start_to_close_timeout=TIMEOUT)
        return total


@workflow.defn
class FanOut:
    """W3: ``branches`` concurrent branches of ``depth`` sequential activities."""

    @workflow.run
    async def run(self, branches: int, depth: int) -> int:
        async def branch(b: int) -> int:
            total = 0
            for i in range(depth):
                total += await workflow.execute_activity(
                    noop, b * depth + i, start_to_close_timeout=TIMEOUT
                )
            return total

        results = await asyncio.gather(*(branch(b) for b in range(branches)))
        return sum(results)


@workflow.defn
class Branch:
    """W3c: one of W3's branches as a child workflow: ``depth`` sequential activities."""

    @workflow.run
    async def run(self, b: int, depth: int) -> int:
        total = 0
        for i in range(depth):
            total += await workflow.execute_activity(
                noop, b * depth + i, start_to_close_timeout=TIMEOUT
            )
        return total


@workflow.defn
class ChildFanOut:
    """W3c: W3 with each branch a child workflow, ``branches`` of them started concurrently
    (``asyncio.gather`` of ``execute_child_workflow``; ids derived from this run)."""

    @workflow.run
    async def run(self, branches: int, depth: int) -> int:
        results = await asyncio.gather(*(
            workflow.execute_child_workflow(Branch.run, b, depth) for b in range(branches)
        ))
        return sum(results)


@workflow.defn
class Waiter:
    """W4: waits (holding nothing but a row, ideally) until signalled."""

    def __init__(self) -> None:
        self.released = False

    @workflow.run
    async def run(self) -> str:
        await workflow.wait_condition(lambda: self.released)
        return "released"

    @workflow.signal
    def release(self) -> None:
        self.released = True


# ---------------------------------------------------------------- W5 (crash recovery)
SIDE_FILE_ENV = "PERDURE_BENCH_SIDE_FILE"
STEP_SECONDS = 0.2


@activity.defn
async def slow_step(i: int) -> int:
    """Sleeps STEP_SECONDS; logs its start and end to a side file to count re-executions."""
    info = activity.info()
    path = os.environ[SIDE_FILE_ENV]
    _log(path, f"start {i} {info.attempt} {os.getpid()} {time.time():.6f} {info.idempotency_key}")
    await asyncio.sleep(STEP_SECONDS)
    _log(path, f"end {i} {info.attempt} {os.getpid()} {time.time():.6f} {info.idempotency_key}")
    return i


def _log(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@workflow.defn
class Recovery:
    """W5: ``n`` sequential activities of STEP_SECONDS each."""

    @workflow.run
    async def run(self, n: int) -> int:
        total = 0
        for i in range(n):
            total += await workflow.execute_activity(
                slow_step, i, start_to_close_timeout=timedelta(seconds=30)
            )
        return total
