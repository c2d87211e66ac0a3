"""Async activity completion: an activity leaves its attempt open
(``activity.raise_complete_async()``) and another system completes, fails or heartbeats
it later through ``Client.get_async_activity_handle``, from any process."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from perdure import (
    ActivityError,
    ActivityNotFoundError,
    ApplicationError,
    AsyncActivityCancelledError,
    Client,
    ConfigurationError,
    InvalidArgumentError,
    NotInActivityError,
    RetryPolicy,
    Worker,
    WorkerOptions,
    activity,
    workflow,
)
from perdure.history import ActivityCompleted
from perdure.testing import WorkflowEnvironment

from ._helpers import wait_until

Q = "async-completion"


@dataclasses.dataclass
class Asked:
    attempt: int
    token: bytes
    previous: list[str]


class _Seen:
    def __init__(self) -> None:
        self.asked: list[Asked] = []
        self.client: Client | None = None


SEEN = _Seen()


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    global SEEN
    SEEN = _Seen()
    yield


@activity.defn
async def ask_for_approval(change: str) -> str:
    """Hands its task token to "the approver" and leaves the attempt open."""
    info = activity.info()
    SEEN.asked.append(Asked(info.attempt, info.task_token, activity.heartbeat_details(str)))
    activity.raise_complete_async()


@activity.defn
def ask_for_approval_in_a_thread(change: str) -> str:
    info = activity.info()
    SEEN.asked.append(Asked(info.attempt, info.task_token, []))
    activity.raise_complete_async()


@activity.defn
async def completes_itself(change: str) -> str:
    """The token comes back before the worker has left the attempt open."""
    assert SEEN.client is not None
    handle = SEEN.client.get_async_activity_handle(task_token=activity.info().task_token)
    await handle.complete(f"done at once: {change}")
    activity.raise_complete_async()


ACTIVITIES = [ask_for_approval, ask_for_approval_in_a_thread, completes_itself]


@workflow.defn
class Change:
    """Runs one activity and reports its result, or what its failure was."""

    def __init__(self) -> None:
        self.cancel_it = False
        self.finish = False

    @workflow.run
    async def run(self, name: str, start_to_close: float, heartbeat: float | None,
                  attempts: int) -> str:
        handle = workflow.start_activity(
            name, "deploy v2", start_to_close_timeout=start_to_close,
            heartbeat_timeout=heartbeat, result_type=str,
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50),
                                     maximum_attempts=attempts),
        )
        await workflow.wait_condition(lambda: self.cancel_it or handle.done())
        if self.cancel_it:
            handle.cancel()
            await workflow.wait_condition(lambda: self.finish)
            return "cancelled"
        try:
            return str(await handle)
        except ActivityError as err:
            cause = err.__cause__
            return (f"{type(cause).__name__}:{getattr(cause, 'type', '')}:"
                    f"{getattr(cause, 'timeout_type', '')}:{cause}")

    @workflow.signal
    def cancel(self) -> None:
        self.cancel_it = True

    @workflow.signal
    def done(self) -> None:
        self.finish = True


async def _asked(count: int) -> list[Asked]:
    async def check() -> bool:
        return len(SEEN.asked) >= count

    await wait_until(check, what=f"attempt {count} to ask", timeout=10)
    return SEEN.asked


async def _start(env: WorkflowEnvironment, wf_id: str, name: str = "ask_for_approval", *,
                 start_to_close: float = 60.0, heartbeat: float | None = None,
                 attempts: int = 3) -> Any:
    return await env.client.start_workflow(Change.run, name, start_to_close, heartbeat,
                                           attempts, id=wf_id, task_queue=Q)


@pytest.mark.parametrize("name", ["ask_for_approval", "ask_for_approval_in_a_thread"])
async def test_completed_from_another_client_after_its_worker_left(
    real_env: WorkflowEnvironment, database_url: str, name: str,
) -> None:
    async with real_env.worker(task_queue=Q, workflows=[Change], activities=ACTIVITIES):
        handle = await _start(real_env, f"approve-{name}", name)
        [asked] = await _asked(1)
    # its worker has left; another sweeps dead workers' and orphaned leases meanwhile:
    # the open attempt is neither handed back nor run again
    sweeper = real_env.worker(task_queue="elsewhere", activities=ACTIVITIES,
                              options=WorkerOptions(liveness_interval=0.05,
                                                    dead_worker_timeout=0.2))
    async with sweeper:
        await asyncio.sleep(0.6)
    described = await handle.describe()
    assert (str(described.status), len(described.pending_activities)) == ("running", 1)
    assert described.pending_activities[0].last_worker_identity == "(async completion)"
    approver = await Client.connect(database_url)  # another connection, as another process
    try:
        await approver.get_async_activity_handle(task_token=asked.token).heartbeat("reading")
        await approver.get_async_activity_handle(task_token=asked.token).complete("approved")
        with pytest.raises(ActivityNotFoundError, match="no such attempt is running"):
            await approver.get_async_activity_handle(task_token=asked.token).complete("twice")
    finally:
        await approver.close()
    async with real_env.worker(task_queue=Q, workflows=[Change], activities=ACTIVITIES):
        assert await handle.result(timeout=10) == "approved"
    history = await handle.fetch_history()
    assert [e.attempt for e in history.events if isinstance(e, ActivityCompleted)] == [1]
    assert [a.attempt for a in SEEN.asked] == [1]


async def test_fail_goes_through_the_retry_policy(real_env: WorkflowEnvironment) -> None:
    async with real_env.worker(task_queue=Q, workflows=[Change], activities=ACTIVITIES):
        handle = await _start(real_env, "rejected", attempts=2)
        [first] = await _asked(1)
        await real_env.client.get_async_activity_handle(task_token=first.token).fail(
            ValueError("reviewer is on holiday"))
        _, second = await _asked(2)  # retried, by its policy
        # the first attempt's token names an attempt that is over
        with pytest.raises(ActivityNotFoundError, match="attempt 1"):
            await real_env.client.get_async_activity_handle(task_token=first.token).fail(
                ValueError("late"))
        await real_env.client.get_async_activity_handle(task_token=second.token).fail(
            ApplicationError("change rejected", type="Rejected"))
        assert await handle.result(timeout=10) == "ApplicationError:Rejected::change rejected"
    assert [a.attempt for a in SEEN.asked] == [1, 2]


async def test_heartbeats_from_the_handle_push_the_heartbeat_timeout_back(
    real_env: WorkflowEnvironment,
) -> None:
    async with real_env.worker(task_queue=Q, workflows=[Change], activities=ACTIVITIES):
        handle = await _start(real_env, "beating", heartbeat=0.5, attempts=1)
        [asked] = await _asked(1)
        approver = real_env.client.get_async_activity_handle(task_token=asked.token)
        for _ in range(8):  # 1.2 s in all, well past the 0.5 s heartbeat timeout
            await approver.heartbeat("still reviewing")
            await asyncio.sleep(0.15)
        await approver.complete("approved after a long look")
        assert await handle.result(timeout=10) == "approved after a long look"


async def test_the_heartbeat_timeout_fires_for_an_open_attempt(
    real_env: WorkflowEnvironment,
) -> None:
    async with real_env.worker(task_queue=Q, workflows=[Change], activities=ACTIVITIES):
        handle = await _start(real_env, "silent", heartbeat=0.3, attempts=2)
        [first] = await _asked(1)
        await real_env.client.get_async_activity_handle(task_token=first.token).heartbeat(
            "half reviewed")
        # then silence: the attempt times out and the next one gets the details
        _, second = await _asked(2)
        assert second.previous == ["half reviewed"]
        with pytest.raises(ActivityNotFoundError):
            await real_env.client.get_async_activity_handle(task_token=first.token).complete(
                "too late")
        result = await handle.result(timeout=10)
    assert result.startswith("TimeoutFailure:TimeoutFailure:heartbeat:"), result


async def test_a_late_completion_is_rejected_and_by_id_completes_the_current_attempt(
    real_env: WorkflowEnvironment,
) -> None:
    async with real_env.worker(task_queue=Q, workflows=[Change], activities=ACTIVITIES):
        handle = await _start(real_env, "late", start_to_close=0.3, attempts=3)
        first, _ = await _asked(2)  # attempt 1 timed out (start-to-close) and was retried
        with pytest.raises(ActivityNotFoundError):
            await real_env.client.get_async_activity_handle(task_token=first.token).complete(
                "late")
        current = real_env.client.get_async_activity_handle(workflow_id="late",
                                                           activity_id="1")
        await current.complete("on time")
        assert await handle.result(timeout=10) == "on time"
    completed = [e for e in (await handle.fetch_history()).events
                 if isinstance(e, ActivityCompleted)]
    assert [e.attempt for e in completed] == [2]


async def test_a_requested_cancellation_is_seen_through_heartbeat(
    real_env: WorkflowEnvironment,
) -> None:
    async with real_env.worker(task_queue=Q, workflows=[Change], activities=ACTIVITIES):
        handle = await _start(real_env, "withdrawn")
        [asked] = await _asked(1)
        approver = real_env.client.get_async_activity_handle(task_token=asked.token)
        await approver.heartbeat()  # not cancelled yet
        await handle.signal(Change.cancel)

        async def told() -> bool:
            try:
                await approver.heartbeat()
            except AsyncActivityCancelledError:
                return True
            return False

        await wait_until(told, what="the handle's heartbeat to raise")
        await approver.report_cancellation("withdrawn by the author")
        with pytest.raises(ActivityNotFoundError):
            await approver.report_cancellation()
        assert (await handle.describe()).pending_activities == []
        await handle.signal(Change.done)
        assert await handle.result(timeout=10) == "cancelled"


async def test_a_cancellation_reported_unasked_ends_the_activity_without_retry(
    real_env: WorkflowEnvironment,
) -> None:
    async with real_env.worker(task_queue=Q, workflows=[Change], activities=ACTIVITIES):
        handle = await _start(real_env, "gave-up", attempts=3)
        [asked] = await _asked(1)
        await real_env.client.get_async_activity_handle(
            task_token=asked.token).report_cancellation()
        result = await handle.result(timeout=10)
    assert result.startswith("CancelledFailure:CancelledFailure::"), result
    assert [a.attempt for a in SEEN.asked] == [1]


async def test_the_token_may_come_back_before_the_attempt_is_left_open(
    real_env: WorkflowEnvironment,
) -> None:
    SEEN.client = real_env.client
    async with real_env.worker(task_queue=Q, workflows=[Change], activities=ACTIVITIES):
        handle = await _start(real_env, "at-once", "completes_itself")
        assert await handle.result(timeout=10) == "done at once: deploy v2"


async def test_an_open_attempt_ends_with_its_run(real_env: WorkflowEnvironment) -> None:
    async with real_env.worker(task_queue=Q, workflows=[Change], activities=ACTIVITIES):
        handle = await _start(real_env, "terminated")
        [asked] = await _asked(1)
        await handle.terminate("not needed")
        assert (await handle.describe()).pending_activities == []
        approver = real_env.client.get_async_activity_handle(task_token=asked.token)
        with pytest.raises(ActivityNotFoundError, match="run has closed"):
            await approver.heartbeat()
        with pytest.raises(ActivityNotFoundError):
            await approver.complete("too late")


async def test_bad_handles_and_identities_are_refused(env: WorkflowEnvironment) -> None:
    client = env.client
    with pytest.raises(InvalidArgumentError, match="not a Perdure activity task token"):
        client.get_async_activity_handle(task_token=b"garbage")
    with pytest.raises(InvalidArgumentError, match="either task_token"):
        client.get_async_activity_handle(task_token=b"x", workflow_id="w", activity_id="1")
    with pytest.raises(InvalidArgumentError, match="needs task_token"):
        client.get_async_activity_handle(workflow_id="w")
    with pytest.raises(InvalidArgumentError, match="not an activity id"):
        client.get_async_activity_handle(workflow_id="w", activity_id="charge")
    with pytest.raises(ActivityNotFoundError):
        await client.get_async_activity_handle(workflow_id="nobody", activity_id="1").complete()
    with pytest.raises(NotInActivityError):
        activity.raise_complete_async()
    with pytest.raises(ConfigurationError, match="identity"):
        Worker(client, task_queue=Q, activities=ACTIVITIES, identity="(async completion)")
