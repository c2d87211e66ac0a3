"""An agent: instructions, a model, tools, sub-agents and limits. Plain configuration."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from perdure import ConfigurationError, RetryPolicy
from perdure.agents._messages import ToolSpec
from perdure.agents._models import Model, as_model
from perdure.agents._tools import Tool

__all__ = ["ASK_HUMAN", "Agent", "ModelLimits", "Price", "ask_human", "registered_agent"]


@dataclasses.dataclass(frozen=True)
class Price:
    """What a model costs, per million input and output tokens."""

    input_per_million: float
    output_per_million: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """The cost of one call."""
        return round((input_tokens * self.input_per_million
                      + output_tokens * self.output_per_million) / 1_000_000, 10)


@dataclasses.dataclass(frozen=True)
class ModelLimits:
    """Limits on one model (by its name), held across every worker sharing the
    database: calls at once, and tokens (input + output) in any minute."""

    concurrency: int | None = None
    tokens_per_minute: int | None = None


class _AskHuman:
    """The ``ask_human`` tool: the agent waits, durably, for ``handle.answer(...)``."""

    name = "ask_human"
    spec = ToolSpec(
        name="ask_human",
        description="Ask the human user a question and wait for the answer. Use it when a "
                    "decision needs them; the answer may take hours.",
        parameters={"type": "object", "properties": {"question": {"type": "string"}},
                    "required": ["question"], "additionalProperties": False},
    )

    def __repr__(self) -> str:
        return "ask_human"


ask_human = _AskHuman()
"""Put in an agent's ``tools`` to let its model ask the human user questions."""
ASK_HUMAN = ask_human.name

DEFAULT_MODEL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=60),
    maximum_attempts=8, non_retryable_error_types=(
        "ConfigurationError", "ModelRequestError", "ModelContextOverflow",
        "ModelRequestTooLarge", "ModelAuthError"),
)


@dataclasses.dataclass(eq=False)
class Agent:
    """An agent's definition: who it is (``instructions``), what it thinks with
    (``model``), what it can do (``tools``, ``subagents``) and its limits.

    Its ``name`` identifies it across processes: workers that serve it
    (:class:`AgentWorker`) must be given an agent of that name.
    """

    name: str
    instructions: str
    model: Model
    tools: Sequence[Tool | _AskHuman] = ()
    subagents: Sequence[Agent] = ()
    description: str = ""
    """What this agent does, as a lead agent's model sees it when it is a sub-agent."""
    output_type: Any = str
    """The final answer's type: ``str``, or a pydantic model / dataclass / Struct the
    model's final JSON must validate against (it is asked again if it does not)."""
    max_turns: int = 30
    """Model calls before the agent stops with a clear reason."""
    token_budget: int | None = None
    """Tokens (input + output) this agent and its sub-agents may use in all."""
    cost_budget: float | None = None
    price: Price | None = None
    model_timeout: timedelta = timedelta(minutes=5)
    model_retry_policy: RetryPolicy = DEFAULT_MODEL_RETRY
    human_timeout: timedelta | None = None
    """How long ``ask_human`` waits before the model is told nobody answered."""
    subagent_timeout: timedelta | None = None
    """Execution timeout of each sub-agent run."""
    model_limits: ModelLimits | None = None
    """Shared limits on this agent's model: a call waits for a share (every agent and
    worker using a model of the same name shares them)."""
    context_window: int | None = None
    """The model's context window, in tokens. When a call's input passes
    ``summarize_at`` of it (or the provider reports an overflow), older turns are
    summarised (a model call) and the agent continues as new with the summary."""
    summarize_at: float = 0.8

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigurationError("an agent needs a name")
        as_model(self.model)
        if self.max_turns < 1:
            raise ConfigurationError(f"agent {self.name!r}: max_turns must be at least 1")
        names = [t.name for t in self.tools] + [s.name for s in self.subagents]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ConfigurationError(
                f"agent {self.name!r} offers two tools or sub-agents named "
                f"{', '.join(sorted(duplicates))}")
        for item in self.tools:
            if not isinstance(item, Tool | _AskHuman):
                raise ConfigurationError(
                    f"agent {self.name!r}: {item!r} is not a tool; decorate it with @tool")

    def tool_specs(self) -> list[ToolSpec]:
        """Everything the model may call: tools, ``ask_human``, sub-agents."""
        specs = [t.spec for t in self.tools]
        for sub in self.subagents:
            specs.append(ToolSpec(
                name=sub.name,
                description=(sub.description or f"Delegate a task to the {sub.name} agent.")
                + " Give it a complete, self-contained task; it answers with its result.",
                parameters={"type": "object", "properties": {"task": {"type": "string"}},
                            "required": ["task"], "additionalProperties": False},
            ))
        return specs

    def tree(self) -> list[Agent]:
        """This agent and every sub-agent below it, each once."""
        seen: dict[str, Agent] = {}
        stack = [self]
        while stack:
            agent = stack.pop()
            other = seen.get(agent.name)
            if other is not None:
                if other is not agent:
                    raise ConfigurationError(
                        f"two different agents are named {agent.name!r}; names identify "
                        "agents across processes, so they must be unique")
                continue
            seen[agent.name] = agent
            stack.extend(agent.subagents)
        return list(seen.values())


class _NoModel:
    name = "none"

    async def complete(self, request: Any, *, token_sink: Any = None) -> Any:
        raise ConfigurationError("not a model")


_registry: dict[str, Agent] = {}


def register(agents: Sequence[Agent], *, replace: bool = True) -> None:
    """Make agents known to this process's workflows and activities by name.

    Tools are activities named after the tool: two different functions under one tool
    name in the trees one worker serves would run one for the other, so that is refused.
    """
    trees = [agent for root in agents for agent in root.tree()]
    Agent(name="_check", instructions="", model=_NoModel(), subagents=list(agents)).tree()
    tools: dict[str, Any] = {}
    for agent in trees:
        for item in agent.tools:
            fn = getattr(item, "fn", None)
            if fn is None:
                continue
            other = tools.setdefault(item.name, fn)
            if other is not fn:
                raise ConfigurationError(
                    f"two different functions are tools named {item.name!r} (agent "
                    f"{agent.name!r} and another): tool names identify activities, so they "
                    "must be unique; name one of them differently (@tool(name=...))")
    for agent in trees:
        if replace or agent.name not in _registry:
            _registry[agent.name] = agent  # the latest worker's definition wins


def registered_agent(name: str) -> Agent:
    """The agent registered under ``name`` (by an :class:`AgentWorker`)."""
    agent = _registry.get(name)
    if agent is None:
        raise ConfigurationError(
            f"agent {name!r} is not registered on this worker; pass it (or the lead agent "
            f"above it) in AgentWorker(agents=[...]); registered: "
            f"{', '.join(sorted(_registry)) or 'none'}")
    return agent
