"""A workflow with a slow update handler, shared by the update crash test and its worker."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

from perdure import RetryPolicy, activity, workflow


def _record(line: str) -> None:
    path = os.environ.get("PERDURE_TEST_EXECUTIONS")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


@activity.defn
async def post_entry(amount: int) -> int:
    _record(f"{amount} {activity.info().attempt} {os.getpid()}")
    await asyncio.sleep(float(os.environ.get("PERDURE_TEST_STEP_SECONDS", "1.0")))
    return amount


@workflow.defn
class Ledger:
    def __init__(self) -> None:
        self.balance = 0
        self.closed = False

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.closed)
        return self.balance

    @workflow.update
    async def post(self, amount: int) -> int:
        self.balance += await workflow.execute_activity(
            post_entry, amount, start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100)),
        )
        return self.balance

    @workflow.signal
    def close(self) -> None:
        self.closed = True
