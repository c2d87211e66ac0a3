"""AnthropicModel against a fake Messages API server on the loopback: real HTTP (plain
JSON and server-sent events), the conversation mapped to the API's shape, the API's
errors mapped to retry decisions, and agent runs through it on both backends."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import Any

import msgspec
import pytest

from perdure import ApplicationError
from perdure.agents import (
    Agent,
    AgentWorker,
    AnthropicModel,
    Message,
    ModelRequest,
    ToolCall,
    ToolSpec,
    Usage,
    tool,
)
from perdure.agents._agent import DEFAULT_MODEL_RETRY
from perdure.agents._anthropic import retry_delay
from perdure.testing import WorkflowEnvironment

from ._fake_http import FakeHTTPServer, Reply, anthropic_sse

pytest.importorskip("httpx")

KEY = "sk-ant-test-SECRET-0123456789"


# ------------------------------------------------------------ the fake server
class FakeMessagesServer(FakeHTTPServer):
    """The fake server, speaking the Messages API with named events."""

    def __init__(self, handler: Callable[[dict[str, Any], int], Reply],
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(handler, clock, base_path="", sse=anthropic_sse)


# ------------------------------------------------------------ what the API answers
def message(*content: dict[str, Any], usage: tuple[int, int] = (10, 5),
            stop: str = "end_turn") -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-fake-1",
            "content": list(content), "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": usage[0], "output_tokens": usage[1]}}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(id: str, name: str, input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": id, "name": name, "input": input}


def message_start(input_tokens: int = 10) -> dict[str, Any]:
    return {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-fake-1",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def text_delta(index: int, value: str) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index,
            "delta": {"type": "text_delta", "text": value}}


def json_delta(index: int, partial: str) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index,
            "delta": {"type": "input_json_delta", "partial_json": partial}}


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_end(output_tokens: int, stop: str = "end_turn") -> list[dict[str, Any]]:
    return [{"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
             "usage": {"output_tokens": output_tokens}},
            {"type": "message_stop"}]


PING = {"type": "ping"}


def streamed_text(*pieces: str, usage: tuple[int, int] = (10, 5)) -> list[Any]:
    return ([message_start(usage[0]), block_start(0, text("")), PING]
            + [text_delta(0, p) for p in pieces]
            + [block_stop(0), *message_end(usage[1])])


def streamed_tool_use(id: str, name: str, *partials: str,
                      usage: tuple[int, int] = (50, 10)) -> list[Any]:
    return ([message_start(usage[0]), block_start(0, tool_use(id, name, {}))]
            + [json_delta(0, p) for p in partials]
            + [block_stop(0), *message_end(usage[1], "tool_use")])


def api_error(kind: str, text: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": text},
            "request_id": "req_011"}


REQUEST = ModelRequest(agent="a", messages=[Message.system("Be brief."), Message.user("Hi")])


# ------------------------------------------------------------ answers
async def test_plain_answer_usage_headers_and_body_without_streaming() -> None:
    reply = Reply(body=message(text("Hello "), text("there!"), usage=(12, 3)))
    async with FakeMessagesServer(lambda b, n: reply) as server:
        model = AnthropicModel("claude-fake-1", base_url=server.base_url, api_key=KEY,
                               stream=False, max_tokens=100, temperature=0.2,
                               extra_body={"top_k": 5})
        sink: list[str] = []
        response = await model.complete(REQUEST, token_sink=sink.append)
    assert response.message == Message.assistant("Hello there!")
    assert response.usage == Usage(input_tokens=12, output_tokens=3, model_calls=1)
    assert response.model == "claude-fake-1" and model.name == "claude-fake-1"
    assert sink == ["Hello there!"]
    seen = server.requests[0]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == KEY
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    assert seen.body == {
        "model": "claude-fake-1", "max_tokens": 100, "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "temperature": 0.2, "top_k": 5,
    }


async def test_the_conversation_alternates_roles_and_tool_results_go_back() -> None:
    a = ToolCall(id="toolu_a", name="lookup", arguments={"city": "Paris"})
    b = ToolCall(id="toolu_b", name="lookup", arguments={"city": "Rome"})
    c = ToolCall(id="toolu_c", name="convert", arguments={})
    request = ModelRequest(
        agent="a",
        messages=[Message.system("sys"), Message.user("weather?"),
                  Message.assistant("Let me look.", [a, b]),
                  Message.tool(a, "sunny"), Message.tool(b, "no such city", is_error=True),
                  Message.user("and hurry"),
                  Message.assistant(tool_calls=[c]), Message.tool(c, ""),
                  Message.assistant(""),  # an empty answer: nothing to send
                  Message.user("well?"),
                  Message.system("more rules")],
        tools=[ToolSpec(name="lookup", description="Look up the weather.",
                        parameters={"type": "object",
                                    "properties": {"city": {"type": "string"}}})],
    )
    async with FakeMessagesServer(lambda b, n: Reply(events=streamed_text("ok"))) as server:
        await AnthropicModel("m", base_url=server.base_url + "/").complete(request)
    body = server.bodies[0]
    assert body["system"] == "sys\n\nmore rules"
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_a", "name": "lookup",
             "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_b", "name": "lookup",
             "input": {"city": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny",
             "is_error": False},
            {"type": "tool_result", "tool_use_id": "toolu_b", "content": "no such city",
             "is_error": True},
            {"type": "text", "text": "and hurry"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_c", "name": "convert", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_c", "is_error": False},
            {"type": "text", "text": "well?"}]},
    ]
    roles = [m["role"] for m in body["messages"]]
    assert all(x != y for x, y in itertools.pairwise(roles))
    assert body["tools"] == [{"name": "lookup", "description": "Look up the weather.",
                              "input_schema": {"type": "object",
                                               "properties": {"city": {"type": "string"}}}}]
    assert body["stream"] is True and body["max_tokens"] == 4096
    assert "temperature" not in body and "response_format" not in body
    assert server.requests[0].path == "/v1/messages"
    assert "x-api-key" not in server.requests[0].headers  # no key, none sent


async def test_an_output_schema_becomes_an_instruction_in_the_system_prompt() -> None:
    class Plan(msgspec.Struct):
        steps: list[str]

    schema = msgspec.json.schema(Plan)
    request = ModelRequest(agent="a", messages=[Message.user("plan it")],
                           output_schema=schema)
    async with FakeMessagesServer(lambda b, n: Reply(events=streamed_text(
            '{"steps": ["a"]}'))) as server:
        response = await AnthropicModel("m", base_url=server.base_url).complete(request)
    system = server.bodies[0]["system"]
    assert "JSON" in system and '"steps"' in system and '"Plan"' in system
    assert msgspec.json.decode(response.message.content, type=Plan) == Plan(["a"])


async def test_tool_use_without_streaming() -> None:
    reply = Reply(body=message(text("Checking."),
                               tool_use("toolu_a", "lookup", {"city": "Paris"}),
                               tool_use("toolu_b", "noargs", {}), stop="tool_use"))
    async with FakeMessagesServer(lambda b, n: reply) as server:
        response = await AnthropicModel("m", base_url=server.base_url,
                                        stream=False).complete(REQUEST)
    assert response.message == Message.assistant("Checking.", [
        ToolCall(id="toolu_a", name="lookup", arguments={"city": "Paris"}),
        ToolCall(id="toolu_b", name="noargs", arguments={})])


async def test_streamed_tool_use_with_split_input_json_and_two_blocks() -> None:
    events: list[Any] = [
        message_start(40),
        block_start(0, text("")), text_delta(0, "Let me "), text_delta(0, "check."),
        block_stop(0),
        block_start(1, tool_use("toolu_a", "lookup", {})),
        json_delta(1, ""), json_delta(1, '{"ci'), json_delta(1, 'ty": "Pa'),
        json_delta(1, 'ris"}'), block_stop(1),
        block_start(2, tool_use("toolu_b", "convert", {})),
        json_delta(2, '{"amo'),
        # one event split across two network chunks, then two events in one chunk
        'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 2, ',
        '"delta": {"type": "input_json_delta", "partial_json": "unt\\": 3.5, "}}\n\n',
        "event: content_block_delta\ndata: " + json.dumps(json_delta(2, '"to": "EUR"}'))
        + "\n\nevent: content_block_stop\ndata: " + json.dumps(block_stop(2)) + "\n\n",
        block_start(3, tool_use("toolu_c", "noargs", {})), block_stop(3),
        *message_end(22, "tool_use"),
    ]
    async with FakeMessagesServer(lambda b, n: Reply(events=events)) as server:
        sink: list[str] = []
        response = await AnthropicModel("m", base_url=server.base_url).complete(
            REQUEST, token_sink=sink.append)
    assert response.message == Message.assistant("Let me check.", [
        ToolCall(id="toolu_a", name="lookup", arguments={"city": "Paris"}),
        ToolCall(id="toolu_b", name="convert", arguments={"amount": 3.5, "to": "EUR"}),
        ToolCall(id="toolu_c", name="noargs", arguments={})])
    assert response.usage == Usage(40, 22, 1) and sink == ["Let me ", "check."]


async def test_streaming_feeds_the_token_sink_and_counts_usage() -> None:
    events = streamed_text("Hel", "lo", " world", usage=(30, 3))
    events[0]["message"]["usage"].update(cache_read_input_tokens=100,
                                         cache_creation_input_tokens=7)
    async with FakeMessagesServer(lambda b, n: Reply(events=events)) as server:
        sink: list[str] = []
        response = await AnthropicModel("m", base_url=server.base_url).complete(
            REQUEST, token_sink=sink.append)
    assert sink == ["Hel", "lo", " world"]
    assert response.message == Message.assistant("Hello world")
    assert response.usage == Usage(137, 3, 1) and response.model == "claude-fake-1"
    assert server.requests[0].headers["accept"] == "text/event-stream"


async def test_a_server_that_does_not_stream_and_keys_removed_by_extra_body() -> None:
    async with FakeMessagesServer(lambda b, n: Reply(body=message(text("whole")))) as server:
        sink: list[str] = []
        model = AnthropicModel("m", base_url=server.base_url + "/v1",
                               extra_body={"stream": None, "metadata": {"user_id": "u1"}})
        response = await model.complete(REQUEST, token_sink=sink.append)
    assert response.message.content == "whole" and sink == ["whole"]
    assert response.usage == Usage(10, 5, 1)
    assert server.requests[0].path == "/v1/messages"  # a base URL with /v1: not doubled
    body = server.bodies[0]
    assert "stream" not in body and body["metadata"] == {"user_id": "u1"}


async def test_a_stream_cut_short_is_a_retryable_server_error() -> None:
    events = [message_start(), block_start(0, text("")), text_delta(0, "Half an ans")]
    async with FakeMessagesServer(lambda b, n: Reply(events=events)) as server:
        with pytest.raises(ApplicationError, match="ended its stream") as caught:
            await AnthropicModel("m", base_url=server.base_url).complete(REQUEST)
    assert caught.value.type == "ModelServerError" and not caught.value.non_retryable


@pytest.mark.parametrize(("error", "kind", "retryable"), [
    (("overloaded_error", "Overloaded"), "ModelRateLimited", True),
    (("api_error", "Internal server error"), "ModelServerError", True),
    (("invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum"),
     "ModelContextOverflow", False),
])
async def test_an_error_event_in_the_middle_of_a_stream(
    error: tuple[str, str], kind: str, retryable: bool,
) -> None:
    events = [message_start(), block_start(0, text("")), text_delta(0, "Hi"), PING,
              api_error(*error)]
    async with FakeMessagesServer(lambda b, n: Reply(events=events)) as server:
        with pytest.raises(ApplicationError) as caught:
            await AnthropicModel("m", base_url=server.base_url, api_key=KEY).complete(REQUEST)
    assert caught.value.type == kind and caught.value.non_retryable is not retryable
    assert error[1] in str(caught.value) and KEY not in str(caught.value)


# ------------------------------------------------------------ errors
async def fail_with(reply: Reply, *, stream: bool = True) -> ApplicationError:
    async with FakeMessagesServer(lambda b, n: reply) as server:
        model = AnthropicModel("claude-fake", base_url=server.base_url, api_key=KEY,
                               stream=stream)
        with pytest.raises(ApplicationError) as caught:
            await model.complete(REQUEST)
    error = caught.value
    assert "claude-fake" in str(error) and server.base_url in str(error)
    assert KEY not in str(error) and KEY not in repr(error.details)
    assert len(server.requests) == 1
    return error


@pytest.mark.parametrize("stream", [True, False])
async def test_429_is_rate_limited_and_retried_at_retry_after(stream: bool) -> None:
    error = await fail_with(Reply(429, api_error("rate_limit_error",
                                                 "Number of requests has exceeded your "
                                                 "rate limit"),
                                  headers={"Retry-After": "2"}), stream=stream)
    assert error.type == "ModelRateLimited" and not error.non_retryable
    assert error.next_retry_delay == 2
    assert "exceeded your rate limit" in str(error) and "HTTP 429" in str(error)


async def test_429_retried_at_the_rate_limit_reset() -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    error = await fail_with(Reply(429, api_error("rate_limit_error", "slow down"), headers={
        "anthropic-ratelimit-tokens-reset": soon,
        "anthropic-ratelimit-tokens-remaining": "0"}))
    assert error.type == "ModelRateLimited"
    assert error.next_retry_delay is not None and 25 < error.next_retry_delay <= 30


def test_retry_delay_headers() -> None:
    now = 1_700_000_000.0
    at = datetime.fromtimestamp(now, UTC)

    def stamp(seconds: float) -> str:
        return (at + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")

    assert retry_delay({"retry-after": "9"}, now) == 9
    assert retry_delay({"retry-after": formatdate(now + 30, usegmt=True)}, now) == 30
    assert retry_delay({"anthropic-ratelimit-requests-reset": stamp(60),
                        "anthropic-ratelimit-tokens-reset": stamp(5),
                        "anthropic-ratelimit-tokens-remaining": "0",
                        "anthropic-ratelimit-requests-remaining": "40"}, now) == 5
    assert retry_delay({"anthropic-ratelimit-requests-reset": stamp(60),
                        "anthropic-ratelimit-input-tokens-reset": stamp(5)}, now) == 60
    assert retry_delay({"retry-after": "3",
                        "anthropic-ratelimit-requests-reset": stamp(60)}, now) == 3
    assert retry_delay({"anthropic-ratelimit-requests-reset": stamp(-5)}, now) == 0
    assert retry_delay({"anthropic-ratelimit-requests-reset": "soon"}, now) is None
    assert retry_delay({"retry-after": "soon"}, now) is None
    assert retry_delay({}, now) is None


@pytest.mark.parametrize("stream", [True, False])
async def test_529_overloaded_is_rate_limited(stream: bool) -> None:
    error = await fail_with(Reply(529, api_error("overloaded_error", "Overloaded")),
                            stream=stream)
    assert error.type == "ModelRateLimited" and not error.non_retryable
    assert error.next_retry_delay is None and "overloaded" in str(error)
    error = await fail_with(Reply(529, "overloaded"), stream=stream)  # a proxy's plain text
    assert error.type == "ModelRateLimited" and not error.non_retryable


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_retryable(status: int) -> None:
    error = await fail_with(Reply(status, api_error("api_error", "Internal server error")))
    assert error.type == "ModelServerError" and not error.non_retryable
    assert error.next_retry_delay is None and f"HTTP {status}" in str(error)


async def test_a_server_error_page_that_is_not_json() -> None:
    error = await fail_with(Reply(502, "<html>bad gateway</html>"), stream=False)
    assert error.type == "ModelServerError" and "bad gateway" in str(error)
    error = await fail_with(Reply(503, "busy", headers={"Retry-After": "4"}))
    assert error.type == "ModelServerError" and error.next_retry_delay == 4


async def test_bad_requests_are_not_retried() -> None:
    error = await fail_with(Reply(400, api_error(
        "invalid_request_error", "tools.0.input_schema: JSON schema is invalid")))
    assert error.type == "ModelRequestError" and error.non_retryable
    assert "JSON schema is invalid" in str(error) and "HTTP 400" in str(error)
    error = await fail_with(Reply(400, api_error(
        "invalid_request_error", "max_tokens: 300000 > 64000, which is the maximum allowed "
        "number of output tokens for claude-fake")), stream=False)
    assert error.type == "ModelRequestError"
    error = await fail_with(Reply(404, api_error("not_found_error", "model: claude-fake")))
    assert error.type == "ModelRequestError" and error.non_retryable
    error = await fail_with(Reply(413, api_error("request_too_large",
                                                 "Request exceeds the maximum size")))
    assert error.type == "ModelRequestTooLarge" and error.non_retryable


@pytest.mark.parametrize("text", [
    "prompt is too long: 208310 tokens > 200000 maximum",
    "input length and `max_tokens` exceed context limit: 197000 + 8192 > 200000, "
    "decrease input length or `max_tokens` and try again",
])
async def test_context_overflow(text: str) -> None:
    error = await fail_with(Reply(400, api_error("invalid_request_error", text)))
    assert error.type == "ModelContextOverflow" and error.non_retryable
    assert "context window" in str(error) and text[:20] in str(error)


async def test_auth_errors_name_no_key() -> None:
    error = await fail_with(Reply(401, api_error("authentication_error",
                                                 f"invalid x-api-key: {KEY}")))
    assert error.type == "ModelAuthError" and error.non_retryable
    assert "invalid x-api-key: ***" in str(error)
    error = await fail_with(Reply(403, api_error("permission_error", "not allowed")))
    assert error.type == "ModelAuthError" and error.non_retryable
    async with FakeMessagesServer(lambda b, n: Reply(401, api_error(
            "authentication_error", "x-api-key header is required"))) as server:
        with pytest.raises(ApplicationError, match=r"ANTHROPIC_API_KEY is unset") as caught:
            await AnthropicModel("m", base_url=server.base_url, api_key="").complete(REQUEST)
    assert caught.value.type == "ModelAuthError"


async def test_timeouts_and_connection_errors_are_retryable_server_errors() -> None:
    async with FakeMessagesServer(lambda b, n: Reply(body=message(text("late")),
                                                     delay=5)) as server:
        model = AnthropicModel("m", base_url=server.base_url, timeout=0.2)
        with pytest.raises(ApplicationError, match=r"did not answer within 0\.2s") as caught:
            await model.complete(REQUEST)
    assert caught.value.type == "ModelServerError" and not caught.value.non_retryable
    closed = server.base_url  # nothing listens there any more
    with pytest.raises(ApplicationError, match=r"the connection to .* failed") as caught:
        await AnthropicModel("m", base_url=closed, api_key=KEY).complete(REQUEST)
    assert caught.value.type == "ModelServerError" and closed in str(caught.value)
    with pytest.raises(ApplicationError, match="base URL cannot be used") as caught:
        await AnthropicModel("m", base_url="ftp://example.invalid").complete(REQUEST)
    assert caught.value.non_retryable


def test_configuration_defaults_and_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://localhost:8080/")
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    model = AnthropicModel("claude-haiku", name="fast")
    assert model.base_url == "http://localhost:8080" and model.name == "fast"
    assert model.url == "http://localhost:8080/v1/messages"
    assert model._api_key == KEY and KEY not in repr(model)
    monkeypatch.delenv("ANTHROPIC_BASE_URL")
    assert AnthropicModel("claude").url == "https://api.anthropic.com/v1/messages"
    secret = AnthropicModel("m", base_url="https://user:pw@host.example/api?key=abc")
    assert repr(secret) == "AnthropicModel('m', base_url='https://host.example/api')"
    with pytest.raises(Exception, match="max_tokens"):
        AnthropicModel("m", max_tokens=0)
    with pytest.raises(Exception, match="timeout"):
        AnthropicModel("m", timeout=0)
    with pytest.raises(Exception, match="model name"):
        AnthropicModel("")


async def test_without_httpx_it_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)  # `import httpx` now fails
    model = AnthropicModel("m", base_url="http://127.0.0.1:9")
    with pytest.raises(Exception, match=r"pip install 'perdure\[anthropic\]'") as caught:
        await model.complete(REQUEST)
    assert type(caught.value).__name__ == "ConfigurationError"


def test_perdure_agents_imports_without_httpx() -> None:
    code = ("import sys; sys.modules['httpx'] = None; import perdure.agents as a; "
            "print(a.AnthropicModel('m').name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "m"


# ------------------------------------------------------------ agents through it
# On `real_env` (real clock), not the time-skipping `env`: an AgentWorker is not one of
# the environment's workers, so time skipping takes it for idle while a model call is in
# flight and jumps the clock past that call's deadline (the call times out and runs again).
LOOKUPS: list[str] = []


@tool
async def anthropic_weather(city: str) -> str:
    """The weather in a city."""
    LOOKUPS.append(city)
    return f"sunny in {city}"


@contextlib.asynccontextmanager
async def served(env: WorkflowEnvironment, handler: Callable[[dict[str, Any], int], Reply],
                 name: str, **agent_options: Any,
                 ) -> AsyncIterator[tuple[FakeMessagesServer, Agent]]:
    async with FakeMessagesServer(handler, clock=env.clock.now) as server:
        agent = Agent(name=name, instructions="You answer weather questions.",
                      model=AnthropicModel("claude-fake-1", base_url=server.base_url,
                                           api_key=KEY),
                      tools=[anthropic_weather], **agent_options)
        async with AgentWorker(env.client, agents=[agent]):
            yield server, agent


async def test_an_agent_calls_a_tool_then_answers(real_env: WorkflowEnvironment) -> None:
    env = real_env
    LOOKUPS.clear()

    def handler(body: dict[str, Any], n: int) -> Reply:
        last = body["messages"][-1]["content"][-1]
        if last["type"] != "tool_result":
            return Reply(events=streamed_tool_use("toolu_w1", "anthropic_weather",
                                                  '{"ci', 'ty": "Oslo"}', usage=(50, 10)))
        return Reply(events=streamed_text("Oslo: ", last["content"], usage=(70, 6)))

    async with served(env, handler, "anthropic-weather") as (server, agent):
        handle = await env.client.start_agent(agent, "Weather in Oslo?",
                                              id="anthropic-weather-1")
        assert await handle.result(timeout=20) == "Oslo: sunny in Oslo"
        run = await handle.run_result()
    assert LOOKUPS == ["Oslo"]
    assert run.turns == 2 and run.usage == Usage(120, 16, 2)
    first, second = server.bodies
    assert first["system"] == "You answer weather questions."
    assert first["tools"][0]["name"] == "anthropic_weather"
    assert first["tools"][0]["input_schema"]["properties"]["city"]["type"] == "string"
    assert second["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_w1",
                                           "name": "anthropic_weather",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_w1",
                                      "content": "sunny in Oslo", "is_error": False}]},
    ]
    assert all(r.headers["x-api-key"] == KEY for r in server.requests)


async def test_an_overloaded_api_is_retried_then_answers(
    real_env: WorkflowEnvironment,
) -> None:
    env = real_env
    replies = [Reply(529, api_error("overloaded_error", "Overloaded")),
               Reply(429, api_error("rate_limit_error", "slow down"),
                     headers={"Retry-After": "1"}),
               Reply(events=streamed_text("Fine, finally."))]
    policy = dataclasses.replace(DEFAULT_MODEL_RETRY,
                                 initial_interval=timedelta(milliseconds=50),
                                 maximum_interval=timedelta(seconds=1))
    async with served(env, lambda b, n: replies[n], "anthropic-overloaded",
                      model_retry_policy=policy) as (server, agent):
        handle = await env.client.start_agent(agent, "Hello?", id="anthropic-overloaded-1")
        assert await handle.result(timeout=20) == "Fine, finally."
        run = await handle.run_result()
    assert len(server.requests) == 3 and run.turns == 1
    after_429 = server.requests[2].at - server.requests[1].at
    assert 1.0 <= after_429 < 3.0  # Retry-After, not the policy's back-off
