"""A query sees every signal, update and activity result acknowledged before it was made,
whether the client answers it (given the method) or a worker does (given the name)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from perdure import activity, workflow
from perdure.testing import WorkflowEnvironment

from ._helpers import wait_until

TQ = "query-consistency"
ACTIVITIES = "query-consistency-activities"


@workflow.defn
class Counter:
    """Counts ``add`` signals; an activity result and a timer also move its state."""

    def __init__(self) -> None:
        self.total = 0
        self.done = False
        self.log: list[str] = []

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.done)
        return self.total

    @workflow.signal
    def add(self, amount: int) -> None:
        self.total += amount

    @workflow.signal
    def finish(self) -> None:
        self.done = True

    @workflow.query
    def value(self) -> int:
        return self.total


@workflow.defn
class Broken:
    """Its signal handler has a bug: the signal can never be applied."""

    def __init__(self) -> None:
        self.seen = 0

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal
    def poke(self) -> None:
        self.seen += 1
        raise KeyError("a bug in the handler")

    @workflow.query
    def count(self) -> int:
        return self.seen


@activity.defn
async def slow_double(value: int) -> int:
    await asyncio.sleep(0.05)
    return value * 2


@workflow.defn
class Doubler:
    def __init__(self) -> None:
        self.result: int | None = None

    @workflow.run
    async def run(self, value: int) -> int:
        self.result = await workflow.execute_activity(
            slow_double, value, task_queue=ACTIVITIES, start_to_close_timeout=timedelta(seconds=10))
        await workflow.wait_condition(lambda: False)
        return self.result

    @workflow.query
    def seen(self) -> int | None:
        return self.result


async def test_a_query_by_method_sees_a_signal_with_no_worker(env: WorkflowEnvironment) -> None:
    """No worker runs at all: the signals wait in the inbox, and the query counts them."""
    handle = await env.client.start_workflow(Counter.run, id="qc-noworker", task_queue=TQ)
    for expected in range(1, 6):
        await handle.signal(Counter.add, 1)
        assert await handle.query(Counter.value) == expected


async def test_a_query_sees_each_acknowledged_signal_at_once(env: WorkflowEnvironment) -> None:
    """With a worker running, ask right after each signal returns, both ways, 20 times."""
    async with env.worker(task_queue=TQ, workflows=[Counter]):
        handle = await env.client.start_workflow(Counter.run, id="qc-live", task_queue=TQ)
        for expected in range(1, 21):
            await handle.signal(Counter.add, 1)
            by_method = await handle.query(Counter.value)
            await handle.signal(Counter.add, 1)
            by_name = await handle.query("value")
            assert (by_method, by_name) == (2 * expected - 1, 2 * expected)
        await handle.signal(Counter.finish)
        assert await handle.result(timeout=10) == 40


async def test_a_query_sees_an_activity_result_recorded_before_it(
    env: WorkflowEnvironment,
) -> None:
    """An activity's result in the inbox (its workflow task not yet run) is seen too."""
    async with env.worker(task_queue=TQ, workflows=[Doubler]):
        handle = await env.client.start_workflow(Doubler.run, 21, id="qc-activity",
                                                 task_queue=TQ)
        await wait_until(lambda: _pending_activities(handle), what="the activity scheduled")
    async with env.worker(task_queue=ACTIVITIES, activities=[slow_double]):
        # an activity-only worker: the result is recorded, no workflow task runs
        await wait_until(lambda: _pending_events(handle), what="the result in the inbox",
                         timeout=10)
    assert await handle.query(Doubler.seen) == 42


async def test_a_signal_that_cannot_be_applied_leaves_queries_answering(
    env: WorkflowEnvironment,
) -> None:
    """The handler's bug fails the workflow task; a query answers from the committed state
    rather than failing or hanging."""
    async with env.worker(task_queue=TQ, workflows=[Broken]):
        handle = await env.client.start_workflow(Broken.run, id="qc-broken", task_queue=TQ)
        await wait_until(lambda: _history_length_at_least(handle, 2), what="first task")
        await handle.signal(Broken.poke)
        assert await handle.query(Broken.count) == 0
        assert await handle.query("count") == 0
    await handle.terminate()


async def _pending_activities(handle: object) -> bool:
    return bool((await handle.describe()).pending_activities)  # type: ignore[attr-defined]


async def _pending_events(handle: object) -> bool:
    return (await handle.describe()).pending_events > 0  # type: ignore[attr-defined]


async def _history_length_at_least(handle: object, length: int) -> bool:
    return (await handle.describe()).history_length >= length  # type: ignore[attr-defined]


@workflow.defn
class Patched:
    def __init__(self) -> None:
        self.path = "none yet"

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal
    def go(self) -> None:
        self.path = "new path" if workflow.patched("go-v2") else "old path"

    @workflow.query
    def taken(self) -> str:
        return self.path


async def test_a_query_decides_pending_events_as_the_next_task_will(
    env: WorkflowEnvironment,
) -> None:
    """A patch first asked about in a pending signal's handler takes the new path, as the
    live workflow task will: not the old path, as a replay of recorded history would."""
    async with env.worker(task_queue=TQ, workflows=[Patched]):
        handle = await env.client.start_workflow(Patched.run, id="qc-patch", task_queue=TQ)
        await wait_until(lambda: _history_length_at_least(handle, 2), what="first task")
    await handle.signal(Patched.go)  # no worker: it waits in the inbox
    assert await handle.query(Patched.taken) == "new path"
    async with env.worker(task_queue=TQ, workflows=[Patched]):
        await wait_until(lambda: _no_pending(handle), what="the signal taken")
        assert await handle.query("taken") == "new path"
    await handle.terminate()


async def _no_pending(handle: object) -> bool:
    return (await handle.describe()).pending_events == 0  # type: ignore[attr-defined]
