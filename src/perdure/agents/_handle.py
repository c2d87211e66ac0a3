"""Starting agents and talking to them: built on Client and WorkflowHandle."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import msgspec

from perdure import Client, Worker, WorkflowHandle
from perdure.agents._agent import Agent, register
from perdure.agents._messages import Usage
from perdure.agents._sandbox import sandbox_merge
from perdure.agents._workflow import (
    AgentResult,
    AgentRun,
    AgentSpec,
    AgentWorkflow,
    model_call,
)

__all__ = ["AgentHandle", "AgentWorker", "start_agent"]

DEFAULT_TASK_QUEUE = "agents"


class AgentHandle:
    """A running (or finished) agent: answer its questions, approve its tool calls, wait
    for its result. Reach one again with ``AgentHandle(client.get_workflow_handle(id))``."""

    def __init__(self, handle: WorkflowHandle[Any], agent: Agent | None = None) -> None:
        self.workflow = handle
        self.agent = agent
        if agent is not None:
            # lets this process answer queries by replaying, with no worker; a definition
            # a worker here registered stays (the worker's is the one that runs)
            register([agent], replace=False)

    @property
    def id(self) -> str:
        """The agent run's workflow id."""
        return self.workflow.workflow_id

    async def answer(self, text: str, *, question_id: str = "") -> None:
        """Answer the agent's oldest open question (or ``question_id``). Durable at once,
        even if no worker runs; the agent continues when one does."""
        await self.workflow.signal(AgentWorkflow.answer, text, question_id)

    async def approve(self, call_id: str) -> None:
        """Let a tool call that needs approval run."""
        await self.workflow.signal(AgentWorkflow.decide, call_id, True, "")

    async def deny(self, call_id: str, reason: str = "") -> None:
        """Refuse a tool call that needs approval; the model is told, with ``reason``."""
        await self.workflow.signal(AgentWorkflow.decide, call_id, False, reason)

    async def pending(self) -> dict[str, Any]:
        """Open questions and tool calls waiting for approval. With the agent at hand this
        process answers from history (no worker needed); otherwise a worker does."""
        return await self._query(AgentWorkflow.pending, "pending")

    async def progress(self) -> dict[str, Any]:
        """Status, turns and usage so far."""
        return await self._query(AgentWorkflow.progress, "progress")

    async def _query(self, method: Any, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.workflow.query(
            method if self.agent is not None else name)
        return result

    async def run_result(self, *, timeout: timedelta | float | None = None) -> AgentResult:
        """The final answer with its usage (tokens and cost over the whole tree) and turns."""
        result: AgentResult = await self.workflow.result(timeout=timeout)
        return result

    async def result(self, *, timeout: timedelta | float | None = None) -> Any:
        """The agent's final answer, as its output type when the agent is known here."""
        run = await self.run_result(timeout=timeout)
        output_type = self.agent.output_type if self.agent is not None else None
        if output_type is None or output_type is str:
            return run.output
        validate = getattr(output_type, "model_validate", None)
        if validate is not None:
            return validate(run.output)
        return msgspec.convert(run.output, output_type)

    async def usage(self) -> Usage:
        """Tokens and cost so far (the sub-agents' included once they have finished)."""
        return msgspec.convert((await self.progress())["usage"], Usage)

    async def stream(self, *, from_start: bool = False) -> AsyncIterator[dict[str, Any]]:
        """The agent tree's progress, live, from any process: ``model_call`` (with
        ``retry: true`` when a call is made again: drop what its earlier attempt
        streamed), ``token``, ``model_done``, ``tool_call``, ``tool_result``,
        ``question``, ``approval_needed``, ``subagent_start``/``subagent_end``, ``done``
        or ``stopped``. Joining late starts at the current model call (or the start,
        with ``from_start``); the iteration ends when the agent's run has closed."""
        after = 0
        if not from_start:
            seen = [e async for e in self.workflow.stream(follow=False)]
            starts = [e.id for e in seen
                      if isinstance(e.data, dict) and e.data.get("type") == "model_call"]
            if starts:
                after = starts[-1] - 1
        async for event in self.workflow.stream(after=after):
            if isinstance(event.data, dict):
                yield event.data

    async def cancel(self) -> None:
        """Cancel the agent and, through it, every sub-agent and running tool."""
        await self.workflow.cancel()


async def start_agent(
    client: Client, agent: Agent, task: str, *, id: str,
    task_queue: str = DEFAULT_TASK_QUEUE, execution_timeout: timedelta | None = None,
    token_budget: int | None = None, cost_budget: float | None = None,
) -> AgentHandle:
    """Start ``agent`` on ``task`` as a durable workflow run; workers serving
    ``task_queue`` with an :class:`AgentWorker` that knows the agent run it."""
    handle = await client.start_workflow(
        AgentWorkflow.run,
        AgentRun(agent=agent.name, task=task,
                 spec=AgentSpec.of(agent, token_budget=token_budget, cost_budget=cost_budget)),
        id=id, task_queue=task_queue, execution_timeout=execution_timeout,
        memo={"agent": agent.name}, search_attributes={"agent": agent.name},
    )
    return AgentHandle(handle, agent)


class AgentWorker(Worker):
    """A worker that runs agents: their loop, model calls and tools (and anything else
    passed in ``workflows`` / ``activities``)."""

    def __init__(self, client: Client, *, agents: Sequence[Agent],
                 task_queue: str = DEFAULT_TASK_QUEUE, workflows: Sequence[type] = (),
                 activities: Sequence[Any] = (), **kwargs: Any) -> None:
        register(agents)
        tools: dict[str, Any] = {}
        for root in agents:
            for agent in root.tree():
                for item in agent.tools:
                    activity_fn = getattr(item, "activity", None)
                    if activity_fn is not None:
                        tools.setdefault(item.name, activity_fn)
        super().__init__(client, task_queue=task_queue,
                         workflows=[AgentWorkflow, *workflows],
                         activities=[model_call, sandbox_merge, *tools.values(), *activities],
                         **kwargs)
