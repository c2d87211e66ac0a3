"""Conversations that outgrow the context window: summarise, continue as new, carry on."""

from __future__ import annotations

from perdure import ApplicationError, WorkerOptions, WorkflowStatus
from perdure.agents import Agent, AgentWorker, ModelRequest, ScriptedModel, tool
from perdure.testing import WorkflowEnvironment

SUMMARIES: list[int] = []


@tool
async def read_chapter(number: int) -> str:
    """Read a chapter of the book."""
    return f"chapter {number}: " + "words " * 60


def _reader(chapters: int, overflow_at: int | None = None):  # type: ignore[no-untyped-def]
    def answer(request: ModelRequest) -> object:
        if request.purpose == "summary":
            if overflow_at is not None and len(request.messages) > overflow_at:
                # as a real provider: the summary of a too-long conversation overflows too
                raise ApplicationError("maximum context length exceeded",
                                       type="ModelContextOverflow", non_retryable=True)
            earlier = next((m.content.split("So far I read: ")[1].split("\n")[0]
                            for m in request.messages if "So far I read: " in m.content), "")
            read = [m.content.split(":")[0] for m in request.messages if m.role == "tool"]
            SUMMARIES.append(len(request.messages))
            return "So far I read: " + ", ".join([x for x in earlier.split(", ") if x] + read)
        if overflow_at is not None and len(request.messages) > overflow_at:
            raise ApplicationError("maximum context length exceeded",
                                   type="ModelContextOverflow", non_retryable=True)
        done = [m for m in request.messages if m.role == "tool"]
        summary = next((m.content for m in request.messages if "So far I read" in m.content),
                       "")
        read = summary.count("chapter") + len(done)
        if read < chapters:
            return ScriptedModel.call("read_chapter", id=f"c{read + 1}", number=read + 1)
        return f"read {read} chapters"

    return answer


async def test_context_window_pressure_summarises_and_continues(
    env: WorkflowEnvironment,
) -> None:
    SUMMARIES.clear()
    reader = Agent(name="reader", instructions="Read the book, one chapter at a time.",
                   tools=[read_chapter], model=ScriptedModel(_reader(12)),
                   context_window=400, max_turns=40)
    async with AgentWorker(env.client, agents=[reader]):
        handle = await env.client.start_agent(reader, "read 12 chapters", id="reader-1")
        run = await handle.run_result(timeout=30)
    assert run.output == "read 12 chapters"
    assert SUMMARIES  # it summarised at least once
    runs = await env.client.list_workflows(workflow_type="perdure.Agent")
    assert any(r.status == WorkflowStatus.CONTINUED_AS_NEW for r in runs)
    # turns and usage span the whole chain: 12 chapters + the final answer
    assert run.turns == 13
    assert run.usage.model_calls == 13 + len(SUMMARIES)


async def test_context_overflow_is_summarised_not_fatal(env: WorkflowEnvironment) -> None:
    SUMMARIES.clear()
    reader = Agent(name="overflowing-reader", instructions="Read.", tools=[read_chapter],
                   model=ScriptedModel(_reader(8, overflow_at=12)), max_turns=40)
    async with AgentWorker(env.client, agents=[reader]):
        handle = await env.client.start_agent(reader, "read 8 chapters", id="reader-2")
        assert await handle.result(timeout=30) == "read 8 chapters"
    assert SUMMARIES


async def test_long_history_continues_as_new_with_its_conversation(
    env: WorkflowEnvironment,
) -> None:
    reader = Agent(name="patient-reader", instructions="Read.", tools=[read_chapter],
                   model=ScriptedModel(_reader(10)), max_turns=40)
    options = WorkerOptions(history_warning_events=30)
    async with AgentWorker(env.client, agents=[reader], options=options):
        handle = await env.client.start_agent(reader, "read 10 chapters", id="reader-3")
        run = await handle.run_result(timeout=30)
    assert run.output == "read 10 chapters" and run.turns == 11
    chain = await env.client.list_workflows(workflow_type="perdure.Agent",
                                            status="continued_as_new")
    assert len([r for r in chain if r.workflow_id == "reader-3"]) >= 2
    # decisions taken on the history's size replay the same way
    from perdure.agents._workflow import AgentWorkflow
    from perdure.replay import Replayer

    report = await Replayer([AgentWorkflow]).replay_from_database(
        env.client, statuses=list(WorkflowStatus), workflow_type="perdure.Agent")
    assert report.ok, report.describe()
