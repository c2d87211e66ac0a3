"""``ActivityEnvironment``: activities unit-tested without a worker or a database (and,
for the functions that need one, with a real client on both backends)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from perdure import CancelledFailure, Client, NotInActivityError, activity
from perdure.testing import ActivityEnvironment


@dataclasses.dataclass
class Progress:
    done: int
    note: str


@activity.defn
async def describe(suffix: str) -> str:
    info = activity.info()
    return f"{info.activity_type}/{info.workflow_id}/{info.attempt}/{suffix}"


@activity.defn
def count_in_thread(n: int) -> tuple[list[Any], str]:
    previous = activity.heartbeat_details(Progress)
    start = previous[0].done if previous else 0
    for i in range(start, n):
        activity.heartbeat(Progress(i + 1, f"item {i}"))
    return previous, threading.current_thread().name


@activity.defn
async def sleeps_until_cancelled() -> str:
    activity.heartbeat("sleeping")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        activity.heartbeat("after the cancel: no error in an async activity")
        raise
    return "woke"


@activity.defn
def loops_until_cancelled() -> int:
    beats = 0
    while True:
        try:
            activity.heartbeat(beats)
        except CancelledFailure:
            assert activity.is_cancelled()
            raise
        beats += 1


@activity.defn
def blocks_until_cancelled() -> bool:
    return activity.wait_for_cancelled_sync(timeout=10)


@activity.defn
async def keeps_payloads(text: str) -> str:
    [ref] = await activity.store_payloads(text.encode())
    loaded = await activity.load_payloads(ref)
    async with activity.rate_limit("model:test", concurrency=1):
        return loaded[ref].decode()


class Counter:
    def __init__(self) -> None:
        self.total = 0

    @activity.defn
    def add(self, n: int) -> int:
        self.total += n
        activity.logger.info("added %d", n)
        return self.total


async def test_an_async_activity_runs_with_the_default_info() -> None:
    env = ActivityEnvironment()
    assert await env.run(describe, "x") == "unknown/test/1/x"
    with pytest.raises(NotInActivityError):
        activity.info()  # the context does not leak out of run


async def test_info_fields_can_be_changed() -> None:
    info = dataclasses.replace(ActivityEnvironment.default_info(), activity_type="describe",
                               workflow_id="wf-9", attempt=3)
    assert await ActivityEnvironment(info=info).run(describe, "y") == "describe/wf-9/3/y"


def test_a_sync_activity_runs_in_the_callers_thread_with_heartbeats_and_details() -> None:
    beats: list[Any] = []
    env = ActivityEnvironment(heartbeat_details=[Progress(2, "item 1")])
    env.on_heartbeat = lambda *details: beats.append(details)
    previous, thread = env.run(count_in_thread, 4)
    assert previous == [Progress(2, "item 1")]  # decoded by the hint, as in a worker
    assert thread == threading.current_thread().name
    assert beats == [(Progress(3, "item 2"),), (Progress(4, "item 3"),)]


async def test_cancel_reaches_an_async_activity_as_cancelled_error() -> None:
    env = ActivityEnvironment()
    beats: list[Any] = []

    def on_heartbeat(*details: Any) -> None:
        beats.append(details[0])
        if len(beats) == 1:
            asyncio.get_running_loop().call_soon(env.cancel)

    env.on_heartbeat = on_heartbeat
    with pytest.raises(asyncio.CancelledError):
        await env.run(sleeps_until_cancelled)
    assert beats == ["sleeping", "after the cancel: no error in an async activity"]


def test_cancel_makes_a_sync_activitys_heartbeat_raise() -> None:
    env = ActivityEnvironment()
    beats: list[int] = []

    def on_heartbeat(beat: int) -> None:
        beats.append(beat)
        if beat == 2:
            env.cancel()

    env.on_heartbeat = on_heartbeat
    with pytest.raises(CancelledFailure, match="was cancelled"):
        env.run(loops_until_cancelled)
    assert beats == [0, 1, 2]


def test_cancel_from_another_thread_wakes_wait_for_cancelled_sync() -> None:
    env = ActivityEnvironment()
    timer = threading.Timer(0.05, env.cancel)
    timer.start()
    try:
        assert env.run(blocks_until_cancelled) is True
    finally:
        timer.cancel()


async def test_an_environment_cancelled_before_run_cancels_at_once() -> None:
    env = ActivityEnvironment()
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await env.run(sleeps_until_cancelled)
    with pytest.raises(CancelledFailure):
        env.run(loops_until_cancelled)


async def test_functions_that_need_a_database_say_to_pass_a_client() -> None:
    with pytest.raises(NotInActivityError, match=r"pass client=.*ActivityEnvironment"):
        await ActivityEnvironment().run(keeps_payloads, "hello")


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[Client]:
    connected = await Client.connect(database_url)
    try:
        yield connected
    finally:
        await connected.close()


async def test_functions_that_need_a_database_use_the_given_client(client: Client) -> None:
    env = ActivityEnvironment(client=client)
    assert await env.run(keeps_payloads, "hello") == "hello"


def test_a_bound_method_runs_with_the_logger_naming_the_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="perdure.activity.user")
    counter = Counter()
    env = ActivityEnvironment()
    assert env.run(counter.add, 2) == 2
    assert env.run(counter.add, 3) == 5
    assert caplog.records[-1].getMessage() == (
        "[unknown, workflow test, activity test, attempt 1] added 3")
