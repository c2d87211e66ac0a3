"""The agent loop on a real store: tools, errors, humans, approvals, sub-agents, limits."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from perdure import WorkflowFailureError, WorkflowStatus
from perdure.agents import (
    Agent,
    AgentHandle,
    AgentWorker,
    ModelRequest,
    ScriptedModel,
    ask_human,
    tool,
)
from perdure.testing import WorkflowEnvironment

call = ScriptedModel.call
RAN: list[str] = []


@tool
async def write_file(path: str, content: str) -> str:
    """Write a file in the sandbox."""
    RAN.append(f"write {path}")
    return f"wrote {len(content)} bytes to {path}"


@dataclasses.dataclass
class SuiteReport:
    passed: int
    failed: int


@tool
async def run_tests(path: str) -> SuiteReport:
    """Run the tests under path."""
    RAN.append(f"test {path}")
    return SuiteReport(passed=12, failed=0)


@tool
def broken_linter(path: str) -> str:
    """Lint the code (this one always crashes)."""
    RAN.append("lint")
    raise RuntimeError("linter crashed: out of memory")


@tool(requires_approval=True)
async def deploy(target: str) -> str:
    """Deploy to an environment (a human must approve)."""
    RAN.append(f"deploy {target}")
    return f"deployed to {target}"


def _last_tool_results(request: ModelRequest) -> list[str]:
    out = []
    for message in reversed(request.messages):
        if message.role != "tool":
            break
        out.append(message.content)
    return out


async def _wait_for(handle: AgentHandle, kind: str) -> dict[str, str]:
    for _ in range(1000):
        pending = await handle.pending()
        if pending[kind]:
            return dict(pending[kind][0])
        await asyncio.sleep(0.005)
    raise AssertionError(f"no pending {kind}")


async def test_tools_run_in_parallel_and_errors_go_back_to_the_model(
    env: WorkflowEnvironment,
) -> None:
    RAN.clear()
    seen: list[list[str]] = []

    def after_tools(request: ModelRequest) -> str:
        seen.append(sorted(_last_tool_results(request)))
        return "All done: files written, tests pass, the linter is broken."

    model = ScriptedModel([
        [call("write_file", path="a.py", content="x = 1"),
         call("run_tests", path="tests"),
         call("broken_linter", path="a.py"),
         call("no_such_tool")],
        after_tools,
    ])
    coder = Agent(name="coder", instructions="You write code.", model=model,
                  tools=[write_file, run_tests, broken_linter])
    async with AgentWorker(env.client, agents=[coder]):
        handle = await env.client.start_agent(coder, "write a.py and test it", id="coder-1")
        assert await handle.result(timeout=20) == \
            "All done: files written, tests pass, the linter is broken."
        run = await handle.run_result()
    assert sorted(RAN) == ["lint", "lint", "lint", "test tests", "write a.py"]  # 3 attempts
    assert seen == [sorted([
        "wrote 5 bytes to a.py", '{"passed":12,"failed":0}',
        "error: linter crashed: out of memory",
        "error: there is no tool named 'no_such_tool'; the tools are: write_file, run_tests, "
        "broken_linter",
    ])]
    assert run.turns == 2 and run.usage.model_calls == 2 and run.usage.total_tokens > 0
    description = await handle.workflow.describe()
    assert description.memo["status"] == "done" and description.memo["turns"] == 2


async def test_human_question_and_approval(env: WorkflowEnvironment) -> None:
    RAN.clear()
    model = ScriptedModel([
        call("ask_human", id="q1", question="Which database?"),
        lambda r: call("deploy", id="d1", target=f"staging with {_last_tool_results(r)[0]}"),
        lambda r: call("deploy", id="d2", target="production"),
        lambda r: f"Finished. Last deploy said: {_last_tool_results(r)[0]}",
    ])
    ops = Agent(name="ops", instructions="You ship things.", model=model,
                tools=[ask_human, deploy])
    handle = await env.client.start_agent(ops, "ship it", id="ops-1")
    async with AgentWorker(env.client, agents=[ops]):
        question = await _wait_for(handle, "questions")
        assert question == {"id": "q1", "question": "Which database?"}
        assert (await handle.workflow.describe()).memo["pending_questions"] == [
            "Which database?"]
    # no worker running: the answer is durable anyway
    await handle.answer("SQLite, please")
    async with AgentWorker(env.client, agents=[ops]):
        approval = await _wait_for(handle, "approvals")
        assert approval["id"] == "d1" and approval["tool"] == "deploy"
        assert RAN == []  # nothing deployed before the approval
        await handle.approve("d1")
        await _wait_for(handle, "approvals")
        await handle.deny("d2", "not on a Friday")
        result = await handle.result(timeout=20)
    assert RAN == ["deploy staging with SQLite, please"]
    assert result == ("Finished. Last deploy said: error: the human denied this call: "
                      "not on a Friday")


async def test_subagents_run_as_children_and_usage_adds_up(env: WorkflowEnvironment) -> None:
    backend = Agent(name="backend", instructions="You build APIs.",
                    model=ScriptedModel(["API ready"]), description="Builds the backend.")
    frontend = Agent(name="frontend", instructions="You build UIs.",
                     model=ScriptedModel(["UI ready"]))
    lead = Agent(
        name="lead", instructions="You lead.", subagents=[backend, frontend],
        model=ScriptedModel([
            [call("backend", task="build the API"), call("frontend", task="build the UI")],
            lambda r: " + ".join(sorted(_last_tool_results(r))),
        ]),
    )
    async with AgentWorker(env.client, agents=[lead]):
        handle = await env.client.start_agent(lead, "build it", id="lead-1")
        assert await handle.result(timeout=20) == "API ready + UI ready"
        run = await handle.run_result()
    children = await env.client.list_workflows(parent_workflow_id="lead-1")
    assert sorted(c.memo["agent"] for c in children) == ["backend", "frontend"]
    assert all(c.status == WorkflowStatus.COMPLETED for c in children)
    assert run.usage.model_calls == 4  # two of the lead's, one per sub-agent


async def test_max_turns_and_budget_stop_with_a_reason(env: WorkflowEnvironment) -> None:
    looping = Agent(name="looper", instructions="loop", max_turns=3,
                    model=ScriptedModel(lambda r: call("run_tests", path="x")),
                    tools=[run_tests])
    spender = Agent(name="spender", instructions="spend", token_budget=1,
                    model=ScriptedModel(lambda r: call("run_tests", path="x")),
                    tools=[run_tests])
    async with AgentWorker(env.client, agents=[looping, spender]):
        handle = await env.client.start_agent(looping, "go", id="looper-1")
        with pytest.raises(WorkflowFailureError, match="reached max_turns \\(3\\)"):
            await handle.result(timeout=20)
        handle = await env.client.start_agent(spender, "go", id="spender-1")
        with pytest.raises(WorkflowFailureError, match="token budget is spent"):
            await handle.result(timeout=20)


@dataclasses.dataclass
class Plan:
    steps: list[str]
    estimate_days: int


async def test_structured_output_is_validated_and_asked_again(
    env: WorkflowEnvironment,
) -> None:
    planner = Agent(
        name="planner", instructions="Plan.", output_type=Plan,
        model=ScriptedModel([
            '{"steps": ["design"], "estimate_days": "soon"}',
            '```json\n{"steps": ["design", "build"], "estimate_days": 3}\n```',
        ]),
    )
    async with AgentWorker(env.client, agents=[planner]):
        handle = await env.client.start_agent(planner, "plan a kanban app", id="planner-1")
        plan = await handle.result(timeout=20)
    assert plan == Plan(steps=["design", "build"], estimate_days=3)
    request = planner.model.requests[-1]  # type: ignore[attr-defined]
    assert "did not validate" in request.messages[-1].content


TOOL_CANCELLED: list[str] = []


@tool(heartbeat_timeout=None)
async def long_tool(item: str) -> str:
    """Works for an hour unless cancelled."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        TOOL_CANCELLED.append(item)
        raise
    return item


async def test_cancelling_the_lead_stops_the_whole_tree(real_env: WorkflowEnvironment) -> None:
    TOOL_CANCELLED.clear()
    subs = [Agent(name=f"digger-{i}", instructions="dig", tools=[long_tool],
                  model=ScriptedModel([call("long_tool", item=f"hole-{i}"), "dug"]))
            for i in (1, 2)]
    boss = Agent(name="boss", instructions="delegate", subagents=subs,
                 model=ScriptedModel([[call("digger-1", task="dig"),
                                       call("digger-2", task="dig")], "done"]))
    async with AgentWorker(real_env.client, agents=[boss]):
        handle = await real_env.client.start_agent(boss, "dig two holes", id="boss-1")
        for _ in range(1000):
            children = await real_env.client.list_workflows(parent_workflow_id="boss-1")
            busy = [c for c in children if c.pending_activities or
                    (await real_env.client.get_workflow_handle(c.workflow_id).describe())
                    .pending_activities]
            if len(busy) == 2:
                break
            await asyncio.sleep(0.01)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError, match="canceled"):
            await handle.result(timeout=10)
        for _ in range(200):
            if len(TOOL_CANCELLED) == 2:
                break
            await asyncio.sleep(0.01)
    assert sorted(TOOL_CANCELLED) == ["hole-1", "hole-2"]
    assert not await real_env.client.list_workflows(status="running")
    for child in await real_env.client.list_workflows(parent_workflow_id="boss-1"):
        described = await real_env.client.get_workflow_handle(child.workflow_id).describe()
        assert described.status == WorkflowStatus.CANCELED
        assert described.pending_activities == []


def test_one_tool_name_for_two_functions_is_refused() -> None:
    from perdure import ConfigurationError
    from perdure.agents._agent import register

    @tool(name="search")
    async def web_search(query: str) -> str:
        """Search the web."""
        return "web"

    @tool(name="search")
    async def code_search(query: str) -> str:
        """Search the code."""
        return "code"

    web = Agent(name="web-searcher", instructions="", model=ScriptedModel(["x"]),
                tools=[web_search])
    code = Agent(name="code-searcher", instructions="", model=ScriptedModel(["x"]),
                 tools=[code_search])
    lead = Agent(name="search-lead", instructions="", model=ScriptedModel(["x"]),
                 subagents=[web, code])
    with pytest.raises(ConfigurationError, match="two different functions are tools named"):
        register([lead])
