"""A model for any OpenAI-compatible chat-completions endpoint: OpenAI, vLLM, Ollama,
LM Studio, and the many servers that speak the same API.

It runs inside the model-call activity, so what it raises decides retries: a rate limit
is retried when the provider says (``Retry-After``), a server error or a lost connection
with back-off, and a request the provider refuses (bad request, context overflow, wrong
key) fails at once with the provider's reason. It needs ``httpx``
(``pip install 'perdure[openai]'``), imported only when the model is called.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from perdure import ApplicationError, ConfigurationError
from perdure.agents._endpoint import (
    AUTH_ERROR,
    CONTEXT_OVERFLOW,
    RATE_LIMITED,
    REQUEST_ERROR,
    REQUEST_TOO_LARGE,
    SERVER_ERROR,
    ModelEndpoint,
    clip,
)
from perdure.agents._messages import Message, ModelRequest, ModelResponse, ToolCall, Usage

if TYPE_CHECKING:
    import httpx

__all__ = ["OpenAIChatModel"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"

NON_RETRYABLE_TYPES = (REQUEST_ERROR, CONTEXT_OVERFLOW, REQUEST_TOO_LARGE, AUTH_ERROR)
"""The error types this model raises with ``non_retryable=True``."""

_CONTEXT_OVERFLOW = re.compile(
    r"context[ _-]?(length|window)|maximum context|prompt is too long|too many tokens",
    re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:
        raise ConfigurationError(
            "OpenAIChatModel needs httpx, which is not installed: "
            "pip install 'perdure[openai]'") from None
    return httpx


class OpenAIChatModel(ModelEndpoint):
    """A :class:`~perdure.agents.Model` that calls an OpenAI-compatible
    ``/chat/completions`` endpoint.

    ``base_url`` defaults to ``$OPENAI_BASE_URL``, then ``https://api.openai.com/v1``
    (for a local server: ``http://localhost:11434/v1`` for Ollama, ``:8000/v1`` for
    vLLM, ``:1234/v1`` for LM Studio); ``api_key`` to ``$OPENAI_API_KEY`` (a local
    server may need none). ``name`` (the model's name in the agent's records) defaults
    to ``model``. ``timeout`` bounds connecting and each read, in seconds; with
    ``stream=True`` the answer comes as server-sent events (and ``token_sink`` of
    :meth:`complete` sees the text as it is written). ``extra_body`` is merged into
    every request body (provider-specific options; a ``None`` value removes a key, e.g.
    ``{"stream_options": None}`` for a server that refuses it); ``max_tokens`` and
    ``temperature`` are sent when set.

    Failures are :class:`~perdure.ApplicationError` s whose ``type`` the model-call
    retry policy acts on: ``ModelRateLimited`` (429, 529, a 503 with ``Retry-After``;
    retried after the provider's ``Retry-After``), ``ModelServerError`` (other 5xx,
    timeouts, connection errors; retried with back-off), and, never retried,
    ``ModelRequestError`` (400, 404, 422...), ``ModelContextOverflow`` (the
    conversation no longer fits the model), ``ModelRequestTooLarge`` (413) and
    ``ModelAuthError`` (401, 403, a 429 for an exhausted quota).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        name: str | None = None,
        timeout: float = 120,
        stream: bool = True,
        extra_body: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> None:
        if not model or not isinstance(model, str):
            raise ConfigurationError("OpenAIChatModel needs a model name, e.g. 'gpt-4o-mini'")
        if timeout <= 0:
            raise ConfigurationError(f"OpenAIChatModel {model!r}: timeout must be positive")
        self.model = model
        self.name = name or model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL")
                         or DEFAULT_BASE_URL).rstrip("/")
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = float(timeout)
        self.stream = stream
        self.extra_body = dict(extra_body or {})
        self.max_tokens = max_tokens
        self.temperature = temperature

    def __repr__(self) -> str:
        return f"OpenAIChatModel({self.model!r}, base_url={self._where()!r})"

    # ------------------------------------------------------------ the call
    async def complete(self, request: ModelRequest, *,
                       token_sink: Callable[[str], None] | None = None) -> ModelResponse:
        """Answer one model call: ``token_sink``, if given, is called with each piece of
        the answer's text as it arrives (streaming), or once with all of it."""
        httpx = _httpx()
        body = self.request_body(request)
        headers = {"Content-Type": "application/json",
                   "Accept": "text/event-stream" if self.stream else "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        url = f"{self.base_url}/chat/completions"
        return await self._exchange(httpx, url, body, headers, token_sink)

    # ------------------------------------------------------------ request
    def request_body(self, request: ModelRequest) -> dict[str, Any]:
        """The JSON body sent to ``/chat/completions`` for ``request``."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [_message(m) for m in request.messages],
        }
        if request.tools:
            body["tools"] = [
                {"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters}}
                for t in request.tools
            ]
        if request.output_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "output", "schema": _inline_root(request.output_schema)}}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(self.extra_body)
        return {k: v for k, v in body.items() if v is not None}

    # ------------------------------------------------------------ response
    def _decode(self, text: str) -> dict[str, Any]:
        try:
            data = json.loads(text)
        except ValueError:
            raise ApplicationError(
                f"{self._who()} answered with something that is not JSON: "
                f"{clip(self._redact(text))!r}", type=SERVER_ERROR) from None
        if not isinstance(data, dict):
            raise ApplicationError(f"{self._who()} answered with unexpected JSON: "
                                   f"{clip(text)!r}", type=SERVER_ERROR)
        if data.get("error"):
            raise self._body_error(data["error"])
        return data

    def _whole(self, text: str, token_sink: Callable[[str], None] | None) -> ModelResponse:
        """A complete (not streamed) completion."""
        result = self._parse_response(self._decode(text))
        if token_sink is not None and result.message.content:
            token_sink(result.message.content)
        return result

    def _parse_response(self, data: dict[str, Any]) -> ModelResponse:
        choices = data.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            raise ApplicationError(f"{self._who()} answered without a choice: "
                                   f"{clip(json.dumps(data))}", type=SERVER_ERROR)
        message = choices[0].get("message") or {}
        content = message.get("content") or message.get("refusal") or ""
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        calls = [_tool_call(c.get("id"), (c.get("function") or {}).get("name"),
                            (c.get("function") or {}).get("arguments"))
                 for c in message.get("tool_calls") or [] if isinstance(c, dict)]
        return ModelResponse(
            message=Message.assistant(str(content), calls),
            usage=_usage(data.get("usage")),
            model=str(data.get("model") or self.model),
        )

    async def _read_stream(self, response: httpx.Response,
                           token_sink: Callable[[str], None] | None) -> ModelResponse:
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        usage: dict[str, Any] | None = None
        model = ""
        finished = False
        async for data in _events(response):
            if data == "[DONE]":
                finished = True
                break
            chunk = self._decode(data)
            model = str(chunk.get("model") or model)
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                if choice.get("finish_reason"):
                    finished = True
                delta = choice.get("delta") or {}
                piece = delta.get("content") or delta.get("refusal")
                if piece:
                    text.append(piece)
                    if token_sink is not None:
                        token_sink(piece)
                for position, part in enumerate(delta.get("tool_calls") or []):
                    _accumulate(calls, position, part)
        if not finished:
            raise ApplicationError(f"{self._who()} ended its stream before the answer was "
                                   "complete", type=SERVER_ERROR)
        tool_calls = [_tool_call(c["id"], c["name"], c["arguments"])
                      for _, c in sorted(calls.items())]
        return ModelResponse(message=Message.assistant("".join(text), tool_calls),
                             usage=_usage(usage), model=model or self.model)

    # ------------------------------------------------------------ errors
    def _status_error(self, response: httpx.Response, text: str) -> ApplicationError:
        status = response.status_code
        detail, code = _provider_error(text)
        said = f"HTTP {status}" + (f": {self._redact(detail)}" if detail else "")
        headers = response.headers
        if code == "insufficient_quota":  # billing, not load: waiting will not help
            return ApplicationError(f"{self._who()} says this account has no quota left "
                                    f"({said})", type=AUTH_ERROR, non_retryable=True)
        if status in (429, 529) or (status == 503 and "retry-after" in headers):
            delay = retry_delay(headers)
            when = f"; try again in {delay:g}s" if delay is not None else ""
            return ApplicationError(f"{self._who()} is rate limiting this client ({said}){when}",
                                    type=RATE_LIMITED, next_retry_delay=delay)
        if status >= 500 or status in (408, 409, 425):
            return ApplicationError(f"{self._who()} failed ({said})", type=SERVER_ERROR)
        if status in (401, 403):
            key = "an API key" if self._api_key else "no API key ($OPENAI_API_KEY is unset)"
            return ApplicationError(
                f"{self._who()} refused the credentials ({said}); this client sent {key}",
                type=AUTH_ERROR, non_retryable=True)
        if status == 413:
            return ApplicationError(f"{self._who()} refused a request this large ({said})",
                                    type=REQUEST_TOO_LARGE, non_retryable=True)
        if code == "context_length_exceeded" or _CONTEXT_OVERFLOW.search(detail):
            return ApplicationError(
                f"the conversation no longer fits the context window of {self._who()} "
                f"({said})", type=CONTEXT_OVERFLOW, non_retryable=True)
        return ApplicationError(f"{self._who()} rejected the request ({said})",
                                type=REQUEST_ERROR, non_retryable=True)

    def _body_error(self, error: Any) -> ApplicationError:
        """An error reported in a 200 body or in the middle of a stream."""
        detail, code = _provider_error(json.dumps({"error": error}))
        said = self._redact(detail) or "an error"
        kind = f"{code} {error.get('type', '')}" if isinstance(error, dict) else ""
        if code == "context_length_exceeded" or _CONTEXT_OVERFLOW.search(detail):
            return ApplicationError(
                f"the conversation no longer fits the context window of {self._who()} "
                f"({said})", type=CONTEXT_OVERFLOW, non_retryable=True)
        if "rate_limit" in kind:
            return ApplicationError(f"{self._who()} is rate limiting this client ({said})",
                                    type=RATE_LIMITED)
        return ApplicationError(f"{self._who()} reported {said}", type=SERVER_ERROR)


# ------------------------------------------------------------ helpers
def _message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id or "",
                "content": message.content}
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["content"] = message.content or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in message.tool_calls
        ]
    return out


def _tool_call(id: Any, name: Any, arguments: Any) -> ToolCall:
    if isinstance(arguments, dict):  # some servers (Ollama) send an object
        parsed: dict[str, Any] = arguments
    elif not arguments or (isinstance(arguments, str) and not arguments.strip()):
        parsed = {}
    else:
        try:
            value = json.loads(arguments)
        except (TypeError, ValueError):
            value = None
        # malformed: kept as is, so that the tool's validation tells the model
        parsed = value if isinstance(value, dict) else {"_raw": str(arguments)}
    return ToolCall(id=str(id) if id else f"call_{uuid.uuid4().hex[:24]}",
                    name=str(name or ""), arguments=parsed)


def _accumulate(calls: dict[int, dict[str, Any]], position: int, part: Any) -> None:
    """Add one streamed tool-call fragment to the calls it belongs to (by ``index``)."""
    if not isinstance(part, dict):
        return
    index = part.get("index")
    if not isinstance(index, int):
        index = position
    call = calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
    if part.get("id") and not call["id"]:
        call["id"] = part["id"]
    function = part.get("function") or {}
    if function.get("name"):
        call["name"] += function["name"]
    arguments = function.get("arguments")
    if isinstance(arguments, dict):
        call["arguments"] = arguments
    elif arguments:
        if isinstance(call["arguments"], dict):
            call["arguments"] = json.dumps(call["arguments"])
        call["arguments"] += arguments


async def _events(response: httpx.Response) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event (lines of one event joined by newlines)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if not line.strip():
            if lines:
                yield "\n".join(lines)
                lines = []
            continue
        if line.startswith("data:"):
            data = line[5:]
            lines.append(data[1:] if data.startswith(" ") else data)
            if lines[-1].strip() == "[DONE]":
                yield "[DONE]"
                return
    if lines:
        yield "\n".join(lines)


def _usage(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage(model_calls=1)
    return Usage(input_tokens=int(usage.get("prompt_tokens") or 0),
                 output_tokens=int(usage.get("completion_tokens") or 0), model_calls=1)


def _provider_error(text: str) -> tuple[str, str]:
    """The provider's error message and code, from its JSON error body (or the text)."""
    try:
        data = json.loads(text)
    except ValueError:
        return clip(text.strip()), ""
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or json.dumps(error)
        code = error.get("code") or ""
        if not isinstance(message, str):
            message = json.dumps(message)
        return clip(message), str(code)
    return clip(str(error)), ""


def _inline_root(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema whose root is the object itself, not a ``$ref`` to it (msgspec's form):
    OpenAI's structured outputs want the root to be an object."""
    ref = schema.get("$ref")
    defs = schema.get("$defs")
    if not isinstance(ref, str) or not isinstance(defs, dict) \
            or not ref.startswith("#/$defs/"):
        return schema
    root = defs.get(ref[len("#/$defs/"):])
    if not isinstance(root, dict):
        return schema
    inlined = {k: v for k, v in schema.items() if k != "$ref"}
    inlined.update(root)
    return inlined


def retry_delay(headers: Any, now: float | None = None) -> float | None:
    """Seconds the provider asks a client to wait: ``retry-after-ms``, ``Retry-After``
    (seconds or an HTTP date), else ``x-ratelimit-reset-*`` (of the exhausted limit if
    it says which; durations like ``1m30s`` or ``20ms``). None if it does not say."""
    now = time.time() if now is None else now
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                date = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                date = None
            if date is not None and date.tzinfo is not None:
                return max(0.0, date.timestamp() - now)
    resets: dict[str, float] = {}
    for key, raw in headers.items():
        key = key.lower()
        if key.startswith("x-ratelimit-reset"):
            seconds = _reset_seconds(raw, now)
            if seconds is not None:
                resets[key[len("x-ratelimit-reset"):].lstrip("-")] = seconds
    if not resets:
        return None
    exhausted = [seconds for limit, seconds in resets.items()
                 if str(headers.get(f"x-ratelimit-remaining-{limit}", "")).strip() == "0"]
    return max(exhausted or resets.values())


def _reset_seconds(value: str, now: float) -> float | None:
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        # a plain number is seconds, or (past a billion) the epoch second of the reset
        return max(0.0, number - now) if number > 1e9 else max(0.0, number)
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)
