"""Bad input: each mistake gives a typed error naming the thing and the fix, and
none of them corrupts the stored workflows."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest

from perdure import (
    ApplicationError,
    Client,
    ConfigurationError,
    DatabaseUnavailableError,
    InvalidArgumentError,
    InvalidDatabaseURLError,
    PayloadConverter,
    PayloadEncodingError,
    PayloadError,
    PayloadTooLargeError,
    PerdureError,
    SchemaVersionError,
    UnknownWorkflowTypeError,
    Worker,
    WorkflowFailureError,
    WorkflowNotFoundError,
    WorkflowStatus,
    workflow,
)
from perdure._converter import DEFAULT_MAX_PAYLOAD_BYTES
from perdure.testing import WorkflowEnvironment
from tests._databases import require_postgres

from ._helpers import wait_until

TQ = "bad-input"


@workflow.defn
class Greeter:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.done = False

    @workflow.run
    async def run(self, greeting: str, times: int) -> str:
        await workflow.wait_condition(lambda: self.done)
        return " ".join([greeting] * times + self.names)

    @workflow.signal
    def add(self, name: str) -> None:
        self.names.append(name)

    @workflow.signal
    def finish(self) -> None:
        self.done = True


@workflow.defn(name="LateType")
class LateType:
    @workflow.run
    async def run(self, value: int) -> int:
        await workflow.sleep(timedelta(minutes=5))
        return value * 2


@workflow.defn
class HugeResult:
    @workflow.run
    async def run(self, size: int) -> str:
        return "x" * size


class NotAWorkflow:
    async def run(self) -> str:
        return "never"


class Unserializable:
    def __repr__(self) -> str:
        return "<Unserializable>"


async def _existing_workflow(env: WorkflowEnvironment, workflow_id: str) -> object:
    """A running workflow that must survive the bad input of the test."""
    handle = await env.client.start_workflow(Greeter.run, "hi", 2, id=workflow_id,
                                             task_queue=TQ)
    await handle.signal(Greeter.add, "bob")
    return handle


async def _still_works(env: WorkflowEnvironment, handle: object) -> None:
    """The earlier workflow still completes, with all its recorded input."""
    await handle.signal(Greeter.finish)  # type: ignore[attr-defined]
    async with env.worker(task_queue=TQ, workflows=[Greeter]):
        assert await handle.result(timeout=10) == "hi hi bob"  # type: ignore[attr-defined]


# ---------------------------------------------------------------- workflow types


async def test_unknown_workflow_type_is_retried_until_a_worker_has_it(
    env: WorkflowEnvironment,
) -> None:
    handle = await env.client.start_workflow("LateType", 21, id="late-type", task_queue=TQ)
    async with env.worker(task_queue=TQ, workflows=[Greeter]):
        description = await wait_until(
            lambda: _task_failure(handle), what="a recorded workflow task failure"
        )
        failure = description.last_workflow_task_failure
        assert "UnknownWorkflowTypeError" in failure
        assert "'LateType'" in failure
        assert "Greeter" in failure  # what the worker does have
        assert "Worker(workflows=[...])" in failure  # the fix
        assert description.status == WorkflowStatus.RUNNING
        assert description.workflow_task_attempt is not None
        assert description.workflow_task_attempt >= 1
        assert description.history_length == 1
    async with env.worker(task_queue=TQ, workflows=[LateType]):
        assert await handle.result(timeout=10) == 42
    description = await handle.describe()
    assert description.status == WorkflowStatus.COMPLETED
    assert description.last_workflow_task_failure is None


async def _task_failure(handle: object) -> object:
    description = await handle.describe()  # type: ignore[attr-defined]
    return description if description.last_workflow_task_failure else None


async def test_undecorated_class_is_rejected(env: WorkflowEnvironment) -> None:
    existing = await _existing_workflow(env, "survivor-undecorated")
    with pytest.raises(UnknownWorkflowTypeError) as info:
        await env.client.start_workflow(NotAWorkflow, id="undecorated", task_queue=TQ)
    assert "NotAWorkflow" in str(info.value)
    assert "@workflow.defn" in str(info.value)
    with pytest.raises(UnknownWorkflowTypeError, match=r"NotAWorkflow\.run"):
        await env.client.start_workflow(NotAWorkflow.run, id="undecorated", task_queue=TQ)
    with pytest.raises(ConfigurationError, match=r"@workflow\.defn"):
        Worker(env.client, task_queue=TQ, workflows=[NotAWorkflow])
    with pytest.raises(WorkflowNotFoundError):
        await env.client.get_workflow_handle("undecorated").describe()
    await _still_works(env, existing)


# ---------------------------------------------------------------- arguments


async def test_wrong_argument_count(env: WorkflowEnvironment) -> None:
    existing = await _existing_workflow(env, "survivor-args")
    with pytest.raises(InvalidArgumentError) as missing:
        await env.client.start_workflow(Greeter.run, "hi", id="args-1", task_queue=TQ)
    message = str(missing.value)
    assert "'Greeter'" in message
    assert "times" in message  # the missing parameter
    assert "Greeter.run(self, greeting:" in message  # the signature to match
    with pytest.raises(InvalidArgumentError) as extra:
        await env.client.start_workflow(Greeter.run, "hi", 1, 2, id="args-2", task_queue=TQ)
    assert "'Greeter'" in str(extra.value)
    assert "too many" in str(extra.value)
    # it is also a ValueError, for callers that catch the standard type
    with pytest.raises(ValueError):
        await env.client.start_workflow(Greeter.run, id="args-3", task_queue=TQ)
    with pytest.raises(InvalidArgumentError, match="id"):
        await env.client.start_workflow(Greeter.run, "hi", 1, id="", task_queue=TQ)
    with pytest.raises(InvalidArgumentError, match="task_queue"):
        await env.client.start_workflow(Greeter.run, "hi", 1, id="args-4", task_queue="")
    for workflow_id in ("args-1", "args-2", "args-3", "args-4"):
        with pytest.raises(WorkflowNotFoundError):
            await env.client.get_workflow_handle(workflow_id).describe()
    assert {d.workflow_id for d in await env.client.list_workflows()} == {"survivor-args"}
    await _still_works(env, existing)


async def test_unserializable_argument(env: WorkflowEnvironment) -> None:
    existing = await _existing_workflow(env, "survivor-encode")
    with pytest.raises(PayloadEncodingError) as info:
        await env.client.start_workflow(Greeter.run, "hi", Unserializable(), id="enc-1",
                                        task_queue=TQ)
    message = str(info.value)
    assert "argument 2" in message
    assert "'Greeter'" in message
    assert "Unserializable" in message
    assert "JSON" in message
    assert isinstance(info.value, PayloadError)
    with pytest.raises(WorkflowNotFoundError):
        await env.client.get_workflow_handle("enc-1").describe()

    # a signal whose argument cannot be encoded is refused before it reaches the store
    with pytest.raises(PayloadEncodingError) as signal_info:
        await existing.signal(Greeter.add, Unserializable())  # type: ignore[attr-defined]
    assert "argument 1 of signal 'add'" in str(signal_info.value)
    assert "Unserializable" in str(signal_info.value)
    assert (await existing.describe()).pending_events == 1  # type: ignore[attr-defined]
    await _still_works(env, existing)


async def test_argument_with_wrong_type_for_workflow_started_by_name(
    env: WorkflowEnvironment,
) -> None:
    """A type name skips client-side checks; the worker fails the run with a named error
    (retrying cannot make the stored input fit the signature)."""
    handle = await env.client.start_workflow("Greeter", "hi", "not a number", id="typed",
                                             task_queue=TQ)
    async with env.worker(task_queue=TQ, workflows=[Greeter]):
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result(timeout=10)
    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type.endswith("PayloadDecodingError")
    assert "argument 2" in cause.message and "'Greeter'" in cause.message
    assert (await handle.describe()).status == WorkflowStatus.FAILED


# ---------------------------------------------------------------- payload size


async def test_default_payload_limit(env: WorkflowEnvironment) -> None:
    assert env.client.converter.max_payload_bytes == DEFAULT_MAX_PAYLOAD_BYTES == 2 * 1024 * 1024
    existing = await _existing_workflow(env, "survivor-large")
    big = "x" * (DEFAULT_MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(PayloadTooLargeError) as info:
        await env.client.start_workflow(Greeter.run, big, 1, id="large-1", task_queue=TQ)
    message = str(info.value)
    assert "argument 1" in message
    assert str(DEFAULT_MAX_PAYLOAD_BYTES) in message
    assert "max_payload_bytes" in message
    with pytest.raises(PayloadTooLargeError, match="signal 'add'"):
        await existing.signal(Greeter.add, big)  # type: ignore[attr-defined]
    with pytest.raises(WorkflowNotFoundError):
        await env.client.get_workflow_handle("large-1").describe()
    # just under the limit is fine
    fits = "y" * (DEFAULT_MAX_PAYLOAD_BYTES - 100)
    roomy = await env.client.start_workflow(Greeter.run, fits, 1, id="large-ok", task_queue=TQ)
    await roomy.signal(Greeter.finish)
    async with env.worker(task_queue=TQ, workflows=[Greeter]):
        assert await roomy.result(timeout=10) == fits
    await _still_works(env, existing)


async def test_configured_payload_limit(env: WorkflowEnvironment) -> None:
    existing = await _existing_workflow(env, "survivor-small")
    small = await Client.connect(env.client.store.url, clock=env.clock,
                                 converter=PayloadConverter(max_payload_bytes=100))
    try:
        with pytest.raises(PayloadTooLargeError) as info:
            await small.start_workflow(Greeter.run, "z" * 200, 1, id="small-1", task_queue=TQ)
        assert "limit of 100 bytes" in str(info.value)
        other = small.get_workflow_handle("survivor-small")
        with pytest.raises(PayloadTooLargeError):
            await other.signal(Greeter.add, "w" * 200)
        await other.signal(Greeter.add, "carol")
    finally:
        await small.close()
    await existing.signal(Greeter.finish)  # type: ignore[attr-defined]
    async with env.worker(task_queue=TQ, workflows=[Greeter]):
        assert await existing.result(timeout=10) == "hi hi bob carol"  # type: ignore[attr-defined]


async def test_too_large_workflow_result_stalls_the_task_until_a_fix(
    env: WorkflowEnvironment,
) -> None:
    """A result the code cannot store is a bug in the code, not a verdict on the run: the
    workflow task fails (visibly) and is retried, and a deploy that fixes it finishes
    the run (here the fix is a larger payload limit)."""
    small = await Client.connect(env.client.store.url, clock=env.clock,
                                 converter=PayloadConverter(max_payload_bytes=1000))
    try:
        async with Worker(small, task_queue=TQ, workflows=[HugeResult]):
            ok = await small.start_workflow(HugeResult.run, 10, id="result-ok", task_queue=TQ)
            assert await ok.result(timeout=10) == "x" * 10
            await small.start_workflow(HugeResult.run, 5000, id="result-big",
                                                task_queue=TQ)
            description = await wait_until(
                lambda: _failed_task(small.get_workflow_handle("result-big")),
                what="the workflow task to fail")
    finally:
        await small.close()
    assert description.status == WorkflowStatus.RUNNING
    failure = description.last_workflow_task_failure or ""
    assert "PayloadTooLargeError" in failure
    assert "result of workflow 'HugeResult'" in failure
    async with env.worker(task_queue=TQ, workflows=[HugeResult]):
        assert await env.client.get_workflow_handle("result-big").result(timeout=30) == (
            "x" * 5000)


async def _failed_task(handle: Any) -> Any:
    description = await handle.describe()
    return description if description.last_workflow_task_failure else None


# ---------------------------------------------------------------- database URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nonsense", "malformed database URL 'nonsense'"),
        ("sqlite://relative", "three slashes"),
        ("sqlite://", "three slashes"),
        ("mysql://x", "unsupported database URL scheme 'mysql'"),
        ("sqlite:////no/such/directory/perdure.db", "'/no/such/directory', which does not exist"),
    ],
)
async def test_malformed_database_urls(
    env: WorkflowEnvironment, url: str, expected: str
) -> None:
    existing = await _existing_workflow(env, "survivor-url")
    with pytest.raises(InvalidDatabaseURLError) as info:
        await Client.connect(url)
    message = str(info.value)
    assert expected in message
    assert "sqlite:///" in message  # an example of a good URL: the fix
    assert isinstance(info.value, ConfigurationError)
    assert isinstance(info.value, PerdureError)
    await _still_works(env, existing)


async def test_database_url_from_environment_variable(
    env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERDURE_DATABASE_URL", "nonsense-from-env")
    with pytest.raises(InvalidDatabaseURLError, match="nonsense-from-env"):
        await Client.connect()


async def test_second_client_on_same_database_sees_workflows(env: WorkflowEnvironment) -> None:
    existing = await _existing_workflow(env, "shared")
    other = await Client.connect(env.client.store.url, clock=env.clock)
    try:
        description = await other.get_workflow_handle("shared").describe()
        assert description.status == WorkflowStatus.RUNNING
        assert description.pending_events == 1
        await other.get_workflow_handle("shared").signal(Greeter.add, "dave")
    finally:
        await other.close()
    await existing.signal(Greeter.finish)  # type: ignore[attr-defined]
    async with env.worker(task_queue=TQ, workflows=[Greeter]):
        assert await existing.result(timeout=10) == "hi hi bob dave"  # type: ignore[attr-defined]


async def test_sqlite_url_options(tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = await Client.connect(f"sqlite:///{tmp_path / 'opts.db'}?synchronous=normal")
    try:
        assert client.store._writer._synchronous == "NORMAL"  # type: ignore[attr-defined]
    finally:
        await client.close()
    with pytest.raises(InvalidDatabaseURLError, match="unknown option 'journal'"):
        await Client.connect(f"sqlite:///{tmp_path / 'opts.db'}?journal=off")
    with pytest.raises(InvalidDatabaseURLError, match="not one of"):
        await Client.connect(f"sqlite:///{tmp_path / 'opts.db'}?synchronous=sometimes")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres@127.0.0.1:5432", "names no database"),
        ("postgresql://postgres@127.0.0.1:5432/", "names no database"),
        ("postgresql://postgres@127.0.0.1:99999/test", "malformed PostgreSQL URL"),
        ("postgresql://postgres@127.0.0.1/test?pool_size=0", "pool_size='0'"),
        ("postgresql://postgres@127.0.0.1/test?pool_size=many", "whole number from 1 to 64"),
        ("postgresql://postgres@127.0.0.1/test?schema=a;drop", "not a plain identifier"),
        ("postgresql://postgres@127.0.0.1/test?schema=1abc", "not a plain identifier"),
    ],
)
async def test_malformed_postgres_urls(url: str, expected: str) -> None:
    with pytest.raises(InvalidDatabaseURLError, match=re.escape(expected)):
        await Client.connect(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres@127.0.0.1:1/test", "127.0.0.1:1/test"),
        ("postgresql://postgres@127.0.0.1:5432/perdure_no_such_db", "does not exist"),
    ],
)
async def test_unreachable_postgres_is_a_clear_error(url: str, expected: str) -> None:
    require_postgres()
    with pytest.raises(DatabaseUnavailableError) as info:
        await Client.connect(url + "?connect_timeout=5")
    message = str(info.value)
    assert expected in message
    assert "check that the server runs" in message
    assert isinstance(info.value, PerdureError)


async def test_connect_without_migrating_refuses_an_unmigrated_database(
    database_url: str,
) -> None:
    with pytest.raises(SchemaVersionError, match="perdure db migrate"):
        await Client.connect(database_url, migrate=False)
    await (await Client.connect(database_url)).close()  # migrates
    client = await Client.connect(database_url, migrate=False)
    await client.close()
