"""Which exceptions fail a run and which only fail the workflow task (pure runtime)."""

from __future__ import annotations

import msgspec
import pytest

from perdure import workflow
from perdure._errors import ApplicationError
from perdure._failure import failure_from_exception
from perdure.history import (
    UpdateAccepted,
    UpdateCompleted,
    UpdateRequested,
    WorkflowFailed,
    WorkflowStarted,
    WorkflowTaskCompleted,
)
from perdure.workflow._instance import WorkflowInstance

from ._harness import START_TIME, Run, args, new_instance, signal, started


class QuotaExceeded(Exception):
    """A domain error a workflow declares as failing its run."""


@workflow.defn
class Handlers:
    def __init__(self) -> None:
        self.count = 0

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.count >= 10)
        return self.count

    @workflow.signal
    def bump(self, how: str) -> None:
        if how == "bug":
            raise KeyError("typo")
        if how == "refuse":
            raise ApplicationError("refused", type="Refused")
        self.count += 1

    @workflow.update
    def change(self, how: str) -> int:
        if how == "bug":
            raise AttributeError("no such field")
        if how == "refuse":
            raise ApplicationError("not now", type="NotNow")
        self.count += 1
        return self.count


@workflow.defn(failure_exception_types=[QuotaExceeded])
class Declared:
    @workflow.run
    async def run(self, kind: str) -> None:
        if kind == "quota":
            raise QuotaExceeded("over quota")
        raise RuntimeError("a bug")


def test_a_bug_in_a_signal_handler_fails_the_task() -> None:
    run = Run(Handlers)
    run.start()
    with pytest.raises(KeyError, match="typo"):
        run.instance.activate([signal("bump", "bug")], START_TIME + 1)


def test_an_application_error_in_a_signal_handler_fails_the_run() -> None:
    run = Run(Handlers)
    run.start()
    commands = run.activate(signal("bump", "refuse"))
    assert isinstance(commands[-1], WorkflowFailed)
    assert commands[-1].failure.type == "Refused"


def _update(update_id: str, how: str) -> UpdateRequested:
    return UpdateRequested(update_id=update_id, name="change", args=args(how))


def test_a_bug_in_an_update_handler_fails_the_task_an_application_error_the_update() -> None:
    run = Run(Handlers)
    run.start()
    with pytest.raises(AttributeError, match="no such field"):
        run.instance.activate([_update("u1", "bug")], START_TIME + 1)

    run = Run(Handlers)
    run.start()
    commands = run.activate(_update("u2", "refuse"))
    completed = [c for c in commands if isinstance(c, UpdateCompleted)]
    assert completed and completed[0].failure is not None
    assert completed[0].failure.type == "NotNow"
    assert not run.done  # only the update failed


def test_declared_failure_types_fail_the_run_others_the_task() -> None:
    run = Run(Declared)
    commands = run.start("quota")
    assert isinstance(commands[-1], WorkflowFailed)
    assert commands[-1].failure.type.endswith("QuotaExceeded")
    instance = new_instance(Declared)
    with pytest.raises(RuntimeError, match="a bug"):
        instance.activate([started(Declared, "bug")], START_TIME)
    # the worker's list adds to the workflow's
    from perdure.workflow._definition import get_workflow_definition

    definition = get_workflow_definition(Declared)
    assert definition is not None
    lenient = WorkflowInstance(definition, workflow_id="wf", run_id="r",
                               failure_exception_types=[RuntimeError])
    commands = lenient.activate([started(Declared, "bug")], START_TIME)
    assert isinstance(commands[-1], WorkflowFailed)


def test_a_history_an_older_version_failed_on_a_bug_still_replays() -> None:
    """Perdure used to fail a run on any exception; such histories replay as recorded."""
    failure = failure_from_exception(RuntimeError("a bug"))
    history = [
        started(Declared, "bug"),
        WorkflowTaskCompleted(time=START_TIME),
        WorkflowFailed(failure=failure),
    ]
    instance = new_instance(Declared)
    assert instance.replay(history) == []
    assert instance.completed

    # an update failed by a bug, recorded by an older version, replays too
    accepted = UpdateAccepted(update_id="u9", name="change", args=args("bug"))
    old_update = [
        WorkflowStarted(workflow_type="Handlers", task_queue="q", input=args(),
                        started_at=START_TIME),
        WorkflowTaskCompleted(time=START_TIME),
        accepted,
        WorkflowTaskCompleted(time=START_TIME + 1),
        UpdateCompleted(update_id="u9", result=msgspec.Raw(b"null"),
                        failure=failure_from_exception(AttributeError("no such field"))),
    ]
    handlers = new_instance(Handlers)
    assert handlers.replay(old_update) == []

