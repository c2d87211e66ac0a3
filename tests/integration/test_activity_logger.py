"""``activity.logger`` names the attempt each record comes from, in async and thread
activities."""

from __future__ import annotations

import logging
import threading

import pytest

from perdure import RetryPolicy, activity, workflow
from perdure.testing import WorkflowEnvironment

Q = "activity-logger"


@activity.defn
async def charge(order: int) -> None:
    if activity.info().attempt == 1:
        activity.logger.warning("charging order %d failed", order, extra={"order": order})
        raise ConnectionError("card network down")
    activity.logger.info("charged order %d", order, extra={"order": order})


@activity.defn
def ship(order: int) -> str:
    activity.logger.info("shipping order %d", order)
    return threading.current_thread().name


@workflow.defn
class Order:
    @workflow.run
    async def run(self, order: int) -> str:
        policy = RetryPolicy(maximum_attempts=2)
        await workflow.execute_activity(charge, order, start_to_close_timeout=10,
                                        retry_policy=policy)
        return str(await workflow.execute_activity(ship, order, start_to_close_timeout=10))


async def test_records_name_the_attempt(env: WorkflowEnvironment,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="perdure.activity.user")
    async with env.worker(task_queue=Q, workflows=[Order], activities=[charge, ship]):
        handle = await env.client.start_workflow(Order.run, 7, id="order-7", task_queue=Q)
        thread = await handle.result(timeout=20)
    records = [r for r in caplog.records if r.name == "perdure.activity.user"]
    assert [r.getMessage() for r in records] == [
        "[charge, workflow order-7, activity 1, attempt 1] charging order 7 failed",
        "[charge, workflow order-7, activity 1, attempt 2] charged order 7",
        "[ship, workflow order-7, activity 2, attempt 1] shipping order 7",
    ]
    first, second, third = records
    assert (first.workflow_id, first.run_id, first.activity_id,  # type: ignore[attr-defined]
            first.activity_type, first.attempt) == (  # type: ignore[attr-defined]
        "order-7", handle.run_id, "1", "charge", 1)
    assert second.attempt == 2 and second.order == 7  # type: ignore[attr-defined]
    assert third.activity_type == "ship"  # type: ignore[attr-defined]
    assert third.threadName == thread != threading.current_thread().name


def test_outside_an_activity_the_logger_adds_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="perdure.activity.user")
    activity.logger.info("plain")
    assert caplog.records[-1].getMessage() == "plain"
    assert not hasattr(caplog.records[-1], "workflow_id")
