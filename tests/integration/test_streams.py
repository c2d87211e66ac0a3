"""Workflow streams: progress events from workflows and activities, out of history."""

from __future__ import annotations

import asyncio
from typing import Any

from perdure import activity, workflow
from perdure.history import event_type_name
from perdure.testing import WorkflowEnvironment

TQ = "streams"


@activity.defn
async def speak(words: list[str]) -> str:
    for word in words:
        activity.publish({"token": word})
        await asyncio.sleep(0.01)
    return " ".join(words)


@workflow.defn
class Talker:
    def __init__(self) -> None:
        self.go = False

    @workflow.run
    async def run(self, sentences: list[list[str]]) -> list[str]:
        workflow.publish({"status": "started"})
        said = []
        for index, words in enumerate(sentences):
            workflow.publish({"sentence": index})
            said.append(await workflow.execute_activity(speak, words,
                                                        start_to_close_timeout=10))
            if index == 0:
                await workflow.wait_condition(lambda: self.go)
        workflow.publish({"status": "done"})
        return said

    @workflow.signal
    def proceed(self) -> None:
        self.go = True


def _data(events: list[Any]) -> list[Any]:
    return [e.data for e in events]


async def test_stream_carries_workflow_and_activity_events_in_order(
    env: WorkflowEnvironment,
) -> None:
    async with env.worker(task_queue=TQ, workflows=[Talker], activities=[speak]):
        handle = await env.client.start_workflow(
            Talker.run, [["hello", "there"], ["bye"]], id="talker", task_queue=TQ)
        seen: list[Any] = []

        async def follow() -> None:
            async for event in handle.stream():
                seen.append(event)

        follower = asyncio.ensure_future(follow())
        for _ in range(500):
            if any(e.data == {"token": "there"} for e in seen):
                break
            await asyncio.sleep(0.01)
        # a follower that joins late can start from any id it has seen
        late = [e async for e in handle.stream(after=seen[1].id, follow=False)]
        assert _data(late) == _data(seen[2:len(late) + 2])
        await handle.signal(Talker.proceed)
        assert await handle.result(timeout=10) == ["hello there", "bye"]
        await asyncio.wait_for(follower, 10)
    assert _data(seen) == [
        {"status": "started"}, {"sentence": 0}, {"token": "hello"}, {"token": "there"},
        {"sentence": 1}, {"token": "bye"}, {"status": "done"},
    ]
    assert [e.id for e in seen] == sorted(e.id for e in seen)
    # nothing of it in history
    names = {event_type_name(e) for e in (await handle.fetch_history()).events}
    assert not {n for n in names if "Publish" in n or "Stream" in n}


async def test_replay_publishes_nothing_again(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[Talker], activities=[speak]):
        handle = await env.client.start_workflow(Talker.run, [["a"], ["b"]], id="replayed",
                                                 task_queue=TQ)
        for _ in range(500):  # the first sentence spoken, waiting for the signal
            if (await handle.describe()).history_length >= 5:
                break
            await asyncio.sleep(0.01)
    # a new worker (empty cache) replays the run before going on
    async with env.worker(task_queue=TQ, workflows=[Talker], activities=[speak]):
        await handle.signal(Talker.proceed)
        await handle.result(timeout=10)
    events = _data([e async for e in handle.stream(follow=False)])
    assert events.count({"status": "started"}) == 1
    assert events.count({"sentence": 0}) == 1
