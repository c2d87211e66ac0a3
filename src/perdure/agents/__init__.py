"""Durable agents: an agent loop that is plain to write and cannot be killed.

An :class:`Agent` is instructions, a model, tools (``@tool`` functions: activities),
sub-agents (child workflows) and limits; :class:`LocalSandboxes` gives it a project
workspace whose files follow its history. :func:`start_agent` runs one as a workflow;
an :class:`AgentWorker` serves it. Every model call and tool run is an activity, so a
crash, a deploy or a question that waits a week costs nothing but a replay. Built on
Perdure's public API only.
"""

from perdure.agents._agent import Agent, ModelLimits, Price, ask_human
from perdure.agents._anthropic import AnthropicModel
from perdure.agents._handle import AgentHandle, AgentWorker, start_agent
from perdure.agents._messages import (
    Message,
    ModelRequest,
    ModelResponse,
    ToolCall,
    ToolSpec,
    Usage,
)
from perdure.agents._models import Model, ScriptedModel
from perdure.agents._openai import OpenAIChatModel
from perdure.agents._printer import EventPrinter
from perdure.agents._sandbox import LocalSandboxes, SandboxLimits, SandboxState
from perdure.agents._tools import Tool, tool
from perdure.agents._workflow import AgentResult, AgentRun

__all__ = [
    "Agent",
    "AgentHandle",
    "AgentResult",
    "AgentRun",
    "AgentWorker",
    "AnthropicModel",
    "EventPrinter",
    "LocalSandboxes",
    "Message",
    "Model",
    "ModelLimits",
    "ModelRequest",
    "ModelResponse",
    "OpenAIChatModel",
    "Price",
    "SandboxLimits",
    "SandboxState",
    "ScriptedModel",
    "Tool",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "ask_human",
    "start_agent",
    "tool",
]
