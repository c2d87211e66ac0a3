"""A long conversation grows the history linearly: messages are stored once, out of line."""

from __future__ import annotations

from collections.abc import Callable

from perdure.agents import Agent, AgentWorker, ModelRequest, ScriptedModel, tool
from perdure.testing import WorkflowEnvironment

NOTE = "x" * 400  # each turn says something of a realistic size


@tool
async def take_note(text: str) -> str:
    """Remember a note."""
    return f"noted {len(text)} characters"


def _script(turns: int) -> Callable[[ModelRequest], object]:
    def answer(request: ModelRequest) -> object:
        turn = sum(1 for m in request.messages if m.role == "assistant")
        # the model sees the whole conversation, every turn
        assert len(request.messages) == 2 + 2 * turn
        if turn < turns - 1:
            return ScriptedModel.call("take_note", id=f"n{turn}", text=f"{turn}: {NOTE}")
        return f"done after {turns} turns"

    return answer


async def _history_bytes(env: WorkflowEnvironment, turns: int) -> int:
    agent = Agent(name=f"note-taker-{turns}", instructions="Take notes. " * 20,
                  model=ScriptedModel(_script(turns)), tools=[take_note],
                  max_turns=turns + 5)
    async with AgentWorker(env.client, agents=[agent]):
        handle = await env.client.start_agent(agent, "take notes", id=f"notes-{turns}")
        assert await handle.result(timeout=120) == f"done after {turns} turns"
    history = await handle.workflow.fetch_history()
    return len(history.to_json())


async def test_history_grows_linearly_with_turns(env: WorkflowEnvironment, report) -> None:  # type: ignore[no-untyped-def]
    short = await _history_bytes(env, 50)
    long = await _history_bytes(env, 200)
    per_turn_short, per_turn_long = short / 50, long / 200
    report(f"agent conversation: 200 turns -> {long:,} history bytes ({per_turn_long:,.0f} "
           f"per turn); 50 turns -> {short:,} ({per_turn_short:,.0f} per turn)")
    # linear: four times the turns, about four times the bytes (quadratic would be 16x)
    assert long / short < 4.4
    assert per_turn_long < 1.1 * per_turn_short
    # and small: a turn costs its own messages, a few kilobytes, not the conversation
    assert per_turn_long < 4_000
