"""Updates: request/response into a running workflow, with validators; durable once accepted."""

from __future__ import annotations

import asyncio

import pytest

from perdure import (
    ApplicationError,
    UpdateFailedError,
    UpdateRejectedError,
    WorkflowNotFoundError,
    WorkflowStatus,
    activity,
    workflow,
)
from perdure.history import UpdateAccepted, UpdateCompleted, event_type_name
from perdure.testing import WorkflowEnvironment

from ._helpers import wait_until

TQ = "updates"
CALLS: list[str] = []


@activity.defn
async def store_item(item: str) -> str:
    CALLS.append(item)
    return item.upper()


@workflow.defn
class Cart:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.checked_out = False

    @workflow.run
    async def run(self) -> list[str]:
        await workflow.wait_condition(lambda: self.checked_out)
        return self.items

    @workflow.update
    async def add(self, item: str) -> int:
        stored: str = await workflow.execute_activity(store_item, item,
                                                      start_to_close_timeout=10)
        self.items.append(stored)
        return len(self.items)

    @workflow.update_validator(add)
    def check_add(self, item: str) -> None:
        if not item:
            raise ValueError("an item needs a name")

    @workflow.update
    def checkout(self) -> int:
        self.checked_out = True
        return len(self.items)

    @workflow.update
    def broken(self, why: str) -> None:
        raise ApplicationError(why)

    @workflow.query
    def count(self) -> int:
        return len(self.items)


def _worker(env: WorkflowEnvironment):  # type: ignore[no-untyped-def]
    return env.worker(task_queue=TQ, workflows=[Cart], activities=[store_item])


async def test_update_returns_handler_value_and_is_recorded(env: WorkflowEnvironment) -> None:
    async with _worker(env):
        handle = await env.client.start_workflow(Cart.run, id="cart-1", task_queue=TQ)
        assert await handle.execute_update(Cart.add, "apple") == 1
        assert await handle.execute_update("add", "pear") == 2
        assert await handle.execute_update(Cart.checkout) == 2
        assert await handle.result(timeout=10) == ["APPLE", "PEAR"]
    events = (await handle.fetch_history()).events
    accepted = [e.name for e in events if isinstance(e, UpdateAccepted)]
    completed = [bytes(e.result) for e in events if isinstance(e, UpdateCompleted)]
    assert accepted == ["add", "add", "checkout"]
    assert completed == [b"1", b"2", b"2"]


async def test_validator_rejection_leaves_no_trace(env: WorkflowEnvironment) -> None:
    async with _worker(env):
        handle = await env.client.start_workflow(Cart.run, id="cart-2", task_queue=TQ)
        assert await handle.execute_update(Cart.add, "apple") == 1
        before = (await handle.fetch_history()).events
        with pytest.raises(UpdateRejectedError, match="an item needs a name") as info:
            await handle.execute_update(Cart.add, "")
        assert isinstance(info.value.cause, ApplicationError)
        assert info.value.cause.type == "ValueError"
        with pytest.raises(UpdateRejectedError, match="defines no update 'remove'"):
            await handle.execute_update("remove", "apple")
        after = (await handle.fetch_history()).events
        assert after == before  # not even an empty workflow task in history
        await handle.execute_update(Cart.checkout)
        assert await handle.result(timeout=10) == ["APPLE"]
        # a closed run takes no updates
        with pytest.raises(WorkflowNotFoundError, match="not running"):
            await handle.execute_update(Cart.add, "late")


async def test_failing_handler_fails_the_update_not_the_workflow(
    env: WorkflowEnvironment,
) -> None:
    async with _worker(env):
        handle = await env.client.start_workflow(Cart.run, id="cart-3", task_queue=TQ)
        with pytest.raises(UpdateFailedError, match="out of stock") as info:
            await handle.execute_update(Cart.broken, "out of stock")
        assert not isinstance(info.value, UpdateRejectedError)
        assert (await handle.describe()).status == WorkflowStatus.RUNNING
        assert await handle.execute_update(Cart.add, "fig") == 1
        await handle.execute_update(Cart.checkout)
        assert await handle.result(timeout=10) == ["FIG"]


async def test_same_update_id_runs_once(env: WorkflowEnvironment) -> None:
    CALLS.clear()
    async with _worker(env):
        handle = await env.client.start_workflow(Cart.run, id="cart-4", task_queue=TQ)
        first = await handle.execute_update(Cart.add, "kiwi", update_id="u-1")
        again = await handle.execute_update(Cart.add, "kiwi", update_id="u-1")
        assert first == again == 1
        assert CALLS == ["kiwi"]
        assert await handle.query(Cart.count) == 1
        await handle.execute_update(Cart.checkout)


async def test_update_sent_before_any_worker_runs(env: WorkflowEnvironment) -> None:
    handle = await env.client.start_workflow(Cart.run, id="cart-5", task_queue=TQ)
    pending = asyncio.ensure_future(handle.execute_update(Cart.add, "plum"))
    await asyncio.sleep(0.05)
    assert not pending.done()  # nothing can answer yet: it waits, durably, in the inbox
    async with _worker(env):
        assert await asyncio.wait_for(pending, 10) == 1
        await handle.execute_update(Cart.checkout)
        assert await handle.result(timeout=10) == ["PLUM"]


async def test_update_outstanding_when_run_closes_fails(env: WorkflowEnvironment) -> None:
    handle = await env.client.start_workflow(Cart.run, id="cart-6", task_queue=TQ)
    pending = asyncio.ensure_future(handle.execute_update(Cart.add, "never"))
    await wait_until(lambda: _has_pending_event(handle), what="update request in the inbox")
    await handle.terminate("closing shop")
    with pytest.raises(UpdateFailedError, match="closed"):
        await asyncio.wait_for(pending, 10)


async def _has_pending_event(handle) -> bool:  # type: ignore[no-untyped-def]
    return bool((await handle.describe()).pending_events)


async def test_update_names_in_history_are_readable(env: WorkflowEnvironment) -> None:
    async with _worker(env):
        handle = await env.client.start_workflow(Cart.run, id="cart-7", task_queue=TQ)
        await handle.execute_update(Cart.checkout)
        await handle.result(timeout=10)
    names = [event_type_name(e) for e in (await handle.fetch_history()).events]
    assert names.index("UpdateAccepted") < names.index("UpdateCompleted")
    assert "UpdateRequested" not in names
