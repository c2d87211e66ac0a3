"""Models: what answers a :class:`ModelRequest`. Runs inside a model-call activity."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from perdure import ConfigurationError
from perdure.agents._messages import Message, ModelRequest, ModelResponse, ToolCall, Usage

__all__ = ["Model", "ScriptedModel"]


@runtime_checkable
class Model(Protocol):
    """Anything with a name that turns a request into a response, asynchronously."""

    name: str

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Answer one model call. A model that streams may also take a keyword
        ``token_sink`` (called with the answer's text as it is produced); the agent loop
        passes it only to models whose ``complete`` accepts it."""
        ...


ScriptItem = (str | ModelResponse | Message | ToolCall | Sequence[ToolCall]
              | Callable[[ModelRequest], Any])


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


def _response(item: Any, request: ModelRequest) -> ModelResponse:
    if isinstance(item, ModelResponse):
        return item
    if isinstance(item, str):
        message = Message.assistant(item)
    elif isinstance(item, Message):
        message = item
    elif isinstance(item, ToolCall):
        message = Message.assistant(tool_calls=[item])
    elif isinstance(item, list | tuple) and all(isinstance(c, ToolCall) for c in item):
        message = Message.assistant(tool_calls=list(item))
    else:
        raise ConfigurationError(f"a ScriptedModel cannot answer with {item!r}")
    prompt = sum(_estimate_tokens(m.content) for m in request.messages)
    output = _estimate_tokens(message.content) + 8 * len(message.tool_calls)
    return ModelResponse(message=message, usage=Usage(prompt, output, 1), model="scripted")


class ScriptedModel:
    """A deterministic model for tests and offline demos.

    ``script`` is a list of answers, used in order (a ``str`` is a final text answer, a
    :class:`ToolCall` or list of them asks for tools, a :class:`ModelResponse` is used
    as is), or a function of the request returning one of those (sync or async).
    ``calls`` counts the calls this process made.
    """

    def __init__(self, script: Sequence[ScriptItem] | Callable[[ModelRequest], Any], *,
                 name: str = "scripted") -> None:
        self.name = name
        self._script = script
        self.calls = 0
        self.requests: list[ModelRequest] = []

    @staticmethod
    def call(tool: str, id: str | None = None, **arguments: Any) -> ToolCall:
        """A tool call for a script: ``ScriptedModel.call("run_tests", path="src")``."""
        return ToolCall(id=id or f"call-{tool}-{next(_ids)}", name=tool, arguments=arguments)

    async def complete(self, request: ModelRequest, *,
                       token_sink: Callable[[str], None] | None = None) -> ModelResponse:
        """The next scripted answer (or the script function's answer to ``request``);
        ``token_sink``, if given, is called once with the answer's whole text."""
        index = self.calls
        self.calls += 1
        self.requests.append(request)
        if callable(self._script):
            item = self._script(request)
            if inspect.isawaitable(item):
                item = await item
        else:
            # the conversation decides where the script is, not this process's count:
            # a model call retried after a crash answers the same as the first time
            index = sum(1 for m in request.messages if m.role == "assistant")
            if index >= len(self._script):
                raise ConfigurationError(
                    f"ScriptedModel {self.name!r} has {len(self._script)} answers; the "
                    f"conversation asks for answer {index + 1}")
            item = self._script[index]
            if callable(item) and not isinstance(item, ToolCall):
                item = item(request)
                if inspect.isawaitable(item):
                    item = await item
        response = _response(item, request)
        if token_sink is not None and response.message.content:
            token_sink(response.message.content)
        return response


_ids = itertools.count(1)


def as_model(model: Any) -> Model:
    """Check that ``model`` can answer requests."""
    if not isinstance(model, Model):
        raise ConfigurationError(
            f"{model!r} is not a model: it needs a name and an async complete(request)")
    return model


ModelFunction = Callable[[ModelRequest], Awaitable[ModelResponse]]
