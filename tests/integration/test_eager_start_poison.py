"""A start behaves the same from any process: never refused because of what the
workflow's own first activation does.

A start from the process of a worker that serves the queue runs the first activation
itself and commits it with the start (eager start). If that fused commit fails for a
reason of the activation's, the start is committed alone, as from any other process,
and the first workflow task fails (visibly, and retried) the ordinary way. The poison
here is real: a trigger in the test's database refuses one activity type, as a database
refuses a value it cannot store."""

from __future__ import annotations

import sqlite3
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from perdure import Client, WorkflowStatus, activity, workflow
from perdure.testing import WorkflowEnvironment

from ._helpers import wait_until

TQ = "eager-poison"


@activity.defn(name="poison")
async def poison() -> str:
    return "the database took it"


@workflow.defn
class FirstStepPoisoned:
    @workflow.run
    async def run(self) -> str:
        return str(await workflow.execute_activity(poison, start_to_close_timeout=10))


def _install_trigger(url: str) -> None:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.split("://", 1)[1][1:])
        with conn:
            conn.execute(
                "CREATE TRIGGER poison BEFORE INSERT ON activity_tasks "
                "WHEN NEW.activity_type = 'poison' BEGIN "
                "SELECT RAISE(ABORT, 'poisoned activity type'); END")
        conn.close()
        return
    import psycopg

    parts = urlsplit(url)
    schema = dict(parse_qsl(parts.query))["schema"]
    with psycopg.connect(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
                         autocommit=True) as conn:
        conn.execute(
            f'CREATE FUNCTION "{schema}".poison() RETURNS trigger AS $$ BEGIN '
            "IF NEW.activity_type = 'poison' THEN RAISE EXCEPTION 'poisoned activity type'; "
            "END IF; RETURN NEW; END $$ LANGUAGE plpgsql")
        conn.execute(f'CREATE TRIGGER poison BEFORE INSERT ON "{schema}".activity_tasks '
                     f'FOR EACH ROW EXECUTE FUNCTION "{schema}".poison()')


def _drop_trigger(url: str) -> None:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.split("://", 1)[1][1:])
        with conn:
            conn.execute("DROP TRIGGER poison")
        conn.close()
        return
    import psycopg

    parts = urlsplit(url)
    schema = dict(parse_qsl(parts.query))["schema"]
    with psycopg.connect(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
                         autocommit=True) as conn:
        conn.execute(f'DROP TRIGGER poison ON "{schema}".activity_tasks')


async def _failed_task(client: Client, workflow_id: str) -> Any:
    description = await client.get_workflow_handle(workflow_id).describe()
    return description if description.last_workflow_task_failure else None


async def test_a_poisoned_first_activation_starts_the_run_from_any_process(
    real_env: WorkflowEnvironment, database_url: str,
) -> None:
    _install_trigger(database_url)
    other = await Client.connect(database_url, clock=real_env.clock)
    try:
        async with real_env.worker(task_queue=TQ, workflows=[FirstStepPoisoned],
                                   activities=[poison]) as worker:
            # from the worker's own client: the eager path, which runs the activation first
            eager = await real_env.client.start_workflow(FirstStepPoisoned.run, id="eager",
                                                         task_queue=TQ)
            # from another client: the ordinary start
            plain = await other.start_workflow(FirstStepPoisoned.run, id="plain",
                                               task_queue=TQ)
            for workflow_id in ("eager", "plain"):
                description = await wait_until(
                    lambda w=workflow_id: _failed_task(real_env.client, w),  # type: ignore[misc]
                    what=f"{workflow_id}'s first workflow task to fail", timeout=10)
                # started, running, and the reason is shown: the same from both processes
                assert description.status == WorkflowStatus.RUNNING
                assert "poisoned activity type" in (description.last_workflow_task_failure
                                                    or "")
                assert description.history_length == 1
            assert worker.stats["eager_starts"] == 0  # nothing was committed eagerly
            # a fix (here: the database accepts the value again) resumes both runs
            _drop_trigger(database_url)
            assert await eager.result(timeout=30) == "the database took it"
            assert await plain.result(timeout=30) == "the database took it"
    finally:
        await other.close()
