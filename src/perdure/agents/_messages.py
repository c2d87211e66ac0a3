"""The conversation as data: messages, tool calls, model responses, token usage.

These cross the durable boundary (model-call activity inputs and results, tool
results), so they are msgspec Structs: compact JSON in history, typed on both sides.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["Message", "ModelRequest", "ModelResponse", "ToolCall", "ToolSpec", "Usage"]


class ToolCall(msgspec.Struct, omit_defaults=True):
    """A model's request to call a tool: ``id`` pairs it with the tool's answer."""

    id: str
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class Message(msgspec.Struct, omit_defaults=True):
    """One turn of the conversation: system, user, assistant or tool."""

    role: str
    content: str = ""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    tool_call_id: str | None = None
    """For a tool message: the call it answers."""
    name: str | None = None
    is_error: bool = False
    """For a tool message: the tool failed, and ``content`` says why."""

    @classmethod
    def system(cls, text: str) -> Message:
        """A system (instructions) message."""
        return cls(role="system", content=text)

    @classmethod
    def user(cls, text: str) -> Message:
        """A user message."""
        return cls(role="user", content=text)

    @classmethod
    def assistant(cls, text: str = "", tool_calls: list[ToolCall] | None = None) -> Message:
        """An assistant message: text, tool calls, or both."""
        return cls(role="assistant", content=text, tool_calls=tool_calls or [])

    @classmethod
    def tool(cls, call: ToolCall, content: str, *, is_error: bool = False) -> Message:
        """The answer to a tool call."""
        return cls(role="tool", content=content, tool_call_id=call.id, name=call.name,
                   is_error=is_error)


class Usage(msgspec.Struct, omit_defaults=True):
    """Tokens a model call used (or a sum of calls), and what they cost."""

    input_tokens: int = 0
    output_tokens: int = 0
    model_calls: int = 0
    cost: float = 0.0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.input_tokens + other.input_tokens,
                     self.output_tokens + other.output_tokens,
                     self.model_calls + other.model_calls, round(self.cost + other.cost, 10))


class ToolSpec(msgspec.Struct, omit_defaults=True):
    """A tool as the model sees it: name, description and JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]


class ModelRequest(msgspec.Struct, omit_defaults=True):
    """One model call: the conversation so far, the tools on offer, the output schema."""

    agent: str
    messages: list[Message]
    tools: list[ToolSpec] = msgspec.field(default_factory=list)
    output_schema: dict[str, Any] | None = None
    purpose: str = "turn"
    """``turn`` (the agent's next step) or ``summary`` (summarise the conversation so
    far, so that the agent can continue with a shorter one)."""


class ModelResponse(msgspec.Struct, omit_defaults=True):
    """What a model answered: a message (text and/or tool calls) and its usage."""

    message: Message
    usage: Usage = msgspec.field(default_factory=Usage)
    model: str = ""
