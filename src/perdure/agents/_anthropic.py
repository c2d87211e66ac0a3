"""A model for Anthropic's Messages API (Claude), spoken over plain HTTP.

It runs inside the model-call activity, so what it raises decides retries, as with
:class:`~perdure.agents.OpenAIChatModel`: a rate limit or an overloaded API is retried
when the provider says (``Retry-After``, ``anthropic-ratelimit-*-reset``), a server
error or a lost connection with back-off, and a request the API refuses (bad request,
context overflow, wrong key) fails at once with its reason. It needs ``httpx``
(``pip install 'perdure[anthropic]'``), imported only when the model is called; the
``anthropic`` SDK is not used.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
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

__all__ = ["AnthropicModel"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"

_CONTEXT_OVERFLOW = re.compile(
    r"prompt is too long|exceeds?\b[^.]*\bcontext|context[ _-]?(length|window|limit)"
    r"|too many (input )?tokens",
    re.IGNORECASE)

OUTPUT_INSTRUCTION = (
    "Your final answer (when you call no more tools) must be a single JSON value that "
    "matches the JSON schema below: only the JSON, with no other text and no code "
    "fences.\n\nJSON schema:\n{schema}")
"""Appended to the system prompt when the agent wants structured output: the Messages
API has no JSON-schema response format (the agent loop validates the answer, and asks
again if it does not fit)."""


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:
        raise ConfigurationError(
            "AnthropicModel needs httpx, which is not installed: "
            "pip install 'perdure[anthropic]'") from None
    return httpx


class AnthropicModel(ModelEndpoint):
    """A :class:`~perdure.agents.Model` that calls Anthropic's Messages API
    (``POST {base_url}/v1/messages``).

    ``base_url`` defaults to ``$ANTHROPIC_BASE_URL``, then ``https://api.anthropic.com``
    (a base URL that already ends in ``/v1`` is used as is); ``api_key`` to
    ``$ANTHROPIC_API_KEY``. ``name`` (the model's name in the agent's records) defaults
    to ``model``. ``max_tokens`` bounds each answer (the API requires it); ``timeout``
    bounds connecting and each read, in seconds; with ``stream=True`` the answer comes
    as server-sent events (and ``token_sink`` of :meth:`complete` sees the text as it is
    written). ``temperature`` is sent when set; ``extra_body`` is merged into every
    request body (e.g. ``{"top_k": 5}``; a ``None`` value removes a key).

    The conversation is mapped to the API's shape: system messages become the top-level
    ``system`` prompt, tool calls ``tool_use`` blocks, tool results ``tool_result``
    blocks of a user message, and consecutive messages of one role are merged (the API
    wants roles to alternate). An output schema becomes an instruction in the system
    prompt. Input tokens include prompt-cache reads and writes.

    Failures are :class:`~perdure.ApplicationError` s whose ``type`` the model-call
    retry policy acts on: ``ModelRateLimited`` (429, 529 overloaded; retried after the
    provider's ``Retry-After`` or rate-limit reset), ``ModelServerError`` (500, 502,
    503, 504, timeouts, connection errors; retried with back-off), and, never retried,
    ``ModelRequestError`` (400, 404...), ``ModelContextOverflow`` (the conversation no
    longer fits the model), ``ModelRequestTooLarge`` (413) and ``ModelAuthError`` (401,
    403, billing).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        name: str | None = None,
        max_tokens: int = 4096,
        timeout: float = 120,
        stream: bool = True,
        temperature: float | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if not model or not isinstance(model, str):
            raise ConfigurationError(
                "AnthropicModel needs a model name, e.g. 'claude-sonnet-4-5'")
        if timeout <= 0:
            raise ConfigurationError(f"AnthropicModel {model!r}: timeout must be positive")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigurationError(
                f"AnthropicModel {model!r}: max_tokens must be a positive integer")
        self.model = model
        self.name = name or model
        self.base_url = (base_url or os.environ.get("ANTHROPIC_BASE_URL")
                         or DEFAULT_BASE_URL).rstrip("/")
        self._api_key = api_key if api_key is not None else os.environ.get("ANTHROPIC_API_KEY")
        self.max_tokens = max_tokens
        self.timeout = float(timeout)
        self.stream = stream
        self.temperature = temperature
        self.extra_body = dict(extra_body or {})

    def __repr__(self) -> str:
        return f"AnthropicModel({self.model!r}, base_url={self._where()!r})"

    @property
    def url(self) -> str:
        """Where requests go: ``{base_url}/v1/messages``."""
        if self.base_url.endswith("/v1"):
            return f"{self.base_url}/messages"
        return f"{self.base_url}/v1/messages"

    # ------------------------------------------------------------ the call
    async def complete(self, request: ModelRequest, *,
                       token_sink: Callable[[str], None] | None = None) -> ModelResponse:
        """Answer one model call: ``token_sink``, if given, is called with each piece of
        the answer's text as it arrives (streaming), or once with all of it."""
        httpx = _httpx()
        body = self.request_body(request)
        headers = {"anthropic-version": API_VERSION, "Content-Type": "application/json",
                   "Accept": "text/event-stream" if self.stream else "application/json"}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        return await self._exchange(httpx, self.url, body, headers, token_sink)

    # ------------------------------------------------------------ request
    def request_body(self, request: ModelRequest) -> dict[str, Any]:
        """The JSON body sent to ``/v1/messages`` for ``request``."""
        system, messages = wire_messages(request.messages)
        if request.output_schema is not None:
            system.append(OUTPUT_INSTRUCTION.format(
                schema=json.dumps(request.output_schema, indent=1)))
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": messages,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.tools:
            body["tools"] = [{"name": t.name, "description": t.description,
                              "input_schema": t.parameters} for t in request.tools]
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.stream:
            body["stream"] = True
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
                                   f"{clip(self._redact(text))!r}", type=SERVER_ERROR)
        if data.get("type") == "error" or (data.get("error") and "content" not in data):
            raise self._error(None, data.get("error"), None)
        return data

    def _whole(self, text: str, token_sink: Callable[[str], None] | None) -> ModelResponse:
        """A complete (not streamed) answer."""
        data = self._decode(text)
        content = data.get("content")
        if not isinstance(content, list):
            raise ApplicationError(f"{self._who()} answered without content: "
                                   f"{clip(self._redact(text))}", type=SERVER_ERROR)
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                texts.append(str(block.get("text") or ""))
            elif block.get("type") == "tool_use":
                calls.append(_tool_call(block.get("id"), block.get("name"),
                                        block.get("input")))
        result = ModelResponse(message=Message.assistant("".join(texts), calls),
                               usage=_usage(data.get("usage")),
                               model=str(data.get("model") or self.model))
        if token_sink is not None and result.message.content:
            token_sink(result.message.content)
        return result

    async def _read_stream(self, response: httpx.Response,
                           token_sink: Callable[[str], None] | None) -> ModelResponse:
        blocks: dict[int, dict[str, Any]] = {}
        usage: dict[str, Any] = {}
        model = ""
        finished = False
        async for event, data in _events(response):
            if not data.strip():
                continue
            payload = self._decode(data)
            kind = payload.get("type") or event
            if kind == "message_start":
                message = payload.get("message") or {}
                model = str(message.get("model") or model)
                _merge_usage(usage, message.get("usage"))
            elif kind == "content_block_start":
                block = payload.get("content_block") or {}
                blocks[_index(payload, blocks, new=True)] = {
                    "type": block.get("type"), "id": block.get("id"),
                    "name": block.get("name"), "input": block.get("input"),
                    "text": [str(block["text"])] if block.get("text") else [], "json": []}
                if block.get("text") and token_sink is not None:
                    token_sink(str(block["text"]))
            elif kind == "content_block_delta":
                delta = payload.get("delta") or {}
                current = blocks.setdefault(_index(payload, blocks, new=False), {
                    "type": None, "id": None, "name": None, "input": None,
                    "text": [], "json": []})
                if delta.get("type") == "text_delta" and delta.get("text"):
                    current["type"] = current["type"] or "text"
                    current["text"].append(str(delta["text"]))
                    if token_sink is not None:
                        token_sink(str(delta["text"]))
                elif delta.get("type") == "input_json_delta":
                    current["json"].append(str(delta.get("partial_json") or ""))
            elif kind == "message_delta":
                _merge_usage(usage, payload.get("usage"))
            elif kind == "message_stop":
                finished = True
                break
            # ping, content_block_stop and events this model does not know: nothing to do
        if not finished:
            raise ApplicationError(f"{self._who()} ended its stream before the answer was "
                                   "complete", type=SERVER_ERROR)
        texts: list[str] = []
        calls: list[ToolCall] = []
        for _, block in sorted(blocks.items()):
            if block["type"] == "text":
                texts.append("".join(block["text"]))
            elif block["type"] == "tool_use":
                streamed = "".join(block["json"])
                calls.append(_tool_call(block["id"], block["name"],
                                        streamed if streamed.strip() else block["input"]))
        return ModelResponse(message=Message.assistant("".join(texts), calls),
                             usage=_usage(usage), model=model or self.model)

    # ------------------------------------------------------------ errors
    def _status_error(self, response: httpx.Response, text: str) -> ApplicationError:
        error: Any
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("error") is not None:
            error = data["error"]
        elif isinstance(data, dict):
            error = data
        else:
            error = text
        return self._error(response.status_code, error, response.headers)

    def _error(self, status: int | None, error: Any, headers: Any) -> ApplicationError:
        """The error for an HTTP status (None: an ``error`` event in a stream or a 200
        body) and the API's error object ``{"type": ..., "message": ...}``."""
        kind = ""
        if isinstance(error, dict):
            kind = str(error.get("type") or "")
            detail = error.get("message") or error.get("detail") or json.dumps(error)
            if not isinstance(detail, str):
                detail = json.dumps(detail)
        else:
            detail = str(error or "")
        detail = clip(self._redact(detail.strip()))
        if status is not None:
            said = f"HTTP {status}" + (f": {detail}" if detail else "")
        else:
            said = (f"{kind}: {detail}" if kind and detail else kind or detail) or "an error"
        retry_after = retry_delay(headers) if headers is not None else None
        if status in (429, 529) or kind in ("rate_limit_error", "overloaded_error"):
            what = ("is overloaded" if status == 529 or kind == "overloaded_error"
                    else "is rate limiting this client")
            when = f"; try again in {retry_after:g}s" if retry_after is not None else ""
            return ApplicationError(f"{self._who()} {what} ({said}){when}",
                                    type=RATE_LIMITED, next_retry_delay=retry_after)
        if status in (401, 403) or kind in ("authentication_error", "permission_error"):
            key = "an API key" if self._api_key else "no API key ($ANTHROPIC_API_KEY is unset)"
            return ApplicationError(
                f"{self._who()} refused the credentials ({said}); this client sent {key}",
                type=AUTH_ERROR, non_retryable=True)
        if status == 402 or kind == "billing_error":  # waiting will not help
            return ApplicationError(f"{self._who()} refused this account's billing ({said})",
                                    type=AUTH_ERROR, non_retryable=True)
        if status == 413 or kind == "request_too_large":
            return ApplicationError(f"{self._who()} refused a request this large ({said})",
                                    type=REQUEST_TOO_LARGE, non_retryable=True)
        if (status is not None and (status >= 500 or status in (408, 409))) or \
                (status is None and kind not in ("invalid_request_error", "not_found_error")):
            return ApplicationError(f"{self._who()} failed ({said})", type=SERVER_ERROR,
                                    next_retry_delay=retry_after)
        if _CONTEXT_OVERFLOW.search(detail):
            return ApplicationError(
                f"the conversation no longer fits the context window of {self._who()} "
                f"({said})", type=CONTEXT_OVERFLOW, non_retryable=True)
        return ApplicationError(f"{self._who()} rejected the request ({said})",
                                type=REQUEST_ERROR, non_retryable=True)


# ------------------------------------------------------------ the conversation
def wire_messages(messages: list[Message]) -> tuple[list[str], list[dict[str, Any]]]:
    """The system prompts and the Messages API's ``messages`` for a conversation.

    Tool results become ``tool_result`` blocks of a user message; consecutive messages
    of one role merge into one (roles must alternate), with tool results first (the API
    wants them before any text of their message); empty messages are left out (the API
    refuses empty text).
    """
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            if message.content.strip():
                system.append(message.content)
            continue
        blocks: list[dict[str, Any]] = []
        if message.role == "tool":
            role = "user"
            result: dict[str, Any] = {"type": "tool_result",
                                      "tool_use_id": message.tool_call_id or ""}
            if message.content:
                result["content"] = message.content
            result["is_error"] = message.is_error
            blocks.append(result)
        else:
            role = "assistant" if message.role == "assistant" else "user"
            if message.content.strip():
                blocks.append({"type": "text", "text": message.content})
            blocks.extend({"type": "tool_use", "id": call.id, "name": call.name,
                           "input": call.arguments} for call in message.tool_calls)
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    for turn in out:
        if turn["role"] == "user":  # stable: tool results first, in their order
            turn["content"].sort(key=lambda b: b["type"] != "tool_result")
    return system, out


# ------------------------------------------------------------ helpers
def _index(payload: dict[str, Any], blocks: dict[int, Any], *, new: bool) -> int:
    index = payload.get("index")
    if isinstance(index, int):
        return index
    return len(blocks) if new or not blocks else max(blocks)


def _tool_call(id: Any, name: Any, arguments: Any) -> ToolCall:
    if isinstance(arguments, dict):
        parsed: dict[str, Any] = arguments
    elif arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        parsed = {}
    else:
        try:
            value = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            value = None
        # malformed (an answer cut off at max_tokens): kept as is, so that the tool's
        # validation tells the model
        parsed = value if isinstance(value, dict) else {"_raw": str(arguments)}
    return ToolCall(id=str(id) if id else f"toolu_{uuid.uuid4().hex[:24]}",
                    name=str(name or ""), arguments=parsed)


def _merge_usage(usage: dict[str, Any], more: Any) -> None:
    """``message_delta`` counts are cumulative: the latest of each wins."""
    if isinstance(more, dict):
        usage.update({k: v for k, v in more.items() if v is not None})


def _usage(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage(model_calls=1)

    def count(key: str) -> int:
        value = usage.get(key)
        return int(value) if isinstance(value, int | float) else 0

    return Usage(input_tokens=count("input_tokens") + count("cache_creation_input_tokens")
                 + count("cache_read_input_tokens"),
                 output_tokens=count("output_tokens"), model_calls=1)


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """Each server-sent event: its ``event`` name and its ``data`` (lines joined)."""
    event = ""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if not line.strip():
            if lines or event:
                yield event, "\n".join(lines)
            event, lines = "", []
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value.strip()
        elif field == "data":
            lines.append(value)
    if lines or event:
        yield event, "\n".join(lines)


def retry_delay(headers: Any, now: float | None = None) -> float | None:
    """Seconds the API asks a client to wait: ``Retry-After`` (seconds or an HTTP date),
    else the ``anthropic-ratelimit-*-reset`` times (RFC 3339) of the exhausted limits
    (``...-remaining: 0``), or of all if none says it is exhausted. None if it does not
    say."""
    now = time.time() if now is None else now
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
    prefix = "anthropic-ratelimit-"
    resets: dict[str, float] = {}
    for key, raw in headers.items():
        key = key.lower()
        if key.startswith(prefix) and key.endswith("-reset"):
            seconds = _reset_seconds(str(raw), now)
            if seconds is not None:
                resets[key[len(prefix):-len("-reset")]] = seconds
    if not resets:
        return None
    exhausted = [seconds for limit, seconds in resets.items()
                 if str(headers.get(f"{prefix}{limit}-remaining", "")).strip() == "0"]
    return max(exhausted or resets.values())


def _reset_seconds(value: str, now: float) -> float | None:
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:  # a proxy's plain number: seconds, or (past a billion) the epoch second
        return max(0.0, number - now) if number > 1e9 else max(0.0, number)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)
