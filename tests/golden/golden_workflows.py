"""The workflows whose recorded histories are committed under ``tests/golden/histories``.

These are the *current* code of a handful of realistic agent workflows. Their histories
were recorded once (``python -m tests.golden.generate``) and are replayed in CI by
``test_golden_histories.py``: a change to the engine (or to this file) that would stop
users' stored histories from replaying fails the build.

Do not edit a workflow here without regenerating on purpose: the point of the golden
files is that they were written by *earlier* code. A change that is meant to keep old
histories working (a patch, a new handler) must still replay every file as it is.

Workflow type names are given explicitly: they are persisted in every history.
Every activity is local and deterministic (no network): a "model call" is a string
function, a "flaky tool" fails by attempt number.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from perdure import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    RetryPolicy,
    activity,
    workflow,
)

TASK_QUEUE = "golden"
T = timedelta(seconds=30)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_attempts=4,
                    non_retryable_error_types=["Paywalled"])


# ------------------------------------------------------------------ activities


@activity.defn
async def plan_research(topic: str) -> list[str]:
    """The "planner model": split a topic into search queries."""
    return [f"{topic}: background", f"{topic}: prior work", f"{topic}: open questions"]


@activity.defn
async def web_search(query: str) -> list[str]:
    """A flaky search tool: the first attempt of the 'prior work' query is rate limited."""
    if "prior work" in query and activity.info().attempt == 1:
        raise ApplicationError("429 Too Many Requests", type="RateLimited")
    return [f"{query} / hit {i}" for i in range(2)]


@activity.defn
def fetch_page(url: str) -> str:
    """A synchronous tool (runs in the worker's thread pool) that always fails for good."""
    raise ApplicationError(f"{url} is behind a paywall", type="Paywalled")


@activity.defn
async def summarize(notes: list[str]) -> str:
    return f"{len(notes)} notes, starting with {notes[0]!r}" if notes else "nothing found"


@activity.defn
async def make_outline(brief: str) -> list[str]:
    return [f"{brief}: introduction", f"{brief}: findings", f"{brief}: recommendations"]


@activity.defn
async def draft_section(heading: str) -> str:
    activity.heartbeat("drafting")
    return f"## {heading}\n{heading.split(': ')[-1].capitalize()} text."


@activity.defn
async def check_claims(sections: list[str]) -> list[str]:
    """The fact checker: reports the claims it could not verify."""
    return [f"unsupported claim in section {i + 1}" for i in range(len(sections)) if i % 2 == 0]


@activity.defn
async def review_text(text: str) -> str:
    return f"LGTM ({len(text.splitlines())} lines)"


@activity.defn
async def draft_proposal(task: str) -> str:
    return f"proposal: {task}"


@activity.defn
async def execute_plan(proposal: str, feedback: list[str]) -> str:
    return f"executed {proposal!r} with {len(feedback)} notes"


@activity.defn
async def acknowledge_ticket(ticket: str) -> str:
    return f"ack: {ticket}"


@activity.defn
async def classify_ticket(ticket: str, details: str) -> str:
    """The old classifier: a bare label."""
    return "billing" if "invoice" in (ticket + details) else "general"


@activity.defn
async def classify_ticket_structured(ticket: str, details: str) -> dict[str, Any]:
    """The new classifier: structured output with a priority."""
    text = ticket + details
    return {"category": "billing" if "invoice" in text else "general",
            "priority": "high" if "urgent" in text else "normal"}


@activity.defn
async def send_reply(ticket: str, category: str, priority: str) -> str:
    return f"replied to {ticket!r} via {category} queue ({priority})"


@activity.defn
async def call_model(summary: str, question: str) -> str:
    context = f" (context: {summary})" if summary else ""
    return f"answer to {question!r}{context}"


@activity.defn
async def compact_transcript(transcript: list[str]) -> str:
    return f"{len(transcript)} earlier turns, last: {transcript[-1]!r}" if transcript else ""


@activity.defn
async def ask_slow_oracle(question: str) -> str:
    """A tool that answers too late: the caller's start-to-close timeout ends it first."""
    await asyncio.sleep(3)
    return f"too late for {question!r}"


TOOLS_RUNNING: set[str] = set()
"""Workflow ids whose ``run_test_suite`` activity is running (the generator waits on it)."""


@activity.defn
async def run_test_suite(suite: str) -> str:
    """A long tool call: heartbeats until it finishes (never, here) or is cancelled."""
    me = activity.info().workflow_id
    TOOLS_RUNNING.add(me)
    try:
        while True:
            activity.heartbeat(suite)
            await asyncio.sleep(0.02)
    finally:
        TOOLS_RUNNING.discard(me)


@activity.defn
async def release_sandbox(owner: str) -> str:
    return f"sandbox of {owner} released"


# ------------------------------------------------------------------ (a) plain agent


@workflow.defn(name="ResearchAgent")
class ResearchAgent:
    """Plan, search in parallel (one search is retried), try a tool that fails for good
    (the failure is caught), summarize."""

    @workflow.run
    async def run(self, topic: str) -> dict[str, Any]:
        queries: list[str] = await workflow.execute_activity(
            plan_research, topic, start_to_close_timeout=T)
        hits = await asyncio.gather(*(
            workflow.execute_activity(web_search, q, start_to_close_timeout=T,
                                      retry_policy=RETRY)
            for q in queries
        ))
        notes = [hit for batch in hits for hit in batch]
        try:
            notes.append(await workflow.execute_activity(
                fetch_page, f"https://journal.example/{topic}", start_to_close_timeout=T,
                retry_policy=RETRY))
        except ActivityError as err:
            workflow.logger.info("skipping the paper: %s", err.__cause__)
            notes.append(f"(paper unavailable: {err.__cause__})")
        summary = await workflow.execute_activity(summarize, notes, start_to_close_timeout=T)
        return {"topic": topic, "report_id": str(workflow.uuid4()), "notes": len(notes),
                "summary": summary}


# ------------------------------------------------------------------ (b) children


@workflow.defn(name="DraftSection")
class DraftSection:
    @workflow.run
    async def run(self, heading: str) -> str:
        text: str = await workflow.execute_activity(draft_section, heading,
                                                    start_to_close_timeout=T,
                                                    heartbeat_timeout=T)
        return text


@workflow.defn(name="FactCheck")
class FactCheck:
    """Fails the workflow (not the activity) when a claim is unsupported."""

    @workflow.run
    async def run(self, sections: list[str]) -> str:
        problems: list[str] = await workflow.execute_activity(check_claims, sections,
                                                              start_to_close_timeout=T)
        if problems:
            raise ApplicationError(f"{len(problems)} claims unsupported: {problems[0]}",
                                   type="FactCheckFailed")
        return "all claims supported"


@workflow.defn(name="Reviewer")
class Reviewer:
    """A child that waits for its parent to signal it the text to review."""

    def __init__(self) -> None:
        self.text: str | None = None

    @workflow.run
    async def run(self) -> str:
        await workflow.wait_condition(lambda: self.text is not None)
        assert self.text is not None
        verdict: str = await workflow.execute_activity(review_text, self.text,
                                                       start_to_close_timeout=T)
        return verdict

    @workflow.signal
    def submit(self, text: str) -> None:
        self.text = text


@workflow.defn(name="WriteReport")
class WriteReport:
    """An orchestrator: one child per section in parallel, a fact-check child that fails
    (caught), then a reviewer child that the parent signals."""

    @workflow.run
    async def run(self, brief: str) -> dict[str, Any]:
        outline: list[str] = await workflow.execute_activity(make_outline, brief,
                                                             start_to_close_timeout=T)
        me = workflow.info().workflow_id
        sections = await asyncio.gather(*(
            workflow.execute_child_workflow(DraftSection.run, heading, id=f"{me}.section-{i}")
            for i, heading in enumerate(outline)
        ))
        try:
            checked = await workflow.execute_child_workflow(FactCheck.run, list(sections),
                                                            id=f"{me}.fact-check")
        except ChildWorkflowError as err:
            checked = f"not verified: {err.__cause__}"
        reviewer = await workflow.start_child_workflow(Reviewer.run, id=f"{me}.review")
        await reviewer.signal(Reviewer.submit, "\n".join(sections))
        review = await reviewer
        return {"sections": len(sections), "fact_check": checked, "review": review}


# ------------------------------------------------------------------ (c) signals, timers, query


@workflow.defn(name="HumanApproval")
class HumanApproval:
    """Draft, wait (up to 3 days, a durable timer) for a human's decision and feedback,
    give a second reviewer one hour (the timer fires), cool off 30 minutes, act."""

    def __init__(self) -> None:
        self.phase = "drafting"
        self.feedback: list[str] = []
        self.approved: bool | None = None
        self.second_opinion: str | None = None

    @workflow.run
    async def run(self, task: str) -> dict[str, Any]:
        proposal: str = await workflow.execute_activity(draft_proposal, task,
                                                        start_to_close_timeout=T)
        self.phase = "awaiting decision"
        try:
            await workflow.wait_condition(lambda: self.approved is not None,
                                          timeout=timedelta(days=3))
        except TimeoutError:
            self.approved = False
        if not self.approved:
            self.phase = "rejected"
            return {"proposal": proposal, "outcome": "rejected"}
        self.phase = "awaiting second opinion"
        try:
            await workflow.wait_condition(lambda: self.second_opinion is not None,
                                          timeout=timedelta(hours=1))
        except TimeoutError:
            self.feedback.append("(no second opinion within the hour)")
        self.phase = "cooling off"
        await asyncio.sleep(timedelta(minutes=30).total_seconds())
        self.phase = "executing"
        outcome: str = await workflow.execute_activity(execute_plan, proposal, self.feedback,
                                                       start_to_close_timeout=T)
        self.phase = "done"
        return {"proposal": proposal, "outcome": outcome, "decided_at": workflow.now().isoformat()}

    @workflow.signal
    def add_feedback(self, text: str) -> None:
        self.feedback.append(text)

    @workflow.signal
    def decide(self, approved: bool) -> None:
        self.approved = approved

    @workflow.signal
    def give_second_opinion(self, text: str) -> None:
        self.second_opinion = text

    @workflow.query
    def status(self) -> dict[str, Any]:
        return {"phase": self.phase, "feedback": len(self.feedback)}


# ------------------------------------------------------------------ (d) a patch


@workflow.defn(name="SupportTriage")
class SupportTriage:
    """Acknowledge a ticket, wait for the customer's details, classify, reply.

    The structured classifier came in with the patch ``structured-triage``: runs that
    passed the start under the old code (no marker) keep the bare-label classifier.
    """

    def __init__(self) -> None:
        self.details: str | None = None

    @workflow.run
    async def run(self, ticket: str) -> str:
        structured = workflow.patched("structured-triage")
        await workflow.execute_activity(acknowledge_ticket, ticket, start_to_close_timeout=T)
        await workflow.wait_condition(lambda: self.details is not None, timeout=timedelta(days=1))
        assert self.details is not None
        if structured:
            triage: dict[str, Any] = await workflow.execute_activity(
                classify_ticket_structured, ticket, self.details, start_to_close_timeout=T)
            category, priority = triage["category"], triage["priority"]
        else:
            category = await workflow.execute_activity(classify_ticket, ticket, self.details,
                                                       start_to_close_timeout=T)
            priority = "normal"
        reply: str = await workflow.execute_activity(send_reply, ticket, category, priority,
                                                     start_to_close_timeout=T)
        return reply

    @workflow.signal
    def customer_details(self, text: str) -> None:
        self.details = text


# ------------------------------------------------------------------ (e) updates, continue-as-new


TURNS_PER_RUN = 2


@workflow.defn(name="ChatSession")
class ChatSession:
    """A chat session answering ``ask`` updates. After ``TURNS_PER_RUN`` turns it compacts
    the transcript and continues as new; ``close`` ends it. Its phase and turn count are
    search attributes."""

    def __init__(self) -> None:
        self.transcript: list[str] = []
        self.summary = ""
        self.closed = False
        self.busy = 0

    @workflow.run
    async def run(self, state: dict[str, Any]) -> dict[str, Any]:
        self.summary = state.get("summary", "")
        generation = int(state.get("generation", 0))
        earlier_turns = int(state.get("turns", 0))
        workflow.upsert_search_attributes({"session_phase": "open", "generation": generation})
        if generation == 0:
            workflow.upsert_memo({"title": state.get("title", "untitled")})
        await workflow.wait_condition(
            lambda: self.busy == 0 and (self.closed or len(self.transcript) >= TURNS_PER_RUN))
        turns = earlier_turns + len(self.transcript)
        if not self.closed:
            workflow.upsert_search_attributes({"session_phase": "compacting"})
            summary: str = await workflow.execute_activity(compact_transcript, self.transcript,
                                                           start_to_close_timeout=T)
            workflow.continue_as_new({"summary": summary, "generation": generation + 1,
                                      "turns": turns})
        workflow.upsert_search_attributes({"session_phase": "closed", "generation": None})
        return {"turns": turns, "generations": generation + 1, "summary": self.summary}

    @workflow.update
    async def ask(self, question: str) -> str:
        self.busy += 1
        try:
            answer: str = await workflow.execute_activity(call_model, self.summary, question,
                                                          start_to_close_timeout=T)
        finally:
            self.busy -= 1
        self.transcript.append(f"Q: {question} A: {answer}")
        return answer

    @workflow.update_validator(ask)
    def _check_ask(self, question: str) -> None:
        if not question.strip():
            raise ValueError("an empty question")
        if self.closed or len(self.transcript) >= TURNS_PER_RUN:
            raise ValueError("the session is not taking questions right now")

    @workflow.update
    def close(self) -> int:
        self.closed = True
        return len(self.transcript)


# ------------------------------------------------------------------ (f) cancellation, timeouts


ONCE = RetryPolicy(maximum_attempts=1)


@workflow.defn(name="TestRunner")
class TestRunner:
    """A child running a long tool; cancelled, it releases its sandbox and ends cancelled."""

    @workflow.run
    async def run(self, suite: str) -> str:
        try:
            result: str = await workflow.execute_activity(
                run_test_suite, suite, start_to_close_timeout=600, heartbeat_timeout=30,
                retry_policy=ONCE)
            return result
        except asyncio.CancelledError:
            await workflow.execute_activity(release_sandbox, workflow.info().workflow_id,
                                            start_to_close_timeout=T, retry_policy=ONCE)
            raise


@workflow.defn(name="CodingAgent")
class CodingAgent:
    """Asks a tool that times out (caught), runs the test suite in a child, and is
    cancelled by its user meanwhile: the child is cancelled first, then both clean up."""

    @workflow.run
    async def run(self, task: str) -> str:
        me = workflow.info().workflow_id
        try:
            hint = await workflow.execute_activity(
                ask_slow_oracle, task, start_to_close_timeout=timedelta(milliseconds=300),
                retry_policy=ONCE)
        except ActivityError as err:
            hint = f"no hint ({err.__cause__})"
        try:
            report: str = await workflow.execute_child_workflow(TestRunner.run, "unit",
                                                                id=f"{me}.tests")
        except asyncio.CancelledError:
            await workflow.execute_activity(release_sandbox, me, start_to_close_timeout=T,
                                            retry_policy=ONCE)
            raise
        return f"{hint}; {report}"


WORKFLOWS: list[type] = [ResearchAgent, DraftSection, FactCheck, Reviewer, WriteReport,
                         HumanApproval, SupportTriage, ChatSession, TestRunner, CodingAgent]

ACTIVITIES: list[Callable[..., Any]] = [plan_research, web_search, fetch_page, summarize, make_outline, draft_section,
              check_claims, review_text, draft_proposal, execute_plan, acknowledge_ticket,
              classify_ticket, classify_ticket_structured, send_reply, call_model,
              compact_transcript, ask_slow_oracle, run_test_suite, release_sandbox]
