"""Integration tests for activities on the real SQLite store.

Every test runs workflows and activities on real workers against a real store
(through the ``env`` fixture: a time-skipping environment). Durations are kept
short: retry back-off is skipped by the virtual clock whenever the workers are
idle; timeouts that fire while an activity runs are a fraction of a second.
Assertions are on recorded values (attempt numbers, virtual times, history),
never on wall-clock durations.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pydantic
import pytest

from perdure import (
    ActivityError,
    ApplicationError,
    RetryPolicy,
    TimeoutFailure,
    WorkflowFailureError,
    activity,
    workflow,
)
from perdure.history import ActivityCompleted, ActivityFailed, ActivityTimedOut
from perdure.testing import WorkflowEnvironment

Q = "activities"
"""The task queue the test workers serve."""


# --------------------------------------------------------------------------- shared state
class _State:
    """What activities record, reset before every test."""

    def __init__(self) -> None:
        self.clock: Any = None
        self.calls: list[dict[str, Any]] = []
        self.events: dict[str, asyncio.Event] = {}
        self.thread_events: dict[str, threading.Event] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def event(self, name: str) -> asyncio.Event:
        return self.events.setdefault(name, asyncio.Event())

    def set_event(self, name: str) -> None:
        """Set an asyncio event from any thread."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.event(name).set)

    def record(self, **extra: Any) -> None:
        info = activity.info()
        self.calls.append(
            {
                "attempt": info.attempt,
                "at": self.clock.now() if self.clock is not None else None,
                "thread": threading.current_thread().name,
                "info": info,
                **extra,
            }
        )

    def attempts(self, activity_type: str | None = None) -> list[int]:
        return [
            c["attempt"]
            for c in self.calls
            if activity_type is None or c["info"].activity_type == activity_type
        ]


STATE = _State()


@pytest.fixture(autouse=True)
def _reset_state(env: WorkflowEnvironment) -> Iterator[None]:
    global STATE
    STATE = _State()
    STATE.clock = env.clock
    STATE.loop = asyncio.get_event_loop()
    yield


# --------------------------------------------------------------------------- payload types
@dataclasses.dataclass
class Point:
    x: int
    y: int


class Profile(pydantic.BaseModel):
    name: str
    tags: list[str]
    score: float


class QuotaExceeded(Exception):
    """A user-defined error type (recorded module-qualified)."""


class StorageError(Exception):
    pass


# --------------------------------------------------------------------------- activities
@activity.defn
async def make_point(x: int, y: int) -> Point:
    STATE.record()
    return Point(x=x * 10, y=y * 10)


@activity.defn
def make_profile(name: str, tags: list[str]) -> Profile:
    STATE.record()
    return Profile(name=name.upper(), tags=sorted(tags), score=0.5)


@activity.defn
async def add(a: int, b: int) -> int:
    return a + b


@activity.defn
def ratio(a: int, b: int) -> float:
    return a / b


@activity.defn
async def words(text: str) -> list[str]:
    return text.split()


@activity.defn
def counts(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for word in text.split():
        out[word] = out.get(word, 0) + 1
    return out


@activity.defn
async def is_even(n: int) -> bool:
    return n % 2 == 0


@activity.defn
async def nothing() -> None:
    return None


@activity.defn
async def flaky(succeed_on: int) -> str:
    """Fails with ValueError until attempt ``succeed_on`` (0: never succeeds)."""
    STATE.record()
    attempt = activity.info().attempt
    if succeed_on and attempt >= succeed_on:
        return f"ok on attempt {attempt}"
    raise ValueError(f"attempt {attempt} failed")


@activity.defn
def flaky_sync(succeed_on: int) -> str:
    STATE.record()
    attempt = activity.info().attempt
    if attempt >= succeed_on:
        return f"sync ok on attempt {attempt}"
    raise RuntimeError(f"sync attempt {attempt} failed")


@activity.defn
async def raise_quota() -> str:
    STATE.record()
    raise QuotaExceeded("quota exceeded for tenant 7")


@activity.defn
async def raise_app_error(kind: str, non_retryable: bool) -> str:
    STATE.record()
    raise ApplicationError(f"{kind} happened", {"tenant": 7}, type=kind,
                           non_retryable=non_retryable)


@activity.defn
async def hang_async(seconds: float) -> str:
    """Hangs (longer than any timeout under test), recording whether it was cancelled."""
    STATE.record()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        STATE.calls[-1]["cancelled"] = True
        STATE.event("hang_cancelled").set()
        raise
    return "finished"


@activity.defn
def hang_sync(seconds: float) -> str:
    """A thread-pool activity that hangs until cancelled (or ``seconds`` pass)."""
    STATE.record()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if activity.is_cancelled():
            STATE.set_event("sync_saw_cancel")
            return "stopped"
        time.sleep(0.01)
    return "finished"


@activity.defn
async def stalls_heartbeats(stall: float) -> str:
    """Heartbeats, stalls longer than the heartbeat timeout, then heartbeats again."""
    STATE.record(details=activity.heartbeat_details(str))
    call = STATE.calls[-1]
    activity.heartbeat(f"beat-{activity.info().attempt}")
    try:
        await asyncio.sleep(stall)
        # the next heartbeat tells this superseded attempt to stop
        activity.heartbeat("late")
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        call["cancelled"] = True
        raise
    return "finished"


@activity.defn
async def resumable(total: int) -> list[int]:
    """Processes items 0..total-1, heartbeating progress; attempt 1 crashes half-way."""
    previous = activity.heartbeat_details(int)
    start = previous[0] + 1 if previous else 0
    STATE.record(previous=previous, start=start)
    processed = []
    for item in range(start, total):
        processed.append(item)
        activity.heartbeat(item)
        if activity.info().attempt == 1 and item == total // 2:
            raise ConnectionError("lost connection mid-batch")
    return processed


@activity.defn
def resumable_sync(total: int) -> list[int]:
    previous = activity.heartbeat_details(int, str)
    start = previous[0] + 1 if previous else 0
    STATE.record(previous=previous, start=start)
    processed = []
    for item in range(start, total):
        processed.append(item)
        activity.heartbeat(item, f"item-{item}")
        if activity.info().attempt < 3 and item == start + 1:
            raise ConnectionError("lost connection mid-batch")
    return processed


@activity.defn
async def describe_self() -> str:
    STATE.record()
    if activity.info().attempt < 3:
        raise RuntimeError("try again")
    return activity.info().idempotency_key


@activity.defn
async def fails_with_chain(order_id: int) -> str:
    STATE.record()
    try:
        {}["order-" + str(order_id)]
    except KeyError as exc:
        try:
            raise StorageError("row lock timeout") from exc
        except StorageError as inner:
            raise ValueError(f"could not load order {order_id}") from inner
    return "unreachable"


@activity.defn
def fails_sync(order_id: int) -> str:
    STATE.record()
    raise QuotaExceeded(f"order {order_id}: over quota")


@activity.defn
async def late_returner() -> str:
    """Attempt 1 overruns start-to-close, ignores its cancellation and returns anyway."""
    STATE.record()
    attempt = activity.info().attempt
    if attempt == 1:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            STATE.calls[-1]["cancelled"] = True
        # keep going until the retry has completed, then return a (late) result
        await asyncio.wait_for(STATE.event("second_done").wait(), 5)
        STATE.calls[-1]["returned_late"] = True
        return "late result of attempt 1"
    STATE.event("second_done").set()
    return f"result of attempt {attempt}"


@activity.defn
async def overlapping_attempts() -> str:
    """Attempt 1 stops heartbeating (so attempt 2 starts) and returns while attempt 2 runs;
    attempt 2 heartbeats steadily and succeeds."""
    STATE.record()
    attempt = activity.info().attempt
    activity.heartbeat(attempt)
    if attempt == 1:
        # outlives its heartbeat timeout; returns while attempt 2 is running
        await STATE.event("second_started").wait()
        await asyncio.sleep(0.2)
        STATE.calls[0]["returned_late"] = True
        return "late result of attempt 1"
    STATE.event("second_started").set()
    for _ in range(20):
        await asyncio.sleep(0.05)
        activity.heartbeat(attempt)
    return f"result of attempt {attempt}"


# --------------------------------------------------------------------------- workflows
@dataclasses.dataclass
class Call:
    """What ``CallActivity`` should call and how."""

    activity: str
    args: list[Any] = dataclasses.field(default_factory=list)
    task_queue: str | None = None
    start_to_close: float | None = 10.0
    schedule_to_close: float | None = None
    schedule_to_start: float | None = None
    heartbeat: float | None = None
    initial_interval: float = 1.0
    backoff: float = 2.0
    maximum_interval: float | None = None
    maximum_attempts: int = 0
    non_retryable: list[str] = dataclasses.field(default_factory=list)
    catch: bool = True


@dataclasses.dataclass
class Outcome:
    """What the workflow saw: a result, or the ActivityError and its cause."""

    ok: bool
    result: Any = None
    error_class: str | None = None
    error_attempt: int | None = None
    error_activity_type: str | None = None
    cause_class: str | None = None
    cause_type: str | None = None
    cause_message: str | None = None
    cause_non_retryable: bool | None = None
    timeout_type: str | None = None


def _policy(call: Call) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=timedelta(seconds=call.initial_interval),
        backoff_coefficient=call.backoff,
        maximum_interval=(
            timedelta(seconds=call.maximum_interval) if call.maximum_interval else None
        ),
        maximum_attempts=call.maximum_attempts,
        non_retryable_error_types=call.non_retryable,
    )


@workflow.defn
class CallActivity:
    """Calls one activity by name with the given options and reports what it saw."""

    @workflow.run
    async def run(self, call: Call) -> Outcome:
        try:
            result = await workflow.execute_activity(
                call.activity,
                *call.args,
                task_queue=call.task_queue,
                start_to_close_timeout=call.start_to_close,
                schedule_to_close_timeout=call.schedule_to_close,
                schedule_to_start_timeout=call.schedule_to_start,
                heartbeat_timeout=call.heartbeat,
                retry_policy=_policy(call),
            )
        except ActivityError as err:
            if not call.catch:
                raise
            cause = err.__cause__
            return Outcome(
                ok=False,
                error_class=type(err).__name__,
                error_attempt=err.attempt,
                error_activity_type=err.activity_type,
                cause_class=type(cause).__name__,
                cause_type=getattr(cause, "type", None),
                cause_message=str(cause),
                cause_non_retryable=getattr(cause, "non_retryable", None),
                timeout_type=getattr(cause, "timeout_type", None),
            )
        return Outcome(ok=True, result=result)


async def call(env: WorkflowEnvironment, spec: Call, *, wf_id: str, **worker: Any) -> Outcome:
    """Run ``CallActivity`` for ``spec`` on a worker with ``worker`` options."""
    worker.setdefault("activities", ALL_ACTIVITIES)
    async with env.worker(task_queue=Q, workflows=[CallActivity], **worker):
        handle = await env.client.start_workflow(CallActivity.run, spec, id=wf_id, task_queue=Q)
        outcome = await handle.result()
    assert isinstance(outcome, Outcome)
    return outcome


@workflow.defn
class TypedResults:
    """Calls activities by function reference: results decode by return annotation."""

    @workflow.run
    async def run(self) -> list[list[Any]]:
        opts: dict[str, Any] = {"start_to_close_timeout": timedelta(seconds=10)}
        point = await workflow.execute_activity(make_point, 1, 2, **opts)
        profile = await workflow.execute_activity(make_profile, "ada", ["z", "a"], **opts)
        total = await workflow.execute_activity(add, 2, 3, **opts)
        quotient = await workflow.execute_activity(ratio, 1, 4, **opts)
        parts = await workflow.execute_activity(words, "to be or not", **opts)
        histogram = await workflow.execute_activity(counts, "a b a", **opts)
        even = await workflow.execute_activity(is_even, 4, **opts)
        none = await workflow.execute_activity(nothing, **opts)
        by_name = await workflow.execute_activity("make_point", 3, 4, result_type=Point, **opts)
        untyped = await workflow.execute_activity("make_point", 5, 6, **opts)
        return [
            [type(point).__name__, point.x, point.y],
            [type(profile).__name__, profile.name, profile.tags, profile.score],
            [type(total).__name__, total],
            [type(quotient).__name__, quotient],
            [type(parts).__name__, parts],
            [type(histogram).__name__, histogram],
            [type(even).__name__, even],
            [type(none).__name__, none],
            [type(by_name).__name__, by_name.x, by_name.y],
            [type(untyped).__name__, untyped],
        ]


@workflow.defn
class ReturnsPoint:
    @workflow.run
    async def run(self, x: int) -> Point:
        return await workflow.execute_activity(make_point, x, x + 1,
                                               start_to_close_timeout=timedelta(seconds=10))


@workflow.defn
class CancelActivity:
    """Starts an activity, cancels its handle when signalled, reports what it saw."""

    def __init__(self) -> None:
        self.cancel_now = False

    @workflow.run
    async def run(self, name: str) -> str:
        handle = workflow.start_activity(
            name, 30.0, start_to_close_timeout=timedelta(seconds=60),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )
        await workflow.wait_condition(lambda: self.cancel_now)
        assert handle.cancel() is True
        try:
            await handle
        except asyncio.CancelledError:
            return f"cancelled; done={handle.done()}"
        return "not cancelled"

    @workflow.signal
    def cancel_it(self) -> None:
        self.cancel_now = True


@workflow.defn
class OutlivesItsActivity:
    """Catches a schedule-to-close timeout and stays open until signalled."""

    def __init__(self) -> None:
        self.release = False

    @workflow.run
    async def run(self) -> str:
        try:
            await workflow.execute_activity(hang_async, 30.0,
                                            schedule_to_close_timeout=timedelta(seconds=0.4))
        except ActivityError as err:
            seen = f"{type(err.__cause__).__name__}:{getattr(err.__cause__, 'timeout_type', '')}"
        else:
            seen = "no error"
        await workflow.wait_condition(lambda: self.release)
        return seen

    @workflow.signal
    def go(self) -> None:
        self.release = True


@workflow.defn
class LetItFail:
    """Lets an activity's final failure propagate: the workflow fails."""

    @workflow.run
    async def run(self, name: str, order_id: int) -> str:
        return await workflow.execute_activity(
            name, order_id, start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )


@workflow.defn
class WaitsAfterActivity:
    """Runs ``late_returner`` then stays open until signalled (so late completions arrive
    while the run is still running)."""

    def __init__(self) -> None:
        self.release = False

    @workflow.run
    async def run(self) -> str:
        result = await workflow.execute_activity(
            late_returner, start_to_close_timeout=timedelta(seconds=0.3),
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=0.05),
                                     maximum_attempts=3),
        )
        await workflow.wait_condition(lambda: self.release)
        return result

    @workflow.signal
    def go(self) -> None:
        self.release = True


ALL_ACTIVITIES = [
    make_point, make_profile, add, ratio, words, counts, is_even, nothing, flaky, flaky_sync,
    raise_quota, raise_app_error, hang_async, hang_sync, stalls_heartbeats, resumable,
    resumable_sync, describe_self, fails_with_chain, fails_sync, late_returner,
    overlapping_attempts,
]


def _activity_events(events: list[Any], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


# =========================================================================== payloads
async def test_async_and_sync_activities_decode_results_by_return_hint(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=Q, workflows=[TypedResults], activities=ALL_ACTIVITIES):
        handle = await env.client.start_workflow(TypedResults.run, id="typed", task_queue=Q)
        summary = await handle.result()
    assert summary == [
        ["Point", 10, 20],
        ["Profile", "ADA", ["a", "z"], 0.5],
        ["int", 5],
        ["float", 0.25],
        ["list", ["to", "be", "or", "not"]],
        ["dict", {"a": 2, "b": 1}],
        ["bool", True],
        ["NoneType", None],
        ["Point", 30, 40],
        ["dict", {"x": 50, "y": 60}],
    ]
    threads = {c["info"].activity_type: c["thread"] for c in STATE.calls}
    # plain-def activities run in the worker's thread pool, async ones on the event loop
    assert threads["make_profile"].startswith("perdure-activity")
    assert threads["make_point"] == threading.current_thread().name


async def test_workflow_result_decodes_as_dataclass_on_client(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=Q, workflows=[ReturnsPoint], activities=[make_point]):
        handle = await env.client.start_workflow(ReturnsPoint.run, 4, id="point", task_queue=Q)
        result = await handle.result()
    assert result == Point(x=40, y=50)


async def test_activity_runs_on_another_task_queue(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue="tools", activities=[make_point]):
        outcome = await call(env, Call("make_point", [7, 8], task_queue="tools"),
                             wf_id="other-queue", activities=[])
    assert outcome.ok
    assert outcome.result == {"x": 70, "y": 80}
    assert [c["info"].task_queue for c in STATE.calls] == ["tools"]


# =========================================================================== retries
async def test_retries_until_success_with_growing_backoff(env: WorkflowEnvironment) -> None:
    spec = Call("flaky", [5], initial_interval=10, backoff=2, maximum_interval=30,
                maximum_attempts=6)
    outcome = await call(env, spec, wf_id="backoff")
    assert outcome.ok
    assert outcome.result == "ok on attempt 5"
    assert STATE.attempts() == [1, 2, 3, 4, 5]
    times = [c["at"] for c in STATE.calls]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # virtual time between attempts: initial 10s, doubled, capped at 30s
    expected = [10, 20, 30, 30]
    for gap, want in zip(gaps, expected, strict=True):
        assert want <= gap < want + 2, (gaps, expected)


async def test_default_maximum_interval_is_100x_initial(env: WorkflowEnvironment) -> None:
    spec = Call("flaky", [4], initial_interval=1, backoff=200, maximum_attempts=4)
    outcome = await call(env, spec, wf_id="default-cap")
    assert outcome.ok
    times = [c["at"] for c in STATE.calls]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    for gap, want in zip(gaps, [1, 100, 100], strict=True):
        assert want <= gap < want + 2, gaps


async def test_maximum_attempts_exhausted(env: WorkflowEnvironment) -> None:
    spec = Call("flaky", [0], initial_interval=1, maximum_attempts=3)
    outcome = await call(env, spec, wf_id="exhausted")
    assert not outcome.ok
    assert outcome.error_class == "ActivityError"
    assert outcome.error_attempt == 3
    assert outcome.error_activity_type == "flaky"
    assert outcome.cause_class == "ApplicationError"
    assert outcome.cause_type == "ValueError"
    assert outcome.cause_message == "attempt 3 failed"
    assert STATE.attempts() == [1, 2, 3]


async def test_sync_activity_retries(env: WorkflowEnvironment) -> None:
    outcome = await call(env, Call("flaky_sync", [3], maximum_attempts=5), wf_id="sync-retry")
    assert outcome.ok
    assert outcome.result == "sync ok on attempt 3"
    assert STATE.attempts() == [1, 2, 3]
    assert all(c["thread"].startswith("perdure-activity") for c in STATE.calls)


async def test_non_retryable_error_types_by_class_name(env: WorkflowEnvironment) -> None:
    spec = Call("raise_quota", non_retryable=["QuotaExceeded"])  # unlimited attempts
    outcome = await call(env, spec, wf_id="non-retryable-class")
    assert not outcome.ok
    assert STATE.attempts() == [1]
    assert outcome.error_attempt == 1
    assert outcome.cause_type == f"{QuotaExceeded.__module__}.QuotaExceeded"
    assert outcome.cause_message == "quota exceeded for tenant 7"


async def test_non_retryable_error_types_by_application_error_type(
    env: WorkflowEnvironment,
) -> None:
    spec = Call("raise_app_error", ["RateLimited", False], non_retryable=["RateLimited"])
    outcome = await call(env, spec, wf_id="non-retryable-type")
    assert not outcome.ok
    assert STATE.attempts() == [1]
    assert outcome.cause_type == "RateLimited"
    assert outcome.cause_message == "RateLimited happened"


async def test_other_error_types_are_retried(env: WorkflowEnvironment) -> None:
    spec = Call("raise_app_error", ["Transient", False], non_retryable=["RateLimited"],
                maximum_attempts=3)
    outcome = await call(env, spec, wf_id="retryable-type")
    assert not outcome.ok
    assert STATE.attempts() == [1, 2, 3]
    assert outcome.cause_type == "Transient"
    assert outcome.cause_non_retryable is False


async def test_application_error_non_retryable_stops_at_once(env: WorkflowEnvironment) -> None:
    spec = Call("raise_app_error", ["BadRequest", True])  # unlimited attempts
    outcome = await call(env, spec, wf_id="app-non-retryable")
    assert not outcome.ok
    assert STATE.attempts() == [1]
    assert outcome.error_attempt == 1
    assert outcome.cause_class == "ApplicationError"
    assert outcome.cause_type == "BadRequest"
    assert outcome.cause_non_retryable is True


async def test_application_error_details_survive(env: WorkflowEnvironment) -> None:
    spec = Call("raise_app_error", ["BadRequest", True], catch=False)
    async with env.worker(task_queue=Q, workflows=[CallActivity], activities=ALL_ACTIVITIES):
        handle = await env.client.start_workflow(CallActivity.run, spec, id="details",
                                                 task_queue=Q)
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
    cause = info.value.cause
    assert isinstance(cause, ActivityError)
    app = cause.__cause__
    assert isinstance(app, ApplicationError)
    assert app.details == ({"tenant": 7},)
    assert app.non_retryable is True


# =========================================================================== timeouts
async def test_start_to_close_timeout_is_retried_then_reported(env: WorkflowEnvironment) -> None:
    spec = Call("hang_async", [30.0], start_to_close=0.3, initial_interval=0.05,
                maximum_attempts=2)
    outcome = await call(env, spec, wf_id="s2c-async")
    assert not outcome.ok
    assert outcome.error_class == "ActivityError"
    assert outcome.cause_class == "TimeoutFailure"
    assert outcome.timeout_type == "start_to_close"
    assert outcome.error_attempt == 2
    assert STATE.attempts() == [1, 2]
    # the worker stopped each hung attempt
    assert [c.get("cancelled") for c in STATE.calls] == [True, True]


async def test_start_to_close_timeout_of_sync_activity(env: WorkflowEnvironment) -> None:
    spec = Call("hang_sync", [5.0], start_to_close=0.3, initial_interval=0.05,
                maximum_attempts=2)
    outcome = await call(env, spec, wf_id="s2c-sync")
    assert not outcome.ok
    assert outcome.cause_class == "TimeoutFailure"
    assert outcome.timeout_type == "start_to_close"
    assert outcome.error_attempt == 2
    assert STATE.attempts() == [1, 2]
    # the hung thread is told to stop (activity.is_cancelled() turns True)
    await asyncio.wait_for(STATE.event("sync_saw_cancel").wait(), 5)


async def test_schedule_to_close_timeout(env: WorkflowEnvironment) -> None:
    spec = Call("hang_async", [30.0], start_to_close=None, schedule_to_close=0.4)
    outcome = await call(env, spec, wf_id="sched2close")
    assert not outcome.ok
    assert outcome.cause_class == "TimeoutFailure"
    assert outcome.timeout_type == "schedule_to_close"
    assert STATE.attempts() == [1]
    # the hung attempt is told to stop
    await asyncio.wait_for(STATE.event("hang_cancelled").wait(), 5)


async def test_schedule_to_close_stops_the_attempt_while_the_workflow_goes_on(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=Q, workflows=[OutlivesItsActivity],
                          activities=ALL_ACTIVITIES):
        handle = await env.client.start_workflow(OutlivesItsActivity.run, id="s2c-open",
                                                 task_queue=Q)
        # the workflow is still running: only the timeout can stop the hung attempt
        await asyncio.wait_for(STATE.event("hang_cancelled").wait(), 5)
        await handle.signal(OutlivesItsActivity.go)
        assert await handle.result() == "TimeoutFailure:schedule_to_close"
    assert STATE.attempts() == [1]


@pytest.mark.parametrize(
    ("schedule_to_close", "timeout_type"),
    [
        # attempt 2 is cut short by the budget
        (10.6, "schedule_to_close"),
        # attempt 2 times out; the next retry (20s later) would pass the budget
        (25.0, "start_to_close"),
    ],
)
async def test_schedule_to_close_bounds_retries(
    env: WorkflowEnvironment, schedule_to_close: float, timeout_type: str
) -> None:
    spec = Call("hang_async", [30.0], start_to_close=0.4, schedule_to_close=schedule_to_close,
                initial_interval=10, backoff=2)
    outcome = await call(env, spec, wf_id="sched2close-retries")
    assert not outcome.ok
    assert outcome.cause_class == "TimeoutFailure"
    assert outcome.timeout_type == timeout_type
    assert outcome.error_attempt == 2
    assert STATE.attempts() == [1, 2]
    # the retry waited its 10s of (virtual) back-off
    assert STATE.calls[1]["at"] - STATE.calls[0]["at"] >= 10


async def test_schedule_to_start_timeout_when_no_worker_serves_the_queue(
    env: WorkflowEnvironment,
) -> None:
    spec = Call("make_point", [1, 2], task_queue="nobody-serves-this", schedule_to_start=0.3,
                maximum_attempts=5)
    outcome = await call(env, spec, wf_id="sched2start")
    assert not outcome.ok
    assert outcome.cause_class == "TimeoutFailure"
    assert outcome.timeout_type == "schedule_to_start"
    assert outcome.error_attempt == 1
    assert STATE.calls == []


async def test_heartbeat_timeout_is_retried_then_reported(env: WorkflowEnvironment) -> None:
    spec = Call("stalls_heartbeats", [0.8], start_to_close=10, heartbeat=0.3,
                initial_interval=0.05, maximum_attempts=2)
    outcome = await call(env, spec, wf_id="heartbeat-timeout")
    assert not outcome.ok
    assert outcome.cause_class == "TimeoutFailure"
    assert outcome.timeout_type == "heartbeat"
    assert outcome.error_attempt == 2
    assert STATE.attempts() == [1, 2]
    # the second attempt got the first attempt's last recorded heartbeat
    assert STATE.calls[0]["details"] == []
    assert STATE.calls[1]["details"] == ["beat-1"]
    # both stalled attempts were told to stop (at their next heartbeat or when the run ended)
    assert [c.get("cancelled") for c in STATE.calls] == [True, True]


async def test_timeout_failure_reaches_the_client(env: WorkflowEnvironment) -> None:
    spec = Call("hang_async", [30.0], start_to_close=0.2, maximum_attempts=1, catch=False)
    async with env.worker(task_queue=Q, workflows=[CallActivity], activities=ALL_ACTIVITIES):
        handle = await env.client.start_workflow(CallActivity.run, spec, id="timeout-client",
                                                 task_queue=Q)
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        history = await handle.fetch_history()
    cause = info.value.cause
    assert isinstance(cause, ActivityError)
    assert isinstance(cause.__cause__, TimeoutFailure)
    assert cause.__cause__.timeout_type == "start_to_close"
    timed_out = _activity_events(history.events, ActivityTimedOut)
    assert [(e.timeout_type, e.attempt) for e in timed_out] == [("start_to_close", 1)]


# =========================================================================== heartbeats
async def test_heartbeat_details_go_to_the_next_attempt(env: WorkflowEnvironment) -> None:
    outcome = await call(env, Call("resumable", [6], maximum_attempts=3), wf_id="resume")
    assert outcome.ok
    assert outcome.result == [4, 5]
    assert [(c["attempt"], c["previous"], c["start"]) for c in STATE.calls] == [
        (1, [], 0),
        (2, [3], 4),
    ]


async def test_heartbeat_details_sync_activity_several_values(env: WorkflowEnvironment) -> None:
    outcome = await call(env, Call("resumable_sync", [5], maximum_attempts=3),
                         wf_id="resume-sync")
    assert outcome.ok
    assert outcome.result == [4]
    assert [(c["attempt"], c["previous"]) for c in STATE.calls] == [
        (1, []),
        (2, [1, "item-1"]),
        (3, [3, "item-3"]),
    ]


# =========================================================================== info
async def test_activity_info_across_retries(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=Q, workflows=[CallActivity], activities=ALL_ACTIVITIES):
        handle = await env.client.start_workflow(
            CallActivity.run, Call("describe_self", maximum_attempts=5), id="info-wf",
            task_queue=Q,
        )
        outcome = await handle.result()
    infos = [c["info"] for c in STATE.calls]
    assert [i.attempt for i in infos] == [1, 2, 3]
    keys = {i.idempotency_key for i in infos}
    assert len(keys) == 1
    key = keys.pop()
    assert key
    assert "info-wf" in key
    assert outcome.result == key
    for i in infos:
        assert i.workflow_id == "info-wf"
        assert i.run_id == handle.run_id
        assert i.workflow_type == "CallActivity"
        assert i.activity_type == "describe_self"
        assert i.task_queue == Q
        assert i.activity_id == infos[0].activity_id
        assert i.start_to_close_timeout == 10.0
    # retries keep the activity's schedule time (attempt 1 may have run eagerly, with the
    # worker's own reading of the clock)
    assert infos[1].scheduled_time == infos[2].scheduled_time
    assert abs((infos[0].scheduled_time - infos[1].scheduled_time).total_seconds()) < 1


async def test_idempotency_keys_differ_between_activities_and_runs(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=Q, workflows=[TypedResults], activities=ALL_ACTIVITIES):
        for wf_id in ("keys-a", "keys-b"):
            handle = await env.client.start_workflow(TypedResults.run, id=wf_id, task_queue=Q)
            await handle.result()
    infos = [c["info"] for c in STATE.calls]
    # make_point x3 and make_profile x1 per run
    assert len(infos) == 8
    assert len({i.idempotency_key for i in infos}) == 8
    assert {i.workflow_id for i in infos} == {"keys-a", "keys-b"}


# =========================================================================== cancellation
async def test_cancel_async_activity(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=Q, workflows=[CancelActivity], activities=ALL_ACTIVITIES):
        handle = await env.client.start_workflow(CancelActivity.run, "hang_async",
                                                 id="cancel-async", task_queue=Q)
        while not STATE.calls:
            await asyncio.sleep(0.01)
        await handle.signal(CancelActivity.cancel_it)
        assert await handle.result() == "cancelled; done=True"
        await asyncio.wait_for(STATE.event("hang_cancelled").wait(), 5)
        history = await handle.fetch_history()
    assert STATE.calls[0].get("cancelled") is True
    assert "ActivityCancelRequested" in [type(e).__name__ for e in history.events]
    assert _activity_events(history.events, ActivityCompleted) == []


async def test_cancel_sync_activity(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=Q, workflows=[CancelActivity], activities=ALL_ACTIVITIES):
        handle = await env.client.start_workflow(CancelActivity.run, "hang_sync",
                                                 id="cancel-sync", task_queue=Q)
        while not STATE.calls:
            await asyncio.sleep(0.01)
        await handle.signal(CancelActivity.cancel_it)
        assert await handle.result() == "cancelled; done=True"
        await asyncio.wait_for(STATE.event("sync_saw_cancel").wait(), 5)
    assert STATE.attempts() == [1]


# =========================================================================== failures
async def test_failure_keeps_type_message_stack_and_cause_chain(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=Q, workflows=[LetItFail], activities=ALL_ACTIVITIES):
        handle = await env.client.start_workflow(LetItFail.run, "fails_with_chain", 42,
                                                 id="chain", task_queue=Q)
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        description = await handle.describe()
    error = info.value
    assert error.status == "failed"
    assert str(description.status) == "failed"
    activity_error = error.cause
    assert isinstance(activity_error, ActivityError)
    assert activity_error.activity_type == "fails_with_chain"
    assert activity_error.attempt == 1
    top = activity_error.__cause__
    assert isinstance(top, ApplicationError)
    assert top.type == "ValueError"
    assert top.message == "could not load order 42"
    assert "fails_with_chain" in top.stack
    assert "ValueError" in top.stack
    middle = top.__cause__
    assert isinstance(middle, ApplicationError)
    assert middle.type == f"{StorageError.__module__}.StorageError"
    assert middle.message == "row lock timeout"
    assert middle.stack
    bottom = middle.__cause__
    assert isinstance(bottom, ApplicationError)
    assert bottom.type == "KeyError"
    assert bottom.message == "'order-42'"
    assert bottom.__cause__ is None


async def test_sync_activity_failure_reaches_client(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=Q, workflows=[LetItFail], activities=ALL_ACTIVITIES):
        handle = await env.client.start_workflow(LetItFail.run, "fails_sync", 9,
                                                 id="sync-fail", task_queue=Q)
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
    cause = info.value.cause
    assert isinstance(cause, ActivityError)
    app = cause.__cause__
    assert isinstance(app, ApplicationError)
    assert app.type == f"{QuotaExceeded.__module__}.QuotaExceeded"
    assert app.message == "order 9: over quota"
    assert "fails_sync" in app.stack


async def test_history_records_activity_failure(env: WorkflowEnvironment) -> None:
    spec = Call("flaky", [0], initial_interval=1, maximum_attempts=2)
    async with env.worker(task_queue=Q, workflows=[CallActivity], activities=ALL_ACTIVITIES):
        handle = await env.client.start_workflow(CallActivity.run, spec, id="failed-history",
                                                 task_queue=Q)
        await handle.result()
        history = await handle.fetch_history()
    failed = _activity_events(history.events, ActivityFailed)
    # retries are not events: one ActivityFailed carries the final attempt
    assert len(failed) == 1
    assert failed[0].attempt == 2
    assert failed[0].failure.type == "ValueError"
    assert failed[0].failure.message == "attempt 2 failed"


# =========================================================================== late completion
async def test_late_completion_from_timed_out_attempt_is_rejected(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=Q, workflows=[WaitsAfterActivity],
                          activities=ALL_ACTIVITIES):
        handle = await env.client.start_workflow(WaitsAfterActivity.run, id="late",
                                                 task_queue=Q)
        # wait until attempt 1 has (belatedly) returned its result
        while not any(c.get("returned_late") for c in STATE.calls):
            await asyncio.sleep(0.01)
    # the worker has shut down, so it has reported attempt 1's late result; the workflow
    # is still open (waiting for the signal); a new worker finishes it
    assert (await handle.describe()).status == "running"
    await handle.signal(WaitsAfterActivity.go)
    async with env.worker(task_queue=Q, workflows=[WaitsAfterActivity],
                          activities=ALL_ACTIVITIES):
        result = await handle.result()
    history = await handle.fetch_history()
    assert result == "result of attempt 2"
    assert STATE.attempts() == [1, 2]
    assert STATE.calls[0].get("cancelled") is True
    completed = _activity_events(history.events, ActivityCompleted)
    assert len(completed) == 1
    assert completed[0].attempt == 2


async def test_superseded_attempt_ending_does_not_hide_the_running_one(
    env: WorkflowEnvironment,
) -> None:
    """While attempt 2 runs, the end of superseded attempt 1 must not make the worker look
    idle (time skipping would then expire attempt 2, which is heartbeating)."""
    spec = Call("overlapping_attempts", start_to_close=30, heartbeat=0.3,
                initial_interval=0.05, maximum_attempts=2)
    async with env.worker(task_queue=Q, workflows=[CallActivity], activities=ALL_ACTIVITIES):
        handle = await env.client.start_workflow(CallActivity.run, spec, id="overlap",
                                                 task_queue=Q)
        outcome = await handle.result()
        history = await handle.fetch_history()
    assert STATE.attempts() == [1, 2]
    assert STATE.calls[0].get("returned_late") is True
    assert outcome.ok, outcome
    assert outcome.result == "result of attempt 2"
    completed = _activity_events(history.events, ActivityCompleted)
    assert [e.attempt for e in completed] == [2]


# =========================================================================== unknown type
async def test_unknown_activity_type(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=Q, workflows=[LetItFail], activities=[add, fails_sync]):
        handle = await env.client.start_workflow(LetItFail.run, "no_such_activity", 1,
                                                 id="unknown", task_queue=Q)
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
    cause = info.value.cause
    assert isinstance(cause, ActivityError)
    assert cause.activity_type == "no_such_activity"
    app = cause.__cause__
    assert isinstance(app, ApplicationError)
    assert "UnknownActivityTypeError" in app.type
    assert "no_such_activity" in app.message
    assert "add" in app.message
    assert "fails_sync" in app.message
