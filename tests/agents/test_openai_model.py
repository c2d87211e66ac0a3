"""OpenAIChatModel against a fake chat-completions server on the loopback: real HTTP
(plain JSON and server-sent events), the provider's errors mapped to retry decisions,
and agent runs through it on both backends."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from email.utils import formatdate
from typing import Any

import pytest

from perdure import ApplicationError, RetryPolicy, WorkflowFailureError
from perdure.agents import (
    Agent,
    AgentWorker,
    Message,
    ModelRequest,
    OpenAIChatModel,
    ScriptedModel,
    ToolCall,
    ToolSpec,
    Usage,
    tool,
)
from perdure.agents._agent import DEFAULT_MODEL_RETRY
from perdure.agents._openai import retry_delay
from perdure.testing import WorkflowEnvironment

from ._fake_http import FakeHTTPServer, Reply, openai_sse

pytest.importorskip("httpx")

KEY = "sk-test-SECRET-0123456789"


# ------------------------------------------------------------ the fake server
class FakeChatServer(FakeHTTPServer):
    """The fake server, speaking chat completions under /v1."""

    def __init__(self, handler: Callable[[dict[str, Any], int], Reply],
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(handler, clock, base_path="/v1", sse=openai_sse)


def completion(content: str | None = "", tool_calls: list[dict[str, Any]] | None = None,
               usage: tuple[int, int] = (10, 5)) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "fake-1",
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if tool_calls else "stop"}],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                      "total_tokens": sum(usage)}}


def function_call(id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          usage: tuple[int, int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                           "model": "fake-1", "choices": []}
    if delta is not None or finish is not None:
        out["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    if usage is not None:
        out["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                        "total_tokens": sum(usage)}
    return out


def streamed_text(*pieces: str, usage: tuple[int, int] = (10, 5)) -> list[Any]:
    return ([chunk({"role": "assistant", "content": ""})]
            + [chunk({"content": p}) for p in pieces]
            + [chunk(finish="stop"), chunk(usage=usage), "data: [DONE]\n\n"])


def error_body(message: str, code: str | None = None,
               type: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": None, "code": code}}


REQUEST = ModelRequest(agent="a", messages=[Message.system("Be brief."), Message.user("Hi")])


# ------------------------------------------------------------ answers
async def test_plain_answer_and_usage_without_streaming() -> None:
    async with FakeChatServer(lambda b, n: Reply(body=completion("Hello there!", usage=(12, 3)))
                              ) as server:
        model = OpenAIChatModel("fake-1", base_url=server.base_url, api_key=KEY, stream=False,
                                max_tokens=100, temperature=0.2, extra_body={"seed": 7})
        sink: list[str] = []
        response = await model.complete(REQUEST, token_sink=sink.append)
    assert response.message == Message.assistant("Hello there!")
    assert response.usage == Usage(input_tokens=12, output_tokens=3, model_calls=1)
    assert response.model == "fake-1" and model.name == "fake-1"
    assert sink == ["Hello there!"]
    seen = server.requests[0]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.body == {
        "model": "fake-1",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hi"}],
        "max_tokens": 100, "temperature": 0.2, "seed": 7,
    }


async def test_request_mapping_tools_history_and_output_schema() -> None:
    call = ToolCall(id="call_1", name="lookup", arguments={"city": "Paris"})
    request = ModelRequest(
        agent="a",
        messages=[Message.system("sys"), Message.user("weather?"),
                  Message.assistant(tool_calls=[call]),
                  Message.tool(call, "sunny"), Message.assistant("noted", [call])],
        tools=[ToolSpec(name="lookup", description="Look up the weather.",
                        parameters={"type": "object",
                                    "properties": {"city": {"type": "string"}}})],
        output_schema={"$ref": "#/$defs/Plan", "$defs": {"Plan": {
            "type": "object", "properties": {"steps": {"type": "array"}}}}},
    )
    async with FakeChatServer(lambda b, n: Reply(events=streamed_text("{}"))) as server:
        await OpenAIChatModel("m", base_url=server.base_url + "/").complete(request)
    body = server.bodies[0]
    wire_call = {"id": "call_1", "type": "function",
                 "function": {"name": "lookup", "arguments": '{"city": "Paris"}'}}
    assert body["messages"] == [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [wire_call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": "noted", "tool_calls": [wire_call]},
    ]
    assert body["tools"] == [{"type": "function", "function": {
        "name": "lookup", "description": "Look up the weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    schema = body["response_format"]["json_schema"]
    assert body["response_format"]["type"] == "json_schema" and schema["name"] == "output"
    assert schema["schema"]["type"] == "object"  # the root $ref inlined
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert "authorization" not in server.requests[0].headers  # no key, none sent


async def test_tool_calls_without_streaming_and_malformed_arguments() -> None:
    calls = [function_call("call_a", "lookup", '{"city": "Paris"}'),
             function_call("call_b", "lookup", '{"city": "Rome"'),  # cut off
             {"type": "function", "function": {"name": "noargs", "arguments": ""}}]
    async with FakeChatServer(lambda b, n: Reply(body=completion(None, calls))) as server:
        response = await OpenAIChatModel("m", base_url=server.base_url,
                                         stream=False).complete(REQUEST)
    got = response.message.tool_calls
    assert response.message.content == ""
    assert [(c.id, c.name, c.arguments) for c in got[:2]] == [
        ("call_a", "lookup", {"city": "Paris"}),
        ("call_b", "lookup", {"_raw": '{"city": "Rome"'}),
    ]
    assert got[2].name == "noargs" and got[2].arguments == {} and got[2].id.startswith("call_")


async def test_streamed_parallel_tool_calls_with_split_arguments() -> None:
    events = [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "lookup", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                               "function": {"name": "convert", "arguments": '{"amo'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Pa'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": 'unt": 3.5}'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ris"}'}}]}),
        chunk(finish="tool_calls"),
        chunk(usage=(40, 22)),
        "data: [DONE]\n\n",
    ]
    async with FakeChatServer(lambda b, n: Reply(events=events)) as server:
        sink: list[str] = []
        response = await OpenAIChatModel("m", base_url=server.base_url).complete(
            REQUEST, token_sink=sink.append)
    assert response.message.tool_calls == [
        ToolCall(id="call_a", name="lookup", arguments={"city": "Paris"}),
        ToolCall(id="call_b", name="convert", arguments={"amount": 3.5}),
    ]
    assert response.usage == Usage(40, 22, 1) and sink == []


async def test_streaming_feeds_the_token_sink_and_reads_usage_from_the_last_chunk() -> None:
    async with FakeChatServer(lambda b, n: Reply(events=streamed_text(
            "Hel", "lo", " world", usage=(30, 3)))) as server:
        sink: list[str] = []
        response = await OpenAIChatModel("m", base_url=server.base_url).complete(
            REQUEST, token_sink=sink.append)
    assert sink == ["Hel", "lo", " world"]
    assert response.message == Message.assistant("Hello world")
    assert response.usage == Usage(30, 3, 1) and response.model == "fake-1"
    assert server.requests[0].headers["accept"] == "text/event-stream"


async def test_a_server_that_does_not_stream_and_keys_removed_by_extra_body() -> None:
    async with FakeChatServer(lambda b, n: Reply(body=completion("whole"))) as server:
        sink: list[str] = []
        model = OpenAIChatModel("m", base_url=server.base_url,
                                extra_body={"stream_options": None, "top_p": 0.5})
        response = await model.complete(REQUEST, token_sink=sink.append)
    assert response.message.content == "whole" and sink == ["whole"]
    assert response.usage == Usage(10, 5, 1)
    body = server.bodies[0]
    assert body["stream"] is True and "stream_options" not in body and body["top_p"] == 0.5


async def test_a_stream_cut_short_is_a_retryable_server_error() -> None:
    events = [chunk({"content": "Hal"}), chunk({"content": "f an ans"})]  # no finish, no DONE
    async with FakeChatServer(lambda b, n: Reply(events=events)) as server:
        with pytest.raises(ApplicationError, match="ended its stream") as caught:
            await OpenAIChatModel("m", base_url=server.base_url).complete(REQUEST)
    assert caught.value.type == "ModelServerError" and not caught.value.non_retryable


async def test_an_error_in_the_middle_of_a_stream() -> None:
    events = [chunk({"content": "Hi"}),
              {"error": {"message": "This model's maximum context length is 8192 tokens",
                         "code": "context_length_exceeded"}}]
    async with FakeChatServer(lambda b, n: Reply(events=events)) as server:
        with pytest.raises(ApplicationError) as caught:
            await OpenAIChatModel("m", base_url=server.base_url).complete(REQUEST)
    assert caught.value.type == "ModelContextOverflow" and caught.value.non_retryable


# ------------------------------------------------------------ errors
async def fail_with(reply: Reply, *, stream: bool = True) -> ApplicationError:
    async with FakeChatServer(lambda b, n: reply) as server:
        model = OpenAIChatModel("gpt-fake", base_url=server.base_url, api_key=KEY,
                                stream=stream)
        with pytest.raises(ApplicationError) as caught:
            await model.complete(REQUEST)
    error = caught.value
    assert "gpt-fake" in str(error) and server.base_url in str(error)
    assert KEY not in str(error) and KEY not in repr(error.details)
    return error


@pytest.mark.parametrize("stream", [True, False])
async def test_429_is_rate_limited_and_retried_at_retry_after(stream: bool) -> None:
    error = await fail_with(Reply(429, error_body("Rate limit reached for requests",
                                                  type="rate_limit_error"),
                                  headers={"Retry-After": "2"}), stream=stream)
    assert error.type == "ModelRateLimited" and not error.non_retryable
    assert error.next_retry_delay == 2
    assert "Rate limit reached" in str(error)


async def test_rate_limit_delays_from_other_headers() -> None:
    error = await fail_with(Reply(529, "overloaded"))
    assert error.type == "ModelRateLimited" and error.next_retry_delay is None
    error = await fail_with(Reply(503, "busy", headers={"Retry-After": "3"}))
    assert error.type == "ModelRateLimited" and error.next_retry_delay == 3
    now = 1_700_000_000.0
    assert retry_delay({"retry-after": formatdate(now + 30, usegmt=True)}, now) == 30
    assert retry_delay({"retry-after-ms": "1500", "retry-after": "9"}, now) == 1.5
    assert retry_delay({"x-ratelimit-reset-requests": "1m30s",
                        "x-ratelimit-reset-tokens": "250ms",
                        "x-ratelimit-remaining-tokens": "0"}, now) == 0.25
    assert retry_delay({"x-ratelimit-reset-requests": "6m0s",
                        "x-ratelimit-reset-tokens": "20ms"}, now) == 360
    assert retry_delay({"x-ratelimit-reset": str(now + 4)}, now) == 4
    assert retry_delay({"retry-after": "soon"}, now) is None
    assert retry_delay({}, now) is None


async def test_server_errors_are_retryable() -> None:
    error = await fail_with(Reply(500, error_body("The server had an error", type="server")))
    assert error.type == "ModelServerError" and not error.non_retryable
    assert error.next_retry_delay is None and "HTTP 500" in str(error)
    error = await fail_with(Reply(502, "<html>bad gateway</html>"), stream=False)
    assert error.type == "ModelServerError" and "bad gateway" in str(error)


async def test_bad_requests_are_not_retried() -> None:
    error = await fail_with(Reply(400, error_body("Invalid value for 'tools[0].type'")))
    assert error.type == "ModelRequestError" and error.non_retryable
    assert "Invalid value for 'tools[0].type'" in str(error) and "HTTP 400" in str(error)
    error = await fail_with(Reply(404, error_body("The model `gpt-fake` does not exist",
                                                  code="model_not_found")), stream=False)
    assert error.type == "ModelRequestError" and error.non_retryable
    error = await fail_with(Reply(422, {"detail": [{"msg": "field required"}]}))
    assert error.type == "ModelRequestError" and "field required" in str(error)
    error = await fail_with(Reply(413, "request entity too large"))
    assert error.type == "ModelRequestTooLarge" and error.non_retryable


async def test_context_overflow() -> None:
    error = await fail_with(Reply(400, error_body(
        "This model's maximum context length is 8192 tokens. However, your messages "
        "resulted in 9000 tokens.", code="context_length_exceeded")))
    assert error.type == "ModelContextOverflow" and error.non_retryable
    assert "context window" in str(error)
    # vLLM-style: no code, only the message
    error = await fail_with(Reply(400, {"object": "error", "message":
                                        "This model's maximum context length is 4096"}))
    assert error.type == "ModelContextOverflow"


async def test_auth_errors_name_no_key() -> None:
    error = await fail_with(Reply(401, error_body(f"Incorrect API key provided: {KEY}.",
                                                  code="invalid_api_key")))
    assert error.type == "ModelAuthError" and error.non_retryable
    assert "Incorrect API key provided: ***" in str(error)
    error = await fail_with(Reply(403, error_body("Project does not have access")))
    assert error.type == "ModelAuthError"
    error = await fail_with(Reply(429, error_body("You exceeded your current quota",
                                                  code="insufficient_quota")))
    assert error.type == "ModelAuthError" and error.non_retryable


async def test_timeouts_and_connection_errors_are_retryable_server_errors() -> None:
    async with FakeChatServer(lambda b, n: Reply(body=completion("late"), delay=5)) as server:
        model = OpenAIChatModel("m", base_url=server.base_url, timeout=0.2)
        with pytest.raises(ApplicationError, match=r"did not answer within 0\.2s") as caught:
            await model.complete(REQUEST)
    assert caught.value.type == "ModelServerError" and not caught.value.non_retryable
    closed = server.base_url  # nothing listens there any more
    with pytest.raises(ApplicationError, match=r"the connection to .* failed") as caught:
        await OpenAIChatModel("m", base_url=closed, api_key=KEY).complete(REQUEST)
    assert caught.value.type == "ModelServerError" and closed in str(caught.value)
    with pytest.raises(ApplicationError, match="base URL cannot be used") as caught:
        await OpenAIChatModel("m", base_url="ftp://example.invalid/v1").complete(REQUEST)
    assert caught.value.non_retryable


def test_configuration_defaults_and_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:11434/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    model = OpenAIChatModel("llama3.2", name="local")
    assert model.base_url == "http://localhost:11434/v1" and model.name == "local"
    assert KEY not in repr(model)
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert OpenAIChatModel("gpt-4o").base_url == "https://api.openai.com/v1"
    secret = OpenAIChatModel("m", base_url="https://user:pw@host.example/v1?key=abc")
    assert repr(secret) == "OpenAIChatModel('m', base_url='https://host.example/v1')"


async def test_without_httpx_it_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)  # `import httpx` now fails
    model = OpenAIChatModel("m", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(Exception, match=r"pip install 'perdure\[openai\]'") as caught:
        await model.complete(REQUEST)
    assert type(caught.value).__name__ == "ConfigurationError"


def test_perdure_agents_imports_without_httpx() -> None:
    code = ("import sys; sys.modules['httpx'] = None; import perdure.agents as a; "
            "print(a.OpenAIChatModel('m').name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "m"


async def test_scripted_model_feeds_the_token_sink_once() -> None:
    sink: list[str] = []
    await ScriptedModel(["All done."]).complete(REQUEST, token_sink=sink.append)
    assert sink == ["All done."]


# ------------------------------------------------------------ agents through it
# On `real_env` (real clock), not the time-skipping `env`: an AgentWorker is not one of
# the environment's workers, so time skipping takes it for idle while a model call is in
# flight and jumps the clock past that call's deadline (the call times out and runs again).
LOOKUPS: list[str] = []


@tool
async def openai_weather(city: str) -> str:
    """The weather in a city."""
    LOOKUPS.append(city)
    return f"sunny in {city}"


def _retry(**overrides: Any) -> RetryPolicy:
    return dataclasses.replace(
        DEFAULT_MODEL_RETRY, initial_interval=timedelta(milliseconds=50),
        maximum_interval=timedelta(seconds=1), **overrides)


@contextlib.asynccontextmanager
async def served(env: WorkflowEnvironment, handler: Callable[[dict[str, Any], int], Reply],
                 name: str, **agent_options: Any) -> AsyncIterator[tuple[FakeChatServer, Agent]]:
    async with FakeChatServer(handler, clock=env.clock.now) as server:
        agent = Agent(name=name, instructions="You answer weather questions.",
                      model=OpenAIChatModel("fake-1", base_url=server.base_url, api_key=KEY),
                      tools=[openai_weather], **agent_options)
        async with AgentWorker(env.client, agents=[agent]):
            yield server, agent


async def test_an_agent_calls_a_tool_then_answers(real_env: WorkflowEnvironment) -> None:
    env = real_env
    LOOKUPS.clear()

    def handler(body: dict[str, Any], n: int) -> Reply:
        if body["messages"][-1]["role"] != "tool":
            return Reply(events=[
                chunk({"role": "assistant", "tool_calls": [{
                    "index": 0, "id": "call_w1", "type": "function",
                    "function": {"name": "openai_weather", "arguments": '{"ci'}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]}),
                chunk(finish="tool_calls"), chunk(usage=(50, 10)), "data: [DONE]\n\n"])
        return Reply(events=streamed_text("Oslo: ", body["messages"][-1]["content"],
                                          usage=(70, 6)))

    async with served(env, handler, "openai-weather") as (server, agent):
        handle = await env.client.start_agent(agent, "Weather in Oslo?", id="openai-weather-1")
        assert await handle.result(timeout=20) == "Oslo: sunny in Oslo"
        run = await handle.run_result()
    assert LOOKUPS == ["Oslo"]
    assert run.turns == 2 and run.usage == Usage(120, 16, 2)
    second = server.bodies[1]["messages"]
    assert second[-2]["tool_calls"][0]["function"] == {"name": "openai_weather",
                                                       "arguments": '{"city": "Oslo"}'}
    assert second[-1] == {"role": "tool", "tool_call_id": "call_w1", "content": "sunny in Oslo"}
    assert server.bodies[0]["tools"][0]["function"]["name"] == "openai_weather"


async def test_rate_limit_then_server_error_then_success(
    real_env: WorkflowEnvironment,
) -> None:
    """Measured in real time: the fake server stamps each request with the environment's
    (real) clock; the policy's own back-off is 50 ms, so a 1 s wait is the Retry-After."""
    env = real_env
    replies = [Reply(429, error_body("slow down", type="rate_limit_error"),
                     headers={"Retry-After": "1"}),
               Reply(500, error_body("boom", type="server_error")),
               Reply(events=streamed_text("Fine, finally."))]

    async with served(env, lambda b, n: replies[n], "openai-flaky",
                      model_retry_policy=_retry()) as (server, agent):
        handle = await env.client.start_agent(agent, "Hello?", id="openai-flaky-1")
        assert await handle.result(timeout=20) == "Fine, finally."
        run = await handle.run_result()
    assert len(server.requests) == 3 and run.turns == 1
    after_429 = server.requests[1].at - server.requests[0].at
    after_500 = server.requests[2].at - server.requests[1].at
    assert 1.0 <= after_429 < 3.0  # Retry-After, not the policy's 50 ms
    assert after_500 < 0.9  # the policy's back-off (100 ms)


@pytest.mark.parametrize(("status", "kind"), [(400, "ModelRequestError"),
                                              (401, "ModelAuthError")])
async def test_a_refused_request_fails_the_run_after_one_request(
    real_env: WorkflowEnvironment, status: int, kind: str,
) -> None:
    env = real_env
    reply = Reply(status, error_body("Invalid schema for function 'openai_weather'"))
    # even a policy that lists no model error types: non_retryable=True is enough
    async with served(env, lambda b, n: reply, f"openai-refused-{status}",
                      model_retry_policy=_retry(non_retryable_error_types=())) as (server, agent):
        handle = await env.client.start_agent(agent, "Hello?", id=f"openai-refused-{status}")
        with pytest.raises(WorkflowFailureError) as caught:
            await handle.result(timeout=20)
    chain: list[str] = []
    cause: BaseException | None = caught.value
    while cause is not None:
        chain.append(getattr(cause, "type", type(cause).__name__))
        cause = cause.__cause__
    assert kind in chain, chain
    assert len(server.requests) == 1
    assert KEY not in str(caught.value.__cause__) and "fake-1" in "".join(
        str(c) for c in _causes(caught.value))


def _causes(exc: BaseException) -> list[BaseException]:
    out = []
    cause: BaseException | None = exc
    while cause is not None:
        out.append(cause)
        cause = cause.__cause__
    return out
