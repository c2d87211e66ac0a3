"""An agent tree's progress, streamed: tokens, retries, tools, sub-agents, late joiners."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from perdure import ApplicationError, RetryPolicy
from perdure.agents import (
    Agent,
    AgentWorker,
    Message,
    ModelRequest,
    ModelResponse,
    ScriptedModel,
    Usage,
    tool,
)
from perdure.testing import WorkflowEnvironment

ROOT = Path(__file__).resolve().parents[2]


class StreamingModel:
    """Streams its answers word by word; the first attempt of ``flaky_turn`` dies mid-way."""

    def __init__(self, name: str, answers: list[Any], flaky_turn: int | None = None) -> None:
        self.name = name
        self.answers = answers
        self.flaky_turn = flaky_turn
        self.failed = False

    async def complete(self, request: ModelRequest, *,
                       token_sink: Callable[[str], None] | None = None) -> ModelResponse:
        turn = sum(1 for m in request.messages if m.role == "assistant")
        answer = self.answers[turn]
        if isinstance(answer, str):
            words = answer.split(" ")
            for index, word in enumerate(words):
                if token_sink is not None:
                    token_sink(word if index == 0 else " " + word)
                await asyncio.sleep(0.001)
                if turn == self.flaky_turn and not self.failed and index == 1:
                    self.failed = True
                    raise ApplicationError("connection reset mid-stream", type="ModelServerError")
            message = Message.assistant(answer)
        else:
            message = Message.assistant(tool_calls=answer)
        return ModelResponse(message=message, usage=Usage(10, 5, 1))


@tool
async def look_up(term: str) -> str:
    """Look a term up."""
    return f"{term} means something"


def _tokens(events: list[dict[str, Any]], agent: str) -> str:
    return "".join(e["text"] for e in events if e["type"] == "token" and e["agent"] == agent)


async def test_stream_shows_tokens_tools_subagents_and_retry_markers(
    env: WorkflowEnvironment,
) -> None:
    helper = Agent(name="stream-helper", instructions="help",
                   model=StreamingModel("helper", ["helper says hi"]))
    lead = Agent(
        name="stream-lead", instructions="lead", tools=[look_up], subagents=[helper],
        model=StreamingModel("lead", [
            [ScriptedModel.call("look_up", id="t1", term="durability"),
             ScriptedModel.call("stream-helper", id="s1", task="say hi")],
            "the final answer is forty two",
        ], flaky_turn=1),
        model_retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=10)),
    )
    async with AgentWorker(env.client, agents=[lead]):
        handle = await env.client.start_agent(lead, "explain", id="streamed")
        events: list[dict[str, Any]] = []

        async def follow() -> None:
            async for event in handle.stream(from_start=True):
                events.append(event)

        follower = asyncio.ensure_future(follow())
        assert await handle.result(timeout=20) == "the final answer is forty two"
        await asyncio.wait_for(follower, 10)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "model_call" and kinds[-1] == "done"
    # the sub-agent's tokens reach the lead's stream
    assert _tokens(events, "stream-helper") == "helper says hi"
    assert [e["subagent"] for e in events if e["type"] == "subagent_end"] == ["stream-helper"]
    calls = [e for e in events if e["type"] == "tool_call"]
    assert {c["tool"] for c in calls} == {"look_up", "stream-helper"}
    assert any(e["type"] == "tool_result" and e["content"] == "durability means something"
               for e in events)
    # the lead's second call died mid-stream: its retry is marked, and what a client
    # shows after the marker is the whole answer, once
    lead_calls = [e for e in events if e["type"] == "model_call" and e["agent"] == "stream-lead"]
    assert [c["retry"] for c in lead_calls] == [False, False, True]
    marker = events.index(lead_calls[-1])
    assert _tokens(events[marker:], "stream-lead") == "the final answer is forty two"
    assert _tokens(events[:marker], "stream-lead") == "the final"  # the dead attempt

    # a follower that joins late starts at the current (here: last) model call
    late = [e async for e in handle.stream()]
    assert late[0] == lead_calls[-1] and late[-1]["type"] == "done"


async def test_cli_follows_and_answers(env: WorkflowEnvironment, database_url: str) -> None:
    from perdure.agents import ask_human

    root = ROOT
    asker = Agent(
        name="cli-asker", instructions="ask", tools=[ask_human],
        model=StreamingModel("asker", [
            [ScriptedModel.call("ask_human", id="q", question="What colour?")],
            "you said so",
        ]),
    )
    cli_env = dict(os.environ, PYTHONPATH=str(root))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "perdure.cli", "agent", *args,
                               "--database-url", database_url], capture_output=True,
                              text=True, env=cli_env, cwd=root, timeout=60)

    async with AgentWorker(env.client, agents=[asker]):
        handle = await env.client.start_agent(asker, "pick a colour", id="cli-asked")
        for _ in range(500):
            if (await handle.pending())["questions"]:
                break
            await asyncio.sleep(0.01)
        answered = await asyncio.to_thread(cli, "answer", "cli-asked", "blue")
        assert answered.returncode == 0, answered.stderr
        assert await handle.result(timeout=20) == "you said so"
        followed = await asyncio.to_thread(cli, "follow", "cli-asked", "--from-start")
    assert followed.returncode == 0, followed.stderr
    lines = followed.stdout.splitlines()
    assert "[cli-asker] -> ask_human" in lines[0]
    assert any("? What colour?" in line for line in lines)
    assert any(line == "[cli-asker] <- ask_human ok: blue" for line in lines)
    assert "[cli-asker] you said so" in lines
    assert lines[-1].startswith("[cli-asker] done after 2 turns")
