"""A replayed child is the one history names, however its id is derived now."""

from __future__ import annotations

from perdure import workflow

from ._harness import Run

CHILD_ID_FORMAT = {"format": "old/{name}"}


@workflow.defn
class Child:
    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


@workflow.defn
class Parent:
    def __init__(self) -> None:
        self.child_id = ""

    @workflow.run
    async def run(self, name: str) -> None:
        child = await workflow.start_child_workflow(
            Child.run, id=CHILD_ID_FORMAT["format"].format(name=name))
        self.child_id = child.id
        await workflow.wait_condition(lambda: False)


def test_a_child_keeps_the_id_history_gave_it_when_the_derivation_changes() -> None:
    """Replay does not compare child ids (a deploy may change how they are derived, as
    hashing model-given ids did); the replayed child is the one history names."""
    from perdure.history import ChildWorkflowScheduled, ChildWorkflowStarted

    run = Run(Parent)
    commands = run.start("kanban")
    scheduled = [c for c in commands if isinstance(c, ChildWorkflowScheduled)]
    assert scheduled[0].workflow_id == "old/kanban"
    run.activate(ChildWorkflowStarted(seq=scheduled[0].seq, run_id="child-run"))
    CHILD_ID_FORMAT["format"] = "new/{name}"
    try:
        instance = run.replay()
        assert instance.workflow_object.child_id == "old/kanban"
    finally:
        CHILD_ID_FORMAT["format"] = "old/{name}"
