"""Review findings, as tests: budgets hold when sub-agents fail; forks of agents work."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from perdure import WorkflowFailureError
from perdure.agents import (
    Agent,
    AgentHandle,
    AgentWorker,
    Message,
    ModelRequest,
    ScriptedModel,
    _workflow,
    tool,
)
from perdure.history import ActivityCompleted
from perdure.testing import WorkflowEnvironment

call = ScriptedModel.call


@tool
async def look(thing: str) -> str:
    """Look at a thing."""
    return f"saw {thing}"


async def test_failed_subagents_spend_counts_and_parallel_ones_share(
    env: WorkflowEnvironment,
) -> None:
    big = "word " * 400  # about 500 tokens a call
    spendthrift = Agent(
        name="spendthrift", instructions="spend",
        model=ScriptedModel(lambda r: call("look", thing=big)), tools=[look],
    )
    seen_budgets: list[int | None] = []

    def lead_script(request: ModelRequest) -> object:
        turn = sum(1 for m in request.messages if m.role == "assistant")
        if turn < 5:
            return [call("spendthrift", id=f"s{turn}a", task="spend"),
                    call("spendthrift", id=f"s{turn}b", task="spend")]
        return "unreachable"

    lead = Agent(name="frugal-lead", instructions="lead", token_budget=3000,
                 subagents=[spendthrift], model=ScriptedModel(lead_script))
    original = _workflow.AgentSpec.of

    def spy(agent, **kw):  # type: ignore[no-untyped-def]
        spec = original(agent, **kw)
        if agent.name == "spendthrift":
            seen_budgets.append(spec.token_budget)
        return spec

    _workflow.AgentSpec.of = spy  # type: ignore[method-assign, assignment]
    try:
        async with AgentWorker(env.client, agents=[lead]):
            handle = await env.client.start_agent(lead, "go", id="frugal")
            with pytest.raises(WorkflowFailureError, match="token budget is spent"):
                await handle.result(timeout=30)
    finally:
        _workflow.AgentSpec.of = original  # type: ignore[method-assign]
    # two sub-agents started together got half of what was left each
    assert seen_budgets[0] is not None and seen_budgets[0] < 3000 // 2 + 1
    # the lead stopped on its budget, counting what its failed sub-agents spent
    progress = await handle.progress()
    assert progress["usage"]["input_tokens"] + progress["usage"]["output_tokens"] >= 3000


async def test_fork_of_an_agent_works_cold_and_with_an_edited_answer(
    env: WorkflowEnvironment,
) -> None:
    seen: list[list[Message]] = []

    def script(request: ModelRequest) -> object:
        seen.append(request.messages)
        turn = sum(1 for m in request.messages if m.role == "assistant")
        if turn == 0:
            return call("look", id="c1", thing="the sky")
        return "final: " + request.messages[-1].content

    watcher = Agent(name="watcher", instructions="look", tools=[look],
                    model=ScriptedModel(script))
    async with AgentWorker(env.client, agents=[watcher]):
        handle = await env.client.start_agent(watcher, "look up", id="watch-1")
        assert await handle.result(timeout=10) == "final: saw the sky"
        events = (await handle.workflow.fetch_history()).events
        _workflow._conversations.clear()  # as on another host: only the store has them
        # the first model call's recorded answer, edited to ask for another look
        first = next(i for i, e in enumerate(events, 1) if isinstance(e, ActivityCompleted))
        # a plain fork after the first model call: it reads the stored conversation,
        # which belongs to the original's workflow id
        plain = AgentHandle(await handle.workflow.fork("watch-plain", to_event=first))
        assert await plain.result(timeout=10) == "final: saw the sky"
        _workflow._conversations.clear()
        edited = msgspec.json.decode(bytes(events[first - 1].result))  # type: ignore[union-attr]
        edited["response"]["message"]["tool_calls"][0]["arguments"] = {"thing": "the sea"}
        fork = AgentHandle(await handle.workflow.fork("watch-2", edit_results={first: edited}))
        assert await fork.result(timeout=10) == "final: saw the sea"
    # what the model saw after the fork: its (edited) call, then the matching answer
    after = seen[-1]
    assert after[-2].tool_calls[0].arguments == {"thing": "the sea"}
    assert after[-1].content == "saw the sea" and after[-1].tool_call_id == "c1"


async def test_a_changed_definition_spares_runs_in_flight(env: WorkflowEnvironment) -> None:
    from perdure.agents import ask_human

    def script(request: ModelRequest) -> object:
        turn = sum(1 for m in request.messages if m.role == "assistant")
        if turn == 0:
            return call("ask_human", id="q", question="go on?")
        if turn == 1:
            return call("look", id="l", thing="the plan")
        return "finished"

    v1 = Agent(name="deployed", instructions="v1", tools=[ask_human, look], max_turns=10,
               model=ScriptedModel(script))
    async with AgentWorker(env.client, agents=[v1]):
        handle = await env.client.start_agent(v1, "work", id="in-flight")
        for _ in range(500):
            if (await handle.pending())["questions"]:
                break
            await asyncio.sleep(0.01)
    # a deploy: the same agent, now with max_turns=1 and without the look tool
    v2 = Agent(name="deployed", instructions="v2", tools=[ask_human], max_turns=1,
               model=ScriptedModel(script))
    async with AgentWorker(env.client, agents=[v2]):
        await handle.answer("yes")
        run = await handle.run_result(timeout=20)
        assert run.output == "finished" and run.turns == 3  # v1's settings held
        fresh = await env.client.start_agent(v2, "work", id="after-deploy")
        for _ in range(500):
            if (await fresh.pending())["questions"]:
                break
            await asyncio.sleep(0.01)
        await fresh.answer("yes")  # then v2's max_turns=1 stops it
        with pytest.raises(WorkflowFailureError, match="max_turns \\(1\\)"):
            await fresh.result(timeout=20)
