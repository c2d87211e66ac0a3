"""Workflows and activities shared by the chaos tests and their worker subprocesses."""

from __future__ import annotations

import asyncio
import os
import random
import time
from datetime import timedelta

from perdure import RetryPolicy, activity, workflow

EXECUTIONS_ENV = "PERDURE_CHAOS_EXECUTIONS"
STEP_SECONDS_ENV = "PERDURE_CHAOS_STEP_SECONDS"


def step_value(key: int, index: int) -> int:
    """What activity ``index`` of workflow ``key`` returns."""
    return key * 1000 + index


def expected_result(key: int, count: int) -> list[int]:
    return [step_value(key, index) for index in range(count)]


def _record(line: str) -> None:
    """Append one line to the executions log: a single O_APPEND write, so lines from
    several processes never interleave (and a SIGKILL loses nothing already written)."""
    path = os.environ.get(EXECUTIONS_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@activity.defn
async def chaos_step(key: int, index: int) -> int:
    info = activity.info()
    # every execution, even one killed half-way: workflow id, seq, attempt, pid, time
    _record(f"{info.workflow_id} {info.activity_id} {info.attempt} {os.getpid()} "
            f"{time.time():.3f}")
    base = float(os.environ.get(STEP_SECONDS_ENV, "0.004"))
    await asyncio.sleep(base * (0.5 + random.random()))
    return step_value(key, index)


@workflow.defn
class ChaosSteps:
    @workflow.run
    async def run(self, key: int, count: int) -> list[int]:
        results = []
        for index in range(count):
            results.append(await workflow.execute_activity(
                chaos_step, key, index, start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50),
                                         maximum_interval=timedelta(seconds=1)),
            ))
        return results
