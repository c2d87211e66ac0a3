"""What a model or a tool produces can fail a call, never the run, and is never paid for
twice when a retry would fail the same way."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from perdure.agents import (
    Agent,
    AgentWorker,
    LocalSandboxes,
    ModelRequest,
    ModelResponse,
    SandboxLimits,
    ScriptedModel,
    tool,
)
from perdure.agents._messages import Message, ToolCall
from perdure.history import ActivityCompleted, ActivityFailed, ActivityScheduled
from perdure.testing import WorkflowEnvironment

call = ScriptedModel.call


def _tool_results(request: ModelRequest) -> list[str]:
    out = []
    for message in reversed(request.messages):
        if message.role != "tool":
            break
        out.append(message.content)
    return list(reversed(out))


async def _attempts(handle: Any, activity_type: str) -> list[int]:
    """The attempt that ended each scheduled activity of ``activity_type``."""
    events = (await handle.workflow.fetch_history()).events
    seqs = {e.seq for e in events
            if isinstance(e, ActivityScheduled) and e.activity_type == activity_type}
    return [e.attempt for e in events
            if isinstance(e, ActivityCompleted | ActivityFailed) and e.seq in seqs]


async def test_an_answer_too_large_to_record_is_paid_for_once(env: WorkflowEnvironment) -> None:
    asked: list[list[str]] = []

    def script(request: ModelRequest) -> Any:
        asked.append([m.content for m in request.messages if m.role == "user"])
        if model.calls == 1:
            return "x" * (3 * 1024 * 1024)  # over the 2 MiB payload limit
        return "a short answer"

    model = ScriptedModel(script)
    writer = Agent(name="verbose", instructions="Answer.", model=model)
    async with AgentWorker(env.client, agents=[writer]):
        handle = await env.client.start_agent(writer, "write a lot", id="verbose-1")
        assert await handle.result(timeout=30) == "a short answer"
    assert model.calls == 2  # the big answer once (not retried), then the short one
    assert any("too large to record" in text for text in asked[1]), asked


async def test_model_output_no_json_can_hold_does_not_fail_the_run(
    env: WorkflowEnvironment,
) -> None:
    @tool
    async def echo(text: str) -> str:
        """Say it back."""
        return f"echo: {text}"

    def script(request: ModelRequest) -> Any:
        if model.calls == 1:  # a lone surrogate, and NaN in the arguments
            return ModelResponse(message=Message(
                role="assistant", content="odd \udcff text",
                tool_calls=[ToolCall(id="c1", name="echo", arguments={"text": float("nan")})]))
        return f"done after {_tool_results(request)}"

    model = ScriptedModel(script)
    agent = Agent(name="odd", instructions="Use the tool.", model=model, tools=[echo])
    async with AgentWorker(env.client, agents=[agent]):
        handle = await env.client.start_agent(agent, "go", id="odd-1")
        result = await handle.result(timeout=30)
    assert model.calls == 2
    assert result == "done after ['echo: nan']"  # NaN arrived as its name, a string


async def test_a_tool_result_too_large_runs_once_and_the_model_hears(
    env: WorkflowEnvironment,
) -> None:
    runs: list[int] = []

    @tool
    async def dump() -> str:
        """Return everything."""
        runs.append(1)
        return "y" * (3 * 1024 * 1024)

    model = ScriptedModel([[call("dump")], lambda r: f"saw {_tool_results(r)[0][:300]}"])
    agent = Agent(name="dumper", instructions="Dump.", model=model, tools=[dump])
    async with AgentWorker(env.client, agents=[agent]):
        handle = await env.client.start_agent(agent, "dump it", id="dump-1")
        result = await handle.result(timeout=30)
    assert runs == [1]
    assert result.startswith("saw error:") and "over the limit" in result


async def test_sandbox_calls_that_will_fail_again_fail_once(
    real_env: WorkflowEnvironment, tmp_path: Path,
) -> None:
    sandboxes = LocalSandboxes(tmp_path / "sandboxes", limits=SandboxLimits(
        memory_mb=256, command_timeout=timedelta(seconds=20)))
    model = ScriptedModel([
        [call("write_file", path="", content="x"),
         call("write_file", path="a\x00b.txt", content="x"),
         call("run_command", command="echo \x00")],
        lambda r: " | ".join(_tool_results(r)),
    ])
    agent = Agent(name="careless", instructions="Build.", model=model,
                  tools=sandboxes.tools())
    async with AgentWorker(real_env.client, agents=[agent]):
        handle = await real_env.client.start_agent(agent, "build", id="careless-1")
        result = await handle.result(timeout=60)
        attempts = await _attempts(handle, "perdure.agents.tool.write_file") + \
            await _attempts(handle, "perdure.agents.tool.run_command")
    errors = result.split(" | ")
    assert len(errors) == 3 and all(e.startswith("error:") for e in errors), result
    assert "root folder" in errors[0]
    assert "null" in errors[1] and "null" in errors[2]
    assert attempts == [1, 1, 1]
