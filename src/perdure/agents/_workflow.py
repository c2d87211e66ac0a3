"""The agent loop, as a workflow: model calls and tools are activities, sub-agents are
child workflows, questions to the human are durable waits. Built on the public API only.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import math
from collections import OrderedDict
from datetime import timedelta
from typing import Any

import msgspec

from perdure import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    NondeterminismError,
    PayloadError,
    WorkflowAlreadyStartedError,
    activity,
    workflow,
)
from perdure.agents._agent import ASK_HUMAN, Agent, registered_agent
from perdure.agents._messages import Message, ModelRequest, ModelResponse, ToolCall, Usage
from perdure.agents._sandbox import SANDBOX_MERGE, SandboxState, SandboxToolResult
from perdure.agents._tools import ACTIVITY_PREFIX, DEFAULT_TOOL_RETRY, Tool

__all__ = ["AGENT_WORKFLOW", "AgentResult", "AgentRun", "AgentSpec", "AgentWorkflow", "ModelCall",
           "ModelCallResult", "model_call"]

AGENT_WORKFLOW = "perdure.Agent"
MODEL_CALL = "perdure.agents.model_call"
DEFAULT_TOOL_TIMEOUT = timedelta(minutes=5)
SUMMARY_REQUEST = (
    "The conversation is getting too long for your context window. Summarise it for "
    "yourself: the task, what has been done and learned (results of tools and sub-agents, "
    "the human's answers), decisions taken, and what remains to do. Be complete about "
    "facts you will need; leave out the rest."
)


class AgentSpec(msgspec.Struct, omit_defaults=True):
    """The settings that steer an agent's loop, fixed in its run's input when it starts,
    so that the run replays the same way after the agent's definition changes (a deploy
    that lowers ``max_turns`` or removes a tool affects new runs only)."""

    max_turns: int
    tools: list[str] = msgspec.field(default_factory=list)
    approvals: list[str] = msgspec.field(default_factory=list)
    subagents: list[str] = msgspec.field(default_factory=list)
    asks_human: bool = False
    human_timeout: float | None = None
    context_window: int | None = None
    summarize_at: float = 0.8
    token_budget: int | None = None
    cost_budget: float | None = None
    sandbox_tools: list[str] = msgspec.field(default_factory=list)

    @classmethod
    def of(cls, agent: Agent, *, token_budget: int | None = None,
           cost_budget: float | None = None) -> AgentSpec:
        """The agent's settings now (budgets: the given ones, else the agent's)."""
        tools = [t for t in agent.tools if isinstance(t, Tool)]
        return cls(
            max_turns=agent.max_turns, tools=[t.name for t in tools],
            approvals=[t.name for t in tools if t.requires_approval],
            subagents=[s.name for s in agent.subagents],
            asks_human=any(t.name == ASK_HUMAN for t in agent.tools),
            human_timeout=(agent.human_timeout.total_seconds()
                           if agent.human_timeout is not None else None),
            context_window=agent.context_window, summarize_at=agent.summarize_at,
            token_budget=token_budget if token_budget is not None else agent.token_budget,
            cost_budget=cost_budget if cost_budget is not None else agent.cost_budget,
            sandbox_tools=[t.name for t in tools if t.sandbox],
        )


class AgentRun(msgspec.Struct, omit_defaults=True):
    """What an agent run is asked to do, with its settings and the budget it may spend."""

    agent: str
    task: str
    spec: AgentSpec | None = None
    """Fixed at start (see :class:`AgentSpec`); None: read from the agent's definition."""
    stream_to: str | None = None
    """The workflow whose stream gets this agent's events (its tree's root)."""
    conversation: str | None = None
    """Continuing (as new): the stored conversation so far, and the messages after it."""
    pending: list[Message] = msgspec.field(default_factory=list)
    turns: int = 0
    usage: Usage | None = None
    """Continuing: turns and usage of the runs before, counted against the limits."""
    sandbox: SandboxState | None = None
    """The workspace to start from: a parent's (for a sub-agent), or this run's own so
    far (continuing). None: an empty one."""


class AgentResult(msgspec.Struct, omit_defaults=True):
    """An agent's final answer (JSON of its output type), with what it cost."""

    agent: str
    output: Any
    usage: Usage
    turns: int
    sandbox: SandboxState | None = None
    """The run's workspace at the end (None: it never had a file)."""


class ModelCall(msgspec.Struct, omit_defaults=True):
    """A model call as the workflow asks for it: the conversation so far by reference
    (stored out of line), and only the messages since. History grows by a turn's new
    messages, not by the whole conversation at every turn."""

    agent: str
    conversation: str | None = None
    new: list[Message] = msgspec.field(default_factory=list)
    stream_to: str | None = None
    turn: int = 0
    purpose: str = "turn"


class ModelCallResult(msgspec.Struct, omit_defaults=True):
    """The model's response, and the reference of the conversation including it."""

    response: ModelResponse
    conversation: str
    message_digest: str = ""
    """SHA-256 of the stored response message: a fork that edited the recorded answer
    no longer matches it, and the workflow then sends its own version along."""


def _digest(message: Message) -> str:
    return hashlib.sha256(msgspec.json.encode(message)).hexdigest()


class _ConversationNode(msgspec.Struct, omit_defaults=True):
    prev: str | None
    messages: list[Message]


_node_decoder = msgspec.json.Decoder(_ConversationNode)
_conversations: OrderedDict[str, list[Message]] = OrderedDict()
"""Resolved conversations by reference, most recent last: the sticky worker that made a
turn's node finds the whole conversation here at the next turn."""
_CACHED_CONVERSATIONS = 256


async def _resolve(ref: str | None) -> list[Message]:
    """The messages of a stored conversation, walking back to a cached node or the start."""
    chain: list[_ConversationNode] = []
    base: list[Message] = []
    while ref is not None:
        cached = _conversations.get(ref)
        if cached is not None:
            base = cached
            break
        data = (await activity.load_payloads(ref)).get(ref)
        if data is None:
            raise ApplicationError(f"conversation {ref} is missing from the payload store",
                                   type="ConversationMissing", non_retryable=True)
        node = _node_decoder.decode(data)
        chain.append(node)
        ref = node.prev
    messages = list(base)
    for node in reversed(chain):
        messages.extend(node.messages)
    return messages


def _remember(ref: str, messages: list[Message]) -> None:
    _conversations[ref] = messages
    _conversations.move_to_end(ref)
    while len(_conversations) > _CACHED_CONVERSATIONS:
        _conversations.popitem(last=False)


@activity.defn(name=MODEL_CALL)
async def model_call(call: ModelCall) -> ModelCallResult:
    """One model call, as an activity: retried by the agent's model retry policy."""
    agent = registered_agent(call.agent)
    messages = [*await _resolve(call.conversation), *call.new]
    info = activity.info()
    target = call.stream_to or info.workflow_id
    if call.purpose == "summary":
        return await _summarize(agent, call, messages, target)
    request = ModelRequest(agent=agent.name, messages=messages, tools=agent.tool_specs(),
                           output_schema=_output_schema(agent.output_type))
    activity.publish({"type": "model_call", "agent": agent.name, "turn": call.turn,
                      "attempt": info.attempt, "retry": info.attempt > 1},
                     workflow_id=target)
    limits = agent.model_limits
    if limits is None:
        response = await _complete(agent, request, target)
    else:
        estimate = sum(len(m.content) for m in request.messages) // 4 + 256
        async with activity.rate_limit(
            f"model:{agent.model.name}", concurrency=limits.concurrency,
            tokens_per_minute=limits.tokens_per_minute, tokens=estimate,
        ) as permit:
            if permit.waited >= 0.5:
                activity.publish({"type": "rate_limited", "agent": agent.name,
                                  "waited": round(permit.waited, 2)}, workflow_id=target)
            response = await _complete(agent, request, target)
            permit.used(response.usage.input_tokens + response.usage.output_tokens)
    response = storable(response)
    usage = response.usage
    if not usage.model_calls:
        usage = msgspec.structs.replace(usage, model_calls=1)
    if agent.price is not None:
        usage = msgspec.structs.replace(
            usage, cost=agent.price.cost(usage.input_tokens, usage.output_tokens))
    node = _ConversationNode(prev=call.conversation, messages=[*call.new, response.message])
    (ref,) = await activity.store_payloads(msgspec.json.encode(node))
    _remember(ref, [*messages, response.message])
    return ModelCallResult(response=msgspec.structs.replace(response, usage=usage),
                           conversation=ref, message_digest=_digest(response.message))


def storable(response: ModelResponse) -> ModelResponse:
    """A model's answer as history can hold it: a lone surrogate (which no JSON encoder
    writes) becomes U+FFFD, and a non-finite number in tool arguments (which Python's
    JSON parser accepts) its name as a string. Model output is untrusted: whatever it
    holds must fail no call that records it, or a paid answer would be asked for again."""
    try:
        msgspec.json.encode(response)
    except UnicodeEncodeError:
        pass
    else:
        if not _has_non_finite(msgspec.to_builtins(response)):
            return response
    return msgspec.convert(_clean(msgspec.to_builtins(response)), ModelResponse)


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value) \
            if any("\ud800" <= c <= "\udfff" for c in value) else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _summary_view(messages: list[Message], keep: int) -> list[Message]:
    """What a summary call sends: the opening (instructions, task, an earlier summary),
    then the latest ``keep`` messages with long contents cut (the whole conversation is
    what did not fit)."""
    # the opening (instructions, the task, an earlier summary): up to the first answer
    opening = next((i for i, m in enumerate(messages) if m.role == "assistant"),
                   len(messages))
    head = messages[:opening]
    rest = messages[opening:][-keep:]
    while rest and rest[0].role == "tool":
        rest = rest[1:]  # a tool result without its call would confuse providers
    cut = [msgspec.structs.replace(m, content=m.content[:2000] + " [...]")
           if len(m.content) > 2000 else m for m in rest]
    return [*head, *cut, Message.user(SUMMARY_REQUEST)]


async def _summarize(agent: Agent, call: ModelCall, messages: list[Message],
                     target: str) -> ModelCallResult:
    """A summary of the conversation, shrinking what it sends until it fits."""
    keep = 60
    while True:
        request = ModelRequest(agent=agent.name, purpose="summary",
                               messages=_summary_view(messages, keep))
        try:
            response = await _complete(agent, request, target)
        except ApplicationError as exc:
            if exc.type != "ModelContextOverflow" or keep <= 2:
                raise
            keep //= 2
            continue
        usage = response.usage
        if agent.price is not None:
            usage = msgspec.structs.replace(
                usage, cost=agent.price.cost(usage.input_tokens, usage.output_tokens))
        # nothing is stored: the agent continues as new from the summary
        return ModelCallResult(response=msgspec.structs.replace(response, usage=usage),
                               conversation=call.conversation or "")


async def _complete(agent: Agent, request: ModelRequest, target: str) -> ModelResponse:
    if _streams(agent.model):
        def token(text: str) -> None:
            try:  # model output: cleaned to be storable; progress, never worth a failure
                activity.publish({"type": "token", "agent": agent.name, "text": _clean(text)},
                                 workflow_id=target)
            except PayloadError:
                activity.publish({"type": "token", "agent": agent.name,
                                  "text": f"[{len(text)} characters, too many to stream]"},
                                 workflow_id=target)

        return await agent.model.complete(request, token_sink=token)  # type: ignore[call-arg]
    return await agent.model.complete(request)


def subagent_workflow_id(parent_id: str, subagent: str, call_id: str) -> str:
    """The workflow id of the sub-agent a tool call starts. The call's id comes from the
    model: it enters only through a hash, so that no model output can make the id
    unstorable (a NUL, a lone surrogate, a megabyte) or collide with another's. Readable
    when the parent's id leaves room: ``<parent>/<sub-agent>/<hash>``."""
    digest = hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    readable = f"{parent_id}/{subagent}/{digest}"
    try:
        fits = len(readable.encode()) <= 900 and "\x00" not in readable
    except UnicodeEncodeError:
        fits = False
    if fits:
        return readable
    whole = hashlib.sha256(readable.encode("utf-8", "surrogatepass")).hexdigest()
    return f"subagent-{whole}"


def _spent(exc: BaseException) -> Usage:
    """What a failed sub-agent reported it spent (its failure's details carry it)."""
    cause: BaseException | None = exc
    while cause is not None:
        for detail in getattr(cause, "details", ()) or ():
            if isinstance(detail, dict) and isinstance(detail.get("usage"), dict):
                try:
                    return msgspec.convert(detail["usage"], Usage)
                except msgspec.ValidationError:
                    return Usage()
        cause = cause.__cause__
    return Usage()


def _failure_type(exc: BaseException) -> str:
    """The type of the error under an activity failure (``ModelContextOverflow``, ...)."""
    cause = exc.__cause__
    return str(getattr(cause, "type", "")) if cause is not None else ""


def _streams(model: Any) -> bool:
    """Whether the model's ``complete`` takes a ``token_sink``."""
    try:
        return "token_sink" in inspect.signature(model.complete).parameters
    except (TypeError, ValueError):
        return False


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value, enc_hook=_enc_hook).decode()


def _enc_hook(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    raise NotImplementedError(type(obj))


def _tool_options(found: Tool | None) -> dict[str, Any]:
    """A tool activity's timeouts and retries: the tool's, or the defaults for a tool the
    run's spec names that this worker's definition no longer has."""
    if found is None:
        return {"start_to_close_timeout": DEFAULT_TOOL_TIMEOUT,
                "retry_policy": DEFAULT_TOOL_RETRY, "heartbeat_timeout": None}
    return {"start_to_close_timeout": found.start_to_close_timeout,
            "retry_policy": found.retry_policy, "heartbeat_timeout": found.heartbeat_timeout}


def _why(exc: BaseException) -> str:
    """The innermost meaningful message of an activity or child failure."""
    cause: BaseException | None = exc
    while cause is not None and isinstance(cause, ActivityError | ChildWorkflowError) \
            and cause.__cause__ is not None:
        cause = cause.__cause__
    return str(cause or exc)


@workflow.defn(name=AGENT_WORKFLOW)
class AgentWorkflow:
    """Runs one agent: call the model, run what it asks for, until it answers."""

    def __init__(self) -> None:
        self.agent_name = ""
        self.conversation: str | None = None
        """The stored conversation so far (a payload reference)."""
        self.new: list[Message] = []
        """Messages the next model call adds to it."""
        self.stream_to: str | None = None
        self.usage = Usage()
        self.turns = 0
        self.status = "starting"
        self.questions: dict[str, str] = {}
        self.answers: dict[str, str] = {}
        self.approvals: dict[str, ToolCall] = {}
        self.decisions: dict[str, tuple[bool, str]] = {}
        self.early_answers: list[str] = []
        self.spec: AgentSpec | None = None
        self.sandbox = SandboxState(key="")
        self.sandbox_given = False
        """The run's workspace: the checkpoint its files are at (see ``_sandbox``)."""
        self.sandbox_lock = asyncio.Lock()
        """Sandbox calls of one run go one at a time (in the order the model made them):
        each starts from the checkpoint the previous one left."""

    # ------------------------------------------------------------ the loop
    @workflow.run
    async def run(self, request: AgentRun) -> AgentResult:
        try:
            return await self._loop(request)
        except NondeterminismError:
            raise
        except Exception as exc:
            # a parent (or the caller) learns what the run spent, even when it failed
            raise ApplicationError(
                str(exc), {"usage": msgspec.to_builtins(self.usage), "turns": self.turns},
                type=str(getattr(exc, "type", "") or type(exc).__name__),
                non_retryable=True,
            ) from exc

    async def _loop(self, request: AgentRun) -> AgentResult:
        agent = registered_agent(request.agent)
        spec = request.spec or AgentSpec.of(agent)
        self.spec = spec
        self.agent_name = agent.name
        self.stream_to = request.stream_to or workflow.info().workflow_id
        # the conversation lives in the payload store; the workflow keeps its reference
        # and the messages the next model call will add
        self.conversation = request.conversation
        self.new = list(request.pending) or [Message.system(agent.instructions),
                                             Message.user(request.task)]
        self.turns = request.turns
        self.usage = request.usage or Usage()
        here = workflow.info().workflow_id
        given = request.sandbox
        if given is None or given.key != here:
            # new, or a fork of a run of another id (its payloads were copied here):
            # a workspace of this id's own
            given = SandboxState(key=here, checkpoint=given.checkpoint if given else None,
                                 owner=here)
        self.sandbox_given = request.sandbox is not None
        self.sandbox = msgspec.structs.replace(given, agent=agent.name,
                                               stream_to=self.stream_to)
        schema = _output_schema(agent.output_type)
        last_input = 0
        while True:
            self._check_limits(agent, spec)
            # between turns (no tool call in flight): the place to start afresh
            if spec.context_window and last_input >= spec.summarize_at * spec.context_window:
                await self._summarize_and_continue(agent, request, "the context window is "
                                                   f"{last_input / spec.context_window:.0%} full")
            if workflow.info().continue_as_new_suggested:
                self._continue(request, self.conversation, self.new)
            self.status = "thinking"
            try:
                result: ModelCallResult = await workflow.execute_activity(
                    MODEL_CALL, ModelCall(agent=agent.name, conversation=self.conversation,
                                          new=self.new, stream_to=self.stream_to,
                                          turn=self.turns),
                    result_type=ModelCallResult,
                    start_to_close_timeout=agent.model_timeout,
                    retry_policy=agent.model_retry_policy,
                )
            except ActivityError as exc:
                if _failure_type(exc) == "ModelContextOverflow":
                    await self._summarize_and_continue(
                        agent, request, "the model reported a context overflow")
                if _failure_type(exc).endswith("PayloadTooLargeError") and \
                        workflow.patched("model-answer-too-large"):
                    # paid for once, not retried (it would be as large again): the model
                    # hears why, and answers again within the limit
                    self.turns += 1
                    self._event("model_done", turn=self.turns, text="", tool_calls=0,
                                error="answer too large to record")
                    self.new.append(Message.user(
                        "Your previous answer was too large to record "
                        f"({_why(exc)}). Answer again, much more briefly; put long content "
                        "in files with your tools rather than in the answer."))
                    continue
                raise
            response = result.response
            if not result.message_digest or result.message_digest == _digest(response.message):
                self.conversation, self.new = result.conversation, []
            else:
                # the recorded answer was edited (a fork): the stored conversation holds the
                # original; go on from the one before it, with the answer as seen here
                self.new = [*self.new, response.message]
            last_input = response.usage.input_tokens
            self.turns += 1
            self.usage = self.usage + response.usage
            message = response.message
            self._publish()
            self._event("model_done", turn=self.turns, text=message.content,
                        tool_calls=len(message.tool_calls),
                        usage=msgspec.to_builtins(response.usage))
            if not message.tool_calls:
                output, problem = _validate(agent.output_type, message.content)
                if problem is None:
                    self.status = "done"
                    self._publish()
                    self._event("done", turns=self.turns,
                                usage=msgspec.to_builtins(self.usage))
                    return AgentResult(agent=agent.name, output=output, usage=self.usage,
                                       turns=self.turns, sandbox=self._sandbox_or_none())
                self.new.append(Message.user(
                    f"Your final answer did not validate: {problem}. Answer again with "
                    f"JSON matching this schema: {json.dumps(schema)}"))
                continue
            self.status = "working"
            # sub-agents started together share what is left of the budget
            share = max(1, sum(1 for c in message.tool_calls if c.name in spec.subagents))
            results = await asyncio.gather(
                *(self._call(agent, spec, call, share) for call in message.tool_calls))
            self.new.extend(results)

    async def _summarize_and_continue(self, agent: Agent, request: AgentRun,
                                      why: str) -> None:
        """Have the model summarise the conversation, then continue as new with it."""
        self.status = "summarising"
        self._event("summarising", reason=why)
        result: ModelCallResult = await workflow.execute_activity(
            MODEL_CALL, ModelCall(agent=agent.name, conversation=self.conversation,
                                  new=self.new, stream_to=self.stream_to, turn=self.turns,
                                  purpose="summary"),
            result_type=ModelCallResult, start_to_close_timeout=agent.model_timeout,
            retry_policy=agent.model_retry_policy,
        )
        self.usage = self.usage + result.response.usage
        summary = result.response.message.content
        self._continue(request, None, [
            Message.system(agent.instructions), Message.user(request.task),
            Message.user(f"(Continuing after a summary of the work so far, because {why}.)"
                         f"\n\n{summary}\n\nCarry on with the task."),
        ])

    def _continue(self, request: AgentRun, conversation: str | None,
                  pending: list[Message]) -> None:
        self._event("continuing", turns=self.turns)
        workflow.continue_as_new(msgspec.structs.replace(
            request, conversation=conversation, pending=pending, turns=self.turns,
            usage=self.usage, stream_to=self.stream_to, spec=self.spec,
            sandbox=self._sandbox_or_none()))

    def _sandbox_or_none(self) -> SandboxState | None:
        """The workspace's state, unless it never held a file (runs that never touch a
        sandbox keep their histories as they were); an emptied workspace that started
        with files is a state too (its deletions are merged into a parent)."""
        if self.sandbox.checkpoint is None and not self.sandbox_given:
            return None
        return self.sandbox

    def _check_limits(self, agent: Agent, spec: AgentSpec) -> None:
        reason = ""
        if self.turns >= spec.max_turns:
            reason = f"it reached max_turns ({spec.max_turns}) without a final answer"
        tokens = spec.token_budget
        if tokens is not None and self.usage.total_tokens >= tokens:
            reason = (f"its token budget is spent ({self.usage.total_tokens} of {tokens} "
                      "tokens used)")
        cost = spec.cost_budget
        if cost is not None and self.usage.cost >= cost:
            reason = f"its cost budget is spent ({self.usage.cost:.4f} of {cost:.4f})"
        if reason:
            self.status = "stopped"
            self._publish()
            self._event("stopped", reason=reason)
            raise ApplicationError(f"agent {agent.name!r} stopped: {reason}",
                                   type="AgentStopped", non_retryable=True)

    def _event(self, kind: str, **fields: Any) -> None:
        """Progress for followers of the tree's stream (not history)."""
        workflow.publish({"type": kind, "agent": self.agent_name, **fields},
                         workflow_id=self.stream_to)

    def _publish(self) -> None:
        workflow.upsert_memo({
            "agent": self.agent_name, "status": self.status, "turns": self.turns,
            "usage": msgspec.to_builtins(self.usage),
            "pending_questions": list(self.questions.values()) or None,
            "pending_approvals": [c.name for c in self.approvals.values()] or None,
        })

    # ------------------------------------------------------------ one tool call
    async def _call(self, agent: Agent, spec: AgentSpec, call: ToolCall,
                    share: int) -> Message:
        self._event("tool_call", id=call.id, tool=call.name, arguments=call.arguments)
        message = await self._run_call(agent, spec, call, share)
        self._event("tool_result", id=call.id, tool=call.name, is_error=message.is_error,
                    content=message.content[:2000])
        return message

    async def _run_call(self, agent: Agent, spec: AgentSpec, call: ToolCall,
                        share: int) -> Message:
        # what exists comes from the run's spec (fixed at start), not today's definition
        if call.name == ASK_HUMAN and spec.asks_human:
            return await self._ask_human(spec, call)
        if call.name in spec.subagents:
            return await self._delegate(agent, spec, registered_agent(call.name), call, share)
        if call.name not in spec.tools:
            offered = ", ".join([*spec.tools, *spec.subagents]
                                + ([ASK_HUMAN] if spec.asks_human else [])) or "none"
            return Message.tool(call, f"error: there is no tool named {call.name!r}; the "
                                      f"tools are: {offered}", is_error=True)
        if call.name in spec.approvals:
            approved, reason = await self._approval(call)
            if not approved:
                return Message.tool(call, "error: the human denied this call"
                                    + (f": {reason}" if reason else ""), is_error=True)
        found = next((t for t in agent.tools if t.name == call.name and isinstance(t, Tool)),
                     None)
        if call.name in spec.sandbox_tools:
            return await self._sandbox_call(call, found)
        try:
            result = await workflow.execute_activity(
                ACTIVITY_PREFIX + call.name, call.arguments, **_tool_options(found))
        except ActivityError as exc:
            return Message.tool(call, f"error: {_why(exc)}", is_error=True)
        return Message.tool(call, _text(result))

    async def _sandbox_call(self, call: ToolCall, found: Tool | None) -> Message:
        async with self.sandbox_lock:
            state = self.sandbox
            try:
                result: SandboxToolResult = await workflow.execute_activity(
                    ACTIVITY_PREFIX + call.name, call.arguments, state,
                    result_type=SandboxToolResult, **_tool_options(found))
            except ActivityError as exc:
                return Message.tool(call, f"error: {_why(exc)}", is_error=True)
            if result.changed:
                self.sandbox = msgspec.structs.replace(
                    state, checkpoint=result.checkpoint, owner=workflow.info().workflow_id)
        return Message.tool(call, result.output)

    async def _merge_sandbox(self, base: SandboxState, theirs: SandboxState | None) -> str:
        """Take a finished sub-agent's workspace changes into this run's; what changed.
        (``theirs`` None: it never had a file, and started with none.)"""
        if theirs is None or theirs.checkpoint == base.checkpoint:
            return ""
        async with self.sandbox_lock:
            merged: SandboxToolResult = await workflow.execute_activity(
                SANDBOX_MERGE, base, self.sandbox, theirs, result_type=SandboxToolResult,
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=DEFAULT_TOOL_RETRY,
            )
            self.sandbox = msgspec.structs.replace(
                self.sandbox, checkpoint=merged.checkpoint, owner=workflow.info().workflow_id)
        return merged.output

    async def _ask_human(self, spec: AgentSpec, call: ToolCall) -> Message:
        question = str(call.arguments.get("question", "")).strip() or "(no question given)"
        if self.early_answers and call.id not in self.answers:
            # answered before it was asked (it came as the question was being settled)
            self.answers[call.id] = self.early_answers.pop(0)
        self.questions[call.id] = question
        self.status = "waiting for the human"
        self._publish()
        self._event("question", id=call.id, question=question)
        # (no `finally:` with workflow calls: it would also run when a dropped instance's
        # coroutine is closed, outside any activation)
        try:
            await workflow.wait_condition(
                lambda: call.id in self.answers,
                timeout=spec.human_timeout)
        except TimeoutError:
            self._settle(self.questions, call.id)
            return Message.tool(call, "error: nobody answered in time; decide without them",
                                is_error=True)
        except asyncio.CancelledError:
            self._settle(self.questions, call.id)
            raise
        self._settle(self.questions, call.id)
        return Message.tool(call, self.answers[call.id])

    def _settle(self, pending: dict[str, Any], call_id: str) -> None:
        pending.pop(call_id, None)
        self.status = "working"
        self._publish()

    async def _approval(self, call: ToolCall) -> tuple[bool, str]:
        self.approvals[call.id] = call
        self.status = "waiting for approval"
        self._publish()
        self._event("approval_needed", id=call.id, tool=call.name, arguments=call.arguments)
        try:
            await workflow.wait_condition(lambda: call.id in self.decisions)
        except asyncio.CancelledError:
            self._settle(self.approvals, call.id)
            raise
        self._settle(self.approvals, call.id)
        return self.decisions[call.id]

    async def _delegate(self, agent: Agent, spec: AgentSpec, sub: Agent, call: ToolCall,
                        share: int) -> Message:
        task = str(call.arguments.get("task", "")).strip()
        if not task:
            return Message.tool(call, "error: give the sub-agent a task", is_error=True)
        tokens, cost = spec.token_budget, spec.cost_budget
        child = AgentRun(
            agent=sub.name, task=task, stream_to=self.stream_to,
            spec=AgentSpec.of(
                sub,
                # what is left, split between the sub-agents started in the same turn
                token_budget=None if tokens is None
                else max(0, tokens - self.usage.total_tokens) // share,
                cost_budget=None if cost is None
                else max(0.0, cost - self.usage.cost) / share,
            ),
        )
        child_id = subagent_workflow_id(workflow.info().workflow_id, sub.name, call.id)
        # the sub-agent works in a workspace of its own, starting from this one's files
        base = self.sandbox
        if base.checkpoint is not None:
            child.sandbox = SandboxState(key=child_id, checkpoint=base.checkpoint,
                                         owner=base.owner, stream_to=self.stream_to or "")
        self._event("subagent_start", subagent=sub.name, id=call.id, task=task)
        try:
            result: AgentResult = await workflow.execute_child_workflow(
                AGENT_WORKFLOW, child, id=child_id,
                result_type=AgentResult, execution_timeout=sub.subagent_timeout
                or agent.subagent_timeout,
                search_attributes={"agent": sub.name},
                memo={"agent": sub.name, "parent_agent": agent.name},
            )
        except (ChildWorkflowError, WorkflowAlreadyStartedError) as exc:
            spent = _spent(exc)
            self.usage = self.usage + spent  # what a failed sub-agent spent counts too
            self._event("subagent_end", subagent=sub.name, id=call.id, ok=False,
                        error=_why(exc), usage=msgspec.to_builtins(spent))
            return Message.tool(call, f"error: the {sub.name} agent failed: {_why(exc)}",
                                is_error=True)
        self.usage = self.usage + result.usage  # a tree's usage adds up at its root
        try:
            merged = await self._merge_sandbox(base, result.sandbox)
        except ActivityError as exc:
            merged = f"its files could not be taken over: {_why(exc)}"
        self._event("subagent_end", subagent=sub.name, id=call.id, ok=True,
                    usage=msgspec.to_builtins(result.usage))
        output = _text(result.output)
        return Message.tool(call, f"{output}\n\n(project files: {merged})" if merged
                            else output)

    # ------------------------------------------------------------ the human's side
    @workflow.signal
    def answer(self, text: str, question_id: str = "") -> None:
        """The human's answer: to ``question_id``, or to the oldest open question (with
        none open, it is kept for the next question rather than dropped)."""
        target = question_id or next(iter(self.questions), "")
        if target:
            self.answers[target] = text
        else:
            self.early_answers.append(text)

    @workflow.signal
    def decide(self, call_id: str, approved: bool, reason: str = "") -> None:
        """The human's decision on a tool call that needs approval."""
        self.decisions[call_id] = (approved, reason)

    @workflow.query
    def pending(self) -> dict[str, Any]:
        """Open questions and tool calls waiting for approval."""
        return {
            "questions": [{"id": k, "question": v} for k, v in self.questions.items()],
            "approvals": [{"id": c.id, "tool": c.name, "arguments": c.arguments}
                          for c in self.approvals.values()],
        }

    @workflow.query
    def progress(self) -> dict[str, Any]:
        """Status, turns and usage so far."""
        return {"agent": self.agent_name, "status": self.status, "turns": self.turns,
                "usage": msgspec.to_builtins(self.usage)}


def _output_schema(output_type: Any) -> dict[str, Any] | None:
    if output_type is str or output_type is None:
        return None
    model_schema = getattr(output_type, "model_json_schema", None)
    if model_schema is not None:
        return dict(model_schema())
    return dict(msgspec.json.schema(output_type))


def _validate(output_type: Any, content: str) -> tuple[Any, str | None]:
    """The final answer as JSON of the output type, or why it does not fit."""
    if output_type is str or output_type is None:
        return content, None
    text = content.strip()
    if text.startswith("```"):
        text = text.strip("`").split("\n", 1)[-1] if "\n" in text else text.strip("`")
    try:
        validate_json = getattr(output_type, "model_validate_json", None)
        value = validate_json(text) if validate_json is not None \
            else msgspec.json.decode(text, type=output_type)
    except Exception as exc:
        return None, str(exc).splitlines()[0][:500]
    return msgspec.json.decode(msgspec.json.encode(value, enc_hook=_enc_hook)), None

