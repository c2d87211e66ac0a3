"""A lead agent with two sub-agents, for the crash test and its worker processes.

Every model call and tool run appends ``start``/``end`` lines to the file named by
$PERDURE_TEST_EXECUTIONS, so the test can kill a worker mid-call and count calls.
"""

from __future__ import annotations

import asyncio
import os

from perdure import activity
from perdure.agents import Agent, ModelRequest, ScriptedModel, ToolCall, ask_human, tool

call = ScriptedModel.call


def _record(line: str) -> None:
    path = os.environ.get("PERDURE_TEST_EXECUTIONS")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


@tool
async def slow_tool(item: str) -> str:
    """Work on an item for a while."""
    _record(f"tool-start {item} {os.getpid()}")
    await asyncio.sleep(float(os.environ.get("PERDURE_TEST_TOOL_SECONDS", "1.5")))
    _record(f"tool-end {item} {os.getpid()}")
    return f"done {item}"


@tool
async def flaky_tool(item: str) -> str:
    """Always fails."""
    raise RuntimeError(f"cannot process {item}")


@tool(requires_approval=True)
async def deploy(target: str) -> str:
    """Deploy (needs approval)."""
    _record(f"deploy {target}")
    return f"deployed to {target}"


def _tool_results(request: ModelRequest) -> list[str]:
    out = []
    for message in reversed(request.messages):
        if message.role != "tool":
            break
        out.append(message.content)
    return sorted(out)


def _scripted(agent: str, steps: list[object], slow_turns: tuple[int, ...] = ()) -> ScriptedModel:
    async def answer(request: ModelRequest) -> object:
        turn = sum(1 for m in request.messages if m.role == "assistant")
        _record(f"model-start {agent} {turn} {os.getpid()}")
        if turn in slow_turns:
            await asyncio.sleep(float(os.environ.get("PERDURE_TEST_MODEL_SECONDS", "1.5")))
        step = steps[turn]
        result = step(request) if callable(step) and not isinstance(step, ToolCall) else step
        _record(f"model-end {agent} {turn} {os.getpid()} {activity.info().attempt}")
        return result

    return ScriptedModel(answer, name=f"scripted-{agent}")


def _sub(name: str) -> Agent:
    return Agent(
        name=name, instructions=f"You are the {name} agent.", tools=[slow_tool],
        model=_scripted(name, [
            call("slow_tool", id=f"{name}-t", item=f"{name}-work"),
            lambda r: f"{name}: " + "; ".join(_tool_results(r)),
        ]),
    )


backend = _sub("crash-backend")
frontend = _sub("crash-frontend")
lead = Agent(
    name="crash-lead", instructions="You lead the build.",
    tools=[slow_tool, flaky_tool, deploy, ask_human], subagents=[backend, frontend],
    model=_scripted("crash-lead", [
        [call("slow_tool", id="l-slow", item="schema"),
         call("flaky_tool", id="l-flaky", item="logo"),
         call("crash-backend", id="l-back", task="build the API"),
         call("crash-frontend", id="l-front", task="build the UI")],
        lambda r: call("ask_human", id="l-ask", question="SQLite or PostgreSQL?"),
        lambda r: call("deploy", id="l-deploy", target=f"staging ({_tool_results(r)[0]})"),
        lambda r: "FINAL " + " | ".join(_tool_results(r)),
    ], slow_turns=(0,)),
)
