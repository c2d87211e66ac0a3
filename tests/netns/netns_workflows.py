"""Workflows and activities shared by the test process and the worker processes in
their network namespaces."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta

from perdure import RetryPolicy, activity, workflow


def _record(phase: str, index: int) -> None:
    """One line per activity attempt start and end, in the file the test names:
    ``phase host pid workflow_id seq attempt index wall_time``."""
    path = os.environ.get("PERDURE_TEST_EXECUTIONS")
    if not path:
        return
    info = activity.info()
    line = (f"{phase} {os.environ.get('PERDURE_TEST_HOST', '?')} {os.getpid()} "
            f"{info.workflow_id} {info.activity_id} {info.attempt} {index} {time.time():.3f}\n")
    with open(path, "a") as f:  # one short append: atomic between processes
        f.write(line)


@activity.defn
async def hop(workflow_no: int, index: int) -> int:
    _record("start", index)
    await asyncio.sleep(float(os.environ.get("PERDURE_TEST_STEP_SECONDS", "0.2")))
    _record("end", index)
    return workflow_no * 1000 + index


@workflow.defn
class Relay:
    """``steps`` activities one after another; returns the sum of their results."""

    @workflow.run
    async def run(self, workflow_no: int, steps: int) -> int:
        total = 0
        for index in range(steps):
            total += await workflow.execute_activity(
                hop, workflow_no, index, start_to_close_timeout=timedelta(seconds=60),
                retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50)),
            )
        return total


def expected_result(workflow_no: int, steps: int) -> int:
    return sum(workflow_no * 1000 + index for index in range(steps))
