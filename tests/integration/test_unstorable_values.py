"""Ids, names and search attributes follow one rule on both backends: what PostgreSQL can
store and index (no NUL, valid UTF-8, at most 1,000 bytes). The client refuses the rest
with InvalidArgumentError naming the field, and workflow code gets the same error at the
call, where it can catch it: nothing unstorable reaches a transaction, where it would
fail the workflow task on every retry (the run wedged for ever)."""

from __future__ import annotations

from typing import Any

import pytest

from perdure import (
    ConfigurationError,
    InvalidArgumentError,
    Worker,
    WorkflowNotFoundError,
    WorkflowStatus,
    activity,
    workflow,
)
from perdure.agents import Agent, AgentWorker, ScriptedModel
from perdure.history import (
    ActivityScheduled,
    ChildWorkflowScheduled,
    ExternalSignalSent,
    SearchAttributesUpserted,
    WorkflowContinuedAsNew,
)
from perdure.testing import WorkflowEnvironment
from tests._digest import database_digest

from ._helpers import wait_until

TQ = "unstorable"
NUL = "tool\x00call"
SURROGATE = "tool\ud800call"
TOO_LONG = "é" * 501  # 1,002 bytes in UTF-8
BAD_VALUES = {"NUL": NUL, "surrogate": SURROGATE, "too long": TOO_LONG}


@workflow.defn
class Inbox:
    def __init__(self) -> None:
        self.seen: list[str] = []

    @workflow.run
    async def run(self) -> list[str]:
        await workflow.wait_condition(lambda: "stop" in self.seen)
        return self.seen

    @workflow.signal
    def stop(self) -> None:
        self.seen.append("stop")

    @workflow.query
    def state(self) -> list[str]:
        return self.seen

    @workflow.update
    def note(self, text: str) -> str:
        self.seen.append(text)
        return text


@activity.defn
async def echo(text: str) -> str:
    return text


@workflow.defn
class Child:
    @workflow.run
    async def run(self) -> str:
        return "child ran"


@workflow.defn
class Agentish:
    """Issues every command that takes an id or a name, with an untrusted value (as a
    model's tool-call id would be), and reports what each call raised."""

    @workflow.run
    async def run(self, kind: str) -> list[str]:
        bad = BAD_VALUES[kind]  # a surrogate cannot even be an argument (not JSON)
        outcomes: list[str] = []

        async def attempt(what: str, call: Any) -> None:
            try:
                await call()
            except InvalidArgumentError as exc:
                outcomes.append(f"{what}: InvalidArgumentError: {exc}")
            else:
                outcomes.append(f"{what}: accepted")

        async def child_id() -> None:
            await workflow.execute_child_workflow(Child.run, id=f"sub/{bad}")

        async def child_queue() -> None:
            await workflow.execute_child_workflow(Child.run, task_queue=bad)

        async def upsert() -> None:
            workflow.upsert_search_attributes({"tool_call": bad})

        async def signal_id() -> None:
            await workflow.get_external_workflow_handle(bad).signal("ping")

        async def signal_name() -> None:
            await workflow.get_external_workflow_handle("elsewhere").signal(bad)

        async def activity_queue() -> None:
            await workflow.execute_activity(echo, "x", task_queue=bad,
                                            start_to_close_timeout=5)

        async def activity_type() -> None:
            await workflow.execute_activity(bad, "x", start_to_close_timeout=5)

        async def publish() -> None:
            workflow.publish({"event": 1}, workflow_id=bad)

        async def continue_queue() -> None:
            workflow.continue_as_new(bad, task_queue=bad)

        for what, call in (("child id", child_id), ("child task_queue", child_queue),
                           ("search attribute", upsert), ("external id", signal_id),
                           ("signal name", signal_name), ("activity task_queue", activity_queue),
                           ("activity type", activity_type), ("publish", publish),
                           ("continue_as_new task_queue", continue_queue)):
            await attempt(what, call)
        # the run is healthy: a storable child still starts and finishes
        outcomes.append(await workflow.execute_child_workflow(Child.run, id=f"ok-{kind}"))
        return outcomes


@workflow.defn
class Careless:
    """Builds a child id from untrusted text and does not catch the refusal."""

    @workflow.run
    async def run(self, bad: str) -> str:
        return str(await workflow.execute_child_workflow(Child.run, id=f"sub/{bad}"))


@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
async def test_client_refuses_unstorable_ids_and_names(
    env: WorkflowEnvironment, kind: str, database_url: str,
) -> None:
    bad = BAD_VALUES[kind]
    client = env.client
    running = await client.start_workflow(Inbox.run, id="inbox", task_queue=TQ)
    before = database_digest(database_url)
    calls: dict[str, Any] = {
        "workflow id": lambda: client.start_workflow(Inbox.run, id=bad, task_queue=TQ),
        "task_queue": lambda: client.start_workflow(Inbox.run, id="q", task_queue=bad),
        "workflow type": lambda: client.start_workflow(bad, id="t", task_queue=TQ),
        "signal name": lambda: running.signal(bad),
        "query name": lambda: running.query(bad),
        "update name": lambda: running.execute_update(bad, "x"),
        "update_id": lambda: running.execute_update(Inbox.note, "x", update_id=bad),
        "search attribute": lambda: client.start_workflow(
            Inbox.run, id="sa", task_queue=TQ, search_attributes={"k": bad}),
        "keyword list": lambda: client.start_workflow(
            Inbox.run, id="kw", task_queue=TQ, search_attributes={"k": ["ok", bad]}),
        "workflow_id": lambda: client.get_workflow_handle(bad).describe(),
        "run_id": lambda: client.get_workflow_handle("inbox", run_id=bad).describe(),
        "workflow_type": lambda: client.list_workflows(workflow_type=bad),
        "parent_workflow_id": lambda: client.list_workflows(parent_workflow_id=bad),
        "fork's new workflow id": lambda: running.fork(bad, to_event=1),
        "signal_with_start": lambda: client.signal_with_start(Inbox.run, bad, (), id="sws",
                                                              task_queue=TQ),
    }
    for field, call in calls.items():
        with pytest.raises(InvalidArgumentError) as info:
            await call()
        message = str(info.value)
        assert kind.split()[0].lower() in message.lower() or "bytes" in message, (field, message)
        assert "\x00" not in message  # the message itself can be stored and logged
        assert database_digest(database_url) == before, field
    for workflow_id in ("q", "t", "sa", "kw", "sws"):
        with pytest.raises(WorkflowNotFoundError):
            await client.get_workflow_handle(workflow_id).describe()
    # the rule is exactly the limit: 1,000 bytes is fine
    fine = await client.start_workflow(Inbox.run, id="é" * 500, task_queue="q" * 1000)
    assert (await fine.describe()).status == WorkflowStatus.RUNNING


@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
async def test_workflow_code_gets_the_refusal_at_the_call(
    env: WorkflowEnvironment, kind: str,
) -> None:
    async with env.worker(task_queue=TQ, workflows=[Agentish, Child], activities=[echo]):
        handle = await env.client.start_workflow(Agentish.run, kind, id="agentish",
                                                 task_queue=TQ)
        outcomes = await handle.result(timeout=30)
    assert outcomes[-1] == "child ran"
    refused = outcomes[:-1]
    assert len(refused) == 9
    for outcome in refused:
        assert ": InvalidArgumentError: " in outcome, outcome
    assert "child workflow id" in refused[0]
    assert "search attribute 'tool_call'" in refused[2]
    # no command was recorded for any refused call
    events = (await handle.fetch_history()).events
    assert sum(isinstance(e, ChildWorkflowScheduled) for e in events) == 1
    assert not any(isinstance(e, ActivityScheduled | ExternalSignalSent
                              | SearchAttributesUpserted | WorkflowContinuedAsNew)
                   for e in events)


async def test_an_uncaught_refusal_fails_the_task_visibly_and_a_fix_resumes(
    env: WorkflowEnvironment,
) -> None:
    """Not caught, the refusal is a bug like any other: the workflow task fails, named,
    and the run waits for a fixed deploy instead of closing on a typo."""
    async with env.worker(task_queue=TQ, workflows=[Careless, Child]):
        handle = await env.client.start_workflow(Careless.run, NUL, id="careless",
                                                 task_queue=TQ)

        async def failed() -> Any:
            description = await handle.describe()
            return description if description.last_workflow_task_failure else None

        description = await wait_until(failed, what="the workflow task to fail")
    failure = description.last_workflow_task_failure or ""
    assert "InvalidArgumentError" in failure and "child workflow id" in failure
    assert "NUL" in failure
    assert description.status == WorkflowStatus.RUNNING
    assert description.history_length == 1  # nothing of the activation was recorded


async def test_subagent_ids_never_carry_model_output(env: WorkflowEnvironment) -> None:
    """A model's tool-call id (a NUL, a megabyte) reaches a sub-agent's workflow id only
    through a hash: the sub-agent runs, and the id is storable and short."""
    hostile = "call\x00" + "z" * 5000
    helper = Agent(name="helper", instructions="help", model=ScriptedModel(["helped"]))
    lead = Agent(name="lead", instructions="lead", subagents=[helper],
                 model=ScriptedModel([[ScriptedModel.call("helper", id=hostile, task="go")],
                                      "done"]))
    async with AgentWorker(env.client, agents=[lead]):
        handle = await env.client.start_agent(lead, "work", id="lead-hostile")
        assert await handle.result(timeout=30) == "done"
    (child,) = await env.client.list_workflows(parent_workflow_id="lead-hostile")
    assert child.status == WorkflowStatus.COMPLETED
    assert "\x00" not in child.workflow_id and "zzz" not in child.workflow_id
    assert len(child.workflow_id.encode()) <= 1000
    assert child.workflow_id.startswith("lead-hostile/helper/")


@workflow.defn(name="bad\x00name")
class BadlyNamed:
    @workflow.run
    async def run(self) -> None:
        pass


async def test_a_worker_refuses_names_it_could_not_store(env: WorkflowEnvironment) -> None:
    """A worker's own names (queues, registered types, build id) follow the rule too: a
    worker that registered one would fail every commit."""
    for options, words in (({"task_queue": NUL, "workflows": [Child]}, "task queue"),
                           ({"task_queue": TQ, "workflows": [BadlyNamed]}, "workflow name"),
                           ({"task_queue": TQ, "workflows": [Child], "build_id": TOO_LONG},
                            "build_id")):
        with pytest.raises(ConfigurationError, match=words):
            Worker(env.client, **options)
