"""Golden histories: real recorded histories, committed as JSON, must replay on today's code.

``histories/*.json`` were recorded by ``python -m tests.golden.generate`` from the
workflows of ``golden_workflows.py`` (and, for one run, the code before a patch).
A change to the engine, the history format or those workflows that would break users'
stored histories fails here. The coverage test fails if the golden set silently loses a
kind of event, and the tripwire tests show that the check does catch incompatible
changes: the same files fail against deliberately changed code or a changed engine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perdure import (
    ActivityError,
    InvalidArgumentError,
    NondeterminismError,
    WorkflowHistory,
    workflow,
)
from perdure.history import (
    ActivityCompleted,
    MarkerRecorded,
    WorkflowStarted,
    WorkflowTaskCompleted,
    event_type_name,
)
from perdure.testing import assert_replays
from perdure.workflow._instance import WorkflowInstance
from tests.golden import golden_workflows as g
from tests.golden.generate import SupportTriageBeforePatch, format_history

HISTORIES = Path(__file__).resolve().parent / "histories"
FILES = sorted(HISTORIES.glob("*.json"))

REQUIRED_EVENT_TYPES = {
    "WorkflowStarted", "WorkflowTaskCompleted", "WorkflowCompleted", "WorkflowFailed",
    "ActivityScheduled", "ActivityCompleted", "ActivityFailed",
    "TimerStarted", "TimerFired", "TimerCanceled",
    "SignalReceived", "ExternalSignalSent", "ExternalSignalDelivered",
    "ChildWorkflowScheduled", "ChildWorkflowStarted", "ChildWorkflowCompleted",
    "ChildWorkflowFailed",
    "MarkerRecorded", "UpdateAccepted", "UpdateCompleted", "WorkflowContinuedAsNew",
    "SearchAttributesUpserted", "MemoUpserted",
    "ActivityTimedOut", "ActivityCancelRequested", "CancelRequested",
    "ChildWorkflowCancelRequested", "ChildWorkflowCanceled", "WorkflowCanceled",
}
"""Every event type the golden set covers today: a regenerated set that lost one fails."""


def _name(path: Path) -> str:
    return path.name.removesuffix(".json")


def _history(name: str) -> WorkflowHistory:
    return WorkflowHistory.from_file(HISTORIES / f"{name}.json")


def _all_histories() -> Iterator[tuple[Path, WorkflowHistory]]:
    for path in FILES:
        yield path, WorkflowHistory.from_file(path)


def _workflows_with(*replacements: type) -> list[type]:
    """The golden workflow classes, with the given classes standing in for theirs."""
    names = {workflow_type(cls) for cls in replacements}
    return [cls for cls in g.WORKFLOWS if workflow_type(cls) not in names] + list(replacements)


def workflow_type(cls: type) -> str:
    from perdure.workflow._definition import get_workflow_definition

    definition = get_workflow_definition(cls)
    assert definition is not None
    return definition.name


# ------------------------------------------------------------------ the check itself


def test_golden_set_is_there() -> None:
    assert len(FILES) >= 10, f"only {len(FILES)} golden histories under {HISTORIES}"
    recorded = {WorkflowHistory.from_file(path).workflow_type for path in FILES}
    missing = {workflow_type(cls) for cls in g.WORKFLOWS} - recorded
    assert not missing, f"no golden history for workflow types {sorted(missing)}"


@pytest.mark.parametrize("path", FILES, ids=_name)
def test_golden_history_replays(path: Path) -> None:
    report = assert_replays(g.WORKFLOWS, path)
    assert len(report) == 1 and report[0].ok


def test_golden_directory_replays_in_one_call() -> None:
    report = assert_replays(g.WORKFLOWS, HISTORIES)
    assert len(report) == len(FILES)
    assert all(result.events > 0 for result in report)


@pytest.mark.parametrize("path", FILES, ids=_name)
def test_golden_file_decodes(path: Path) -> None:
    history = WorkflowHistory.from_file(path)
    document = json.loads(path.read_bytes())
    assert (document["format"], document["version"]) == ("perdure-history", 1)
    assert history.workflow_id == document["workflow_id"]
    assert path.name.startswith(history.workflow_id + ".run-")
    assert len(history.events) == len(document["events"])
    assert isinstance(history.events[0], WorkflowStarted)
    assert history.workflow_type
    assert event_type_name(history.events[-1]) in (
        "WorkflowCompleted", "WorkflowFailed", "WorkflowCanceled", "WorkflowContinuedAsNew")
    assert history.build_ids, "every golden history was written by a worker with a build id"
    # today's encoder writes what today's decoder reads, losslessly
    again = WorkflowHistory.from_json(history.to_json())
    assert again.events == history.events
    assert WorkflowHistory.from_json(format_history(history)).events == history.events


def test_golden_set_covers_the_event_model() -> None:
    seen: set[str] = set()
    for _, history in _all_histories():
        seen.update(event_type_name(event) for event in history.events)
    missing = REQUIRED_EVENT_TYPES - seen
    assert not missing, f"the golden histories no longer contain {sorted(missing)}"


def test_golden_set_covers_the_interesting_cases() -> None:
    histories = dict((_name(path), history) for path, history in _all_histories())
    events = [e for history in histories.values() for e in history.events]
    # an activity that failed and succeeded on retry
    assert any(isinstance(e, ActivityCompleted) and e.attempt > 1 for e in events)
    # a patch taken (its marker) ...
    assert any(isinstance(e, MarkerRecorded) and bytes(e.value) == b'"structured-triage"'
               for e in events)
    # ... and a run of the patched type written before the patch, with no marker
    old = histories["triage-before-patch.run-0"]
    assert old.workflow_type == "SupportTriage"
    assert not any(isinstance(e, MarkerRecorded) for e in old.events)
    # a continued run, and child runs that name their parent
    starts = [h.events[0] for h in histories.values()]
    assert any(isinstance(s, WorkflowStarted) and s.continued_from_run_id for s in starts)
    assert sum(isinstance(s, WorkflowStarted) and s.parent_workflow_id is not None
               for s in starts) >= 4
    # a run written by two builds (the deploy in the middle of the pre-patch run)
    assert len(old.build_ids) == 2


# ------------------------------------------------------------------ tripwires: changed code


@workflow.defn(name="ResearchAgent")
class ResearchAgentExtraStep(g.ResearchAgent):
    """A new activity inserted before the searches."""

    @workflow.run
    async def run(self, topic: str) -> dict[str, Any]:
        await workflow.execute_activity(g.summarize, [topic], start_to_close_timeout=g.T)
        return await super().run(topic)


@workflow.defn(name="ResearchAgent")
class ResearchAgentSequential:
    """The same activities, searched one after another instead of in parallel."""

    @workflow.run
    async def run(self, topic: str) -> dict[str, Any]:
        queries: list[str] = await workflow.execute_activity(
            g.plan_research, topic, start_to_close_timeout=g.T)
        notes: list[str] = []
        for q in queries:
            notes += await workflow.execute_activity(g.web_search, q, start_to_close_timeout=g.T,
                                                     retry_policy=g.RETRY)
        summary = await workflow.execute_activity(g.summarize, notes, start_to_close_timeout=g.T)
        return {"summary": summary}


@workflow.defn(name="WriteReport")
class WriteReportWithoutFactCheck:
    """The fact-check child dropped."""

    @workflow.run
    async def run(self, brief: str) -> dict[str, Any]:
        outline: list[str] = await workflow.execute_activity(g.make_outline, brief,
                                                             start_to_close_timeout=g.T)
        me = workflow.info().workflow_id
        sections = await asyncio.gather(*(
            workflow.execute_child_workflow(g.DraftSection.run, h, id=f"{me}.section-{i}")
            for i, h in enumerate(outline)
        ))
        reviewer = await workflow.start_child_workflow(g.Reviewer.run, id=f"{me}.review")
        await reviewer.signal(g.Reviewer.submit, "\n".join(sections))
        return {"review": await reviewer}


@workflow.defn(name="HumanApproval")
class HumanApprovalWithoutCoolOff(g.HumanApproval):
    """The 30-minute cooling-off timer removed."""

    @workflow.run
    async def run(self, task: str) -> dict[str, Any]:
        proposal: str = await workflow.execute_activity(g.draft_proposal, task,
                                                        start_to_close_timeout=g.T)
        self.phase = "awaiting decision"
        try:
            await workflow.wait_condition(lambda: self.approved is not None,
                                          timeout=259200)
        except TimeoutError:
            return {"outcome": "rejected"}
        try:
            await workflow.wait_condition(lambda: self.second_opinion is not None,
                                          timeout=3600)
        except TimeoutError:
            pass
        outcome: str = await workflow.execute_activity(g.execute_plan, proposal, self.feedback,
                                                       start_to_close_timeout=g.T)
        return {"outcome": outcome}


@workflow.defn(name="ChatSession")
class ChatSessionNewModel(g.ChatSession):
    """``ask`` calls a differently named activity."""

    @workflow.update
    async def ask(self, question: str) -> str:
        self.busy += 1
        try:
            answer: str = await workflow.execute_activity("call_model_v2", self.summary,
                                                          question, start_to_close_timeout=g.T)
        finally:
            self.busy -= 1
        self.transcript.append(answer)
        return answer

    @workflow.update_validator(ask)
    def _check_ask(self, question: str) -> None:
        super()._check_ask(question)


@workflow.defn(name="CodingAgent")
class CodingAgentWithoutCleanUp:
    """No clean-up when cancelled."""

    @workflow.run
    async def run(self, task: str) -> str:
        me = workflow.info().workflow_id
        try:
            hint = await workflow.execute_activity(g.ask_slow_oracle, task,
                                                   start_to_close_timeout=0.3,
                                                   retry_policy=g.ONCE)
        except ActivityError:
            hint = "no hint"
        report: str = await workflow.execute_child_workflow(g.TestRunner.run, "unit",
                                                            id=f"{me}.tests")
        return f"{hint}; {report}"


TRIPWIRES = [
    pytest.param("research-durable-agents.run-0", ResearchAgentExtraStep,
                 "ActivityScheduled(seq=1, activity_type='plan_research')",
                 id="activity-inserted"),
    pytest.param("research-durable-agents.run-0", ResearchAgentSequential,
                 "ActivityScheduled(seq=3, activity_type='web_search')",
                 id="parallel-made-sequential"),
    pytest.param("report-q3-churn.run-0", WriteReportWithoutFactCheck,
                 "ChildWorkflowScheduled(seq=5, workflow_type='FactCheck'", id="child-removed"),
    pytest.param("approval-gpu-budget.run-0", HumanApprovalWithoutCoolOff,
                 "TimerStarted(seq=4, duration=1800s)", id="timer-removed"),
    pytest.param("triage-patched.run-0", SupportTriageBeforePatch,
                 "MarkerRecorded(patch 'structured-triage')", id="patch-removed"),
    pytest.param("coding-agent-cancelled.run-0", CodingAgentWithoutCleanUp,
                 "ActivityScheduled(seq=3, activity_type='release_sandbox')",
                 id="clean-up-on-cancel-removed"),
    pytest.param("chat-trip-planning.run-0", ChatSessionNewModel,
                 "ActivityScheduled(seq=1, activity_type='call_model')",
                 id="update-handler-changed"),
    pytest.param("chat-trip-planning.run-1", ChatSessionNewModel,
                 "ActivityScheduled(seq=1, activity_type='call_model')",
                 id="update-handler-changed-continued-run"),
]


@pytest.mark.parametrize(("name", "changed", "recorded"), TRIPWIRES)
def test_tripwire_changed_workflow_code_fails(name: str, changed: type, recorded: str) -> None:
    path = HISTORIES / f"{name}.json"
    assert_replays(g.WORKFLOWS, path)  # the code as recorded replays ...
    with pytest.raises(NondeterminismError) as info:  # ... the changed copy does not
        assert_replays(_workflows_with(changed), path)
    message = str(info.value)
    assert "FAIL" in message and "is not deterministic" in message
    assert f"recorded: {recorded}" in message, message


def test_tripwire_pre_patch_run_still_replays_on_patched_code() -> None:
    """The patch's other half: the old run replays on both the old and the new code."""
    path = HISTORIES / "triage-before-patch.run-0.json"
    assert_replays(g.WORKFLOWS, path)
    assert_replays(_workflows_with(SupportTriageBeforePatch), path)


# ------------------------------------------------------------------ tripwires: changed engine


def test_tripwire_changed_command_numbering_fails_every_history(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An engine that numbered commands differently (here: from 2, by twos) could not
    continue any stored run: every golden history must notice."""
    original = WorkflowInstance.next_seq

    def next_seq(self: WorkflowInstance) -> int:
        original(self)
        return int(original(self))

    monkeypatch.setattr(WorkflowInstance, "next_seq", next_seq)
    for path in FILES:
        with pytest.raises(NondeterminismError, match="is not deterministic at history event"):
            assert_replays(g.WORKFLOWS, path)


@pytest.mark.parametrize(("old", "new"), [
    pytest.param(b'"activity_type":', b'"activity_name":', id="field-renamed"),
    pytest.param(b'"type":"TimerFired"', b'"type":"TimerElapsed"', id="event-renamed"),
])
def test_tripwire_changed_history_format_fails(tmp_path: Path, old: bytes, new: bytes) -> None:
    """A persisted name changed by the engine makes stored histories unreadable: the
    golden files decode only with today's names (simulated by renaming in the file)."""
    source = next(p for p in FILES if old in p.read_bytes())
    changed = tmp_path / source.name
    changed.write_bytes(source.read_bytes().replace(old, new))
    with pytest.raises(InvalidArgumentError, match="not a Perdure history export"):
        WorkflowHistory.from_file(changed)


def test_build_ids_record_the_deploy() -> None:
    old = _history("triage-before-patch.run-0")
    builds = [e.build_id for e in old.events if isinstance(e, WorkflowTaskCompleted)]
    assert builds[0].endswith("-before-patch") and not builds[-1].endswith("-before-patch")
