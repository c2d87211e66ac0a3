"""The store conformance suite: every backend must pass it (SQLite and PostgreSQL).

It drives a store directly, the way the engine and workers do, to pin the
guarantees the rest of Perdure relies on: leases, optimistic concurrency,
rejection of late completions, reclaiming a dead worker's tasks, group commit.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest

from perdure import (
    InvalidArgumentError,
    RetryPolicy,
    SchemaVersionError,
    WorkflowAlreadyStartedError,
    WorkflowNotFoundError,
)
from perdure.engine import activity_completed_outcome, activity_timed_out_outcome
from perdure.history import (
    ActivityScheduled,
    SignalReceived,
    WorkflowStarted,
    decode_event,
    encode_event,
)
from perdure.store import WorkflowStore, open_store
from perdure.store._records import NewActivityTask, StartWorkflowRecord, WorkflowTaskCompletion


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[WorkflowStore]:
    s = open_store(database_url)
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


async def _start(store: WorkflowStore, workflow_id: str, policy: str = "allow_duplicate") -> str:
    now = store.clock.now()
    started = WorkflowStarted(workflow_type="T", task_queue="q", input=msgspec.Raw(b"[]"),
                              started_at=now)
    return await store.start_workflow(StartWorkflowRecord(
        workflow_id=workflow_id, run_id=str(uuid.uuid4()), workflow_type="T", task_queue="q",
        input=b"[]", started_event=encode_event(started), execution_timeout=None,
        id_reuse_policy=policy, now=now,
    ))


def _completion(claim_id: tuple[str, str], worker: str, length: int, *, activity: bool = False,
                close: bool = False) -> WorkflowTaskCompletion:
    events: list[tuple[str, bytes]] = [("WorkflowTaskCompleted", b'{"type":"WorkflowTaskCompleted","time":1.0}')]
    new = []
    if activity:
        scheduled = ActivityScheduled(seq=1, activity_type="a", task_queue="q",
                                      input=msgspec.Raw(b"[]"), activity_id="1")
        events.append(("ActivityScheduled", encode_event(scheduled)))
        new.append(NewActivityTask(seq=1, activity_type="a", task_queue="q", input=b"[]",
                                   start_to_close_timeout=None, schedule_to_close_timeout=None,
                                   schedule_to_start_timeout=None, heartbeat_timeout=None,
                                   retry_policy=msgspec.json.encode(RetryPolicy().to_dict())))
    return WorkflowTaskCompletion(
        workflow_id=claim_id[0], run_id=claim_id[1], worker_id=worker,
        expected_history_length=length, inbox_upto=0, events=events, new_activities=new,
        cancel_activities=[], new_timers=[], cancel_timers=[],
        close_status="completed" if close else None, close_result=b"1" if close else None,
    )


def _bump_schema_version(database_url: str) -> None:
    """What a newer Perdure would leave behind: a higher schema version."""
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.split(":///", 1)[1]) as conn:
            conn.execute("UPDATE perdure_schema SET version = version + 1")
        return
    import psycopg

    base, schema = database_url.split("?schema=")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'UPDATE "{schema}".perdure_schema SET version = version + 1')


async def test_migrate_is_idempotent_and_refuses_newer_schema(database_url: str) -> None:
    store = open_store(database_url)
    await store.migrate()
    await store.migrate()
    await store.close()
    _bump_schema_version(database_url)
    newer = open_store(database_url)
    with pytest.raises(SchemaVersionError, match="upgrade Perdure"):
        await newer.migrate()
    await newer.close()


async def test_running_id_is_never_reused(store: WorkflowStore) -> None:
    await _start(store, "w")
    with pytest.raises(WorkflowAlreadyStartedError, match="already running"):
        await _start(store, "w")


async def test_a_claimed_task_is_not_claimed_twice(store: WorkflowStore) -> None:
    run_id = await _start(store, "w")
    first = await store.claim_workflow_tasks("A", ["q"], 10, lease=60)
    second = await store.claim_workflow_tasks("B", ["q"], 10, lease=60)
    assert [c.run_id for c in first] == [run_id]
    assert second == []
    # an expired lease makes it claimable again
    await store.fail_workflow_task("w", run_id, "A", "boom", retry_at=0)
    third = await store.claim_workflow_tasks("B", ["q"], 10, lease=60)
    assert [c.run_id for c in third] == [run_id]
    assert third[0].attempt == 2


async def test_stale_completion_is_rejected(store: WorkflowStore) -> None:
    run_id = await _start(store, "w")
    [claim] = await store.claim_workflow_tasks("A", ["q"], 10, lease=60)
    assert claim.history_length == 1
    assert not await store.complete_workflow_task(_completion(("w", run_id), "B", 1))
    assert not await store.complete_workflow_task(_completion(("w", run_id), "A", 5))
    # a stale holder hands the task back at once instead of sitting on its lease
    [again] = await store.claim_workflow_tasks("B", ["q"], 10, lease=60)
    assert not await store.complete_workflow_task(_completion(("w", run_id), "A", 1))
    assert await store.complete_workflow_task(_completion(("w", run_id), "B", again.history_length))
    history = await store.get_history("w", run_id)
    assert [t for _, t, _ in history] == ["WorkflowStarted", "WorkflowTaskCompleted"]


async def test_inbound_events_arriving_during_a_task_are_kept(store: WorkflowStore) -> None:
    run_id = await _start(store, "w")
    [claim] = await store.claim_workflow_tasks("A", ["q"], 10, lease=60)
    signal = encode_event(SignalReceived(name="s", args=msgspec.Raw(b"[]")))
    await store.deliver_event("w", None, signal)  # arrives while A holds the task
    assert await store.complete_workflow_task(_completion(("w", run_id), "A", claim.history_length))
    [again] = await store.claim_workflow_tasks("A", ["q"], 10, lease=60)
    assert [data for _, data in again.inbox] == [signal]


async def test_late_activity_completion_is_rejected(store: WorkflowStore) -> None:
    run_id = await _start(store, "w")
    [claim] = await store.claim_workflow_tasks("A", ["q"], 10, lease=60)
    assert await store.complete_workflow_task(
        _completion(("w", run_id), "A", claim.history_length, activity=True)
    )
    [task] = await store.claim_activity_tasks("A", ["q"], 10)
    decide = activity_completed_outcome(1, 1, b"1")
    # wrong attempt, wrong owner: rejected
    assert (await store.finish_activity_attempt("w", run_id, 1, 2, "A", decide,
                                                claim_workflow_task=False, lease=60))[0] is False
    assert (await store.finish_activity_attempt("w", run_id, 1, 1, "B", decide,
                                                claim_workflow_task=False, lease=60))[0] is False
    accepted, wf_claim = await store.finish_activity_attempt(
        "w", run_id, 1, task.attempt, "A", decide, claim_workflow_task=True, lease=60
    )
    assert accepted and wf_claim is not None
    assert [decode_event(d).__class__.__name__ for _, d in wf_claim.inbox] == ["ActivityCompleted"]
    # the same completion again is a duplicate: rejected
    assert (await store.finish_activity_attempt("w", run_id, 1, 1, "A", decide,
                                                claim_workflow_task=False, lease=60))[0] is False


async def test_dead_workers_tasks_are_reclaimed(store: WorkflowStore) -> None:
    await store.register_worker("dead", ["q"], "", [])
    run_id = await _start(store, "w")
    [claim] = await store.claim_workflow_tasks("dead", ["q"], 10, lease=600)
    assert await store.complete_workflow_task(
        _completion(("w", run_id), "dead", claim.history_length, activity=True)
    )
    [task] = await store.claim_activity_tasks("dead", ["q"], 10)

    def decider(seq: int, kind: str, last: bytes | None):  # type: ignore[no-untyped-def]
        return activity_timed_out_outcome(seq, kind, None, store.clock.now())

    assert await store.reclaim_dead_workers(dead_after=-1.0, decider=decider) == 1
    [retry] = await store.claim_activity_tasks("alive", ["q"], 10)
    assert retry.attempt == task.attempt + 1
    # the dead worker's late completion is rejected
    decide = activity_completed_outcome(1, 1, b"1")
    accepted, _ = await store.finish_activity_attempt("w", run_id, 1, task.attempt, "dead", decide,
                                                      claim_workflow_task=False, lease=60)
    assert not accepted


async def test_concurrent_operations_share_commits(store: WorkflowStore) -> None:
    before_commits = store.commits  # type: ignore[attr-defined]
    before_ops = store.operations  # type: ignore[attr-defined]
    await asyncio.gather(*[_start(store, f"w{i}") for i in range(200)])
    commits = store.commits - before_commits  # type: ignore[attr-defined]
    ops = store.operations - before_ops  # type: ignore[attr-defined]
    assert ops == 200
    assert commits < ops  # group commit: many starts per transaction
    runs = await store.list_runs(status="running", workflow_type="T", limit=1000)
    assert len(runs) == 200


async def test_leases_of_unknown_or_removed_workers_are_reclaimed(store: WorkflowStore) -> None:
    await store.register_worker("gone", ["q"], "", [])
    run_id = await _start(store, "w")
    [claim] = await store.claim_workflow_tasks("gone", ["q"], 10, lease=600)
    assert await store.complete_workflow_task(
        _completion(("w", run_id), "gone", claim.history_length, activity=True)
    )
    [task] = await store.claim_activity_tasks("gone", ["q"], 10)
    # deregistering hands the unfinished attempt back without using it up
    await store.remove_worker("gone")
    [again] = await store.claim_activity_tasks("zombie", ["q"], 10)
    assert again.attempt == task.attempt
    # "zombie" never registered (or was removed): the sweep reclaims its lease anyway

    def decider(seq: int, kind: str, last: bytes | None):  # type: ignore[no-untyped-def]
        return activity_timed_out_outcome(seq, kind, None, store.clock.now())

    assert await store.reclaim_dead_workers(dead_after=60.0, decider=decider) == 1
    [third] = await store.claim_activity_tasks("alive", ["q"], 10)
    assert third.attempt == again.attempt + 1


async def test_a_heartbeat_brings_a_worker_declared_dead_back(store: WorkflowStore) -> None:
    await store.register_worker("slow", ["q"], "", [])

    def decider(seq: int, kind: str, last: bytes | None):  # type: ignore[no-untyped-def]
        return activity_timed_out_outcome(seq, kind, None, store.clock.now())

    assert await store.reclaim_dead_workers(dead_after=-1.0, decider=decider) == 1
    await store.worker_heartbeat("slow")  # its loop was only stalled
    assert await store.reclaim_dead_workers(dead_after=60.0, decider=decider) == 0


async def test_pruning_a_closed_run_leaves_none_of_its_rows(store: WorkflowStore) -> None:
    run_id = await _start(store, "pruned")
    [claim] = await store.claim_workflow_tasks("A", ["q"], 10, lease=60)
    assert await store.complete_workflow_task(_completion(("pruned", run_id), "A", 1,
                                                          activity=True))
    [task] = await store.claim_activity_tasks("A", ["q"], 10)
    # closed while its activity is still leased: the attempt row stays, marked cancelled,
    # until its worker reports back (which a dead worker never does)
    await store.terminate("pruned", run_id, b'{"type":"WorkflowTerminated","reason":""}', b"{}")
    assert await store.delete_closed_runs(store.clock.now() + 1, 10) == 1
    assert await store.delete_closed_runs(store.clock.now() + 1, 10) == 0
    assert await store.next_due_time() is None  # no orphaned deadline, timer or task left

    def decider(seq: int, kind: str, last: bytes | None):  # type: ignore[no-untyped-def]
        return activity_timed_out_outcome(seq, kind, None, store.clock.now())

    # "A" never registered: its lease would look orphaned, if the row had outlived the run
    assert await store.reclaim_dead_workers(dead_after=60.0, decider=decider) == 0
    with pytest.raises(WorkflowNotFoundError):
        await store.get_run("pruned", run_id)
    del claim, task


@pytest.mark.parametrize("cutoff", [math.nan, math.inf, -math.inf, -1.0])
async def test_pruning_refuses_a_cutoff_that_is_not_a_time(store: WorkflowStore,
                                                            cutoff: float) -> None:
    """NaN sorts above every number in PostgreSQL (``closed_at < 'NaN'`` is true for every
    run) and below none in SQLite: a NaN cutoff deleted every closed run on one backend and
    none on the other. Neither is asked for; the store refuses it (the API path too)."""
    run_id = await _start(store, "recent")
    await store.terminate("recent", run_id, b'{"type":"WorkflowTerminated","reason":""}', b"{}")
    with pytest.raises(InvalidArgumentError, match="closed_before"):
        await store.delete_closed_runs(cutoff, 10)
    for limit in (0, -1, True):
        with pytest.raises(InvalidArgumentError, match="limit"):
            await store.delete_closed_runs(store.clock.now() + 1, limit)
    assert (await store.get_run("recent", run_id)).status == "terminated"
    assert await store.delete_closed_runs(store.clock.now() + 1, 10) == 1


async def test_keep_alive_beats_while_the_event_loop_is_blocked(store: WorkflowStore) -> None:
    """The liveness heartbeat comes from the store's thread, on its own connection: a
    blocked event loop does not stop it; ``alive()`` false, or stopping, does."""

    def decider(seq: int, kind: str, last: bytes | None):  # type: ignore[no-untyped-def]
        return activity_timed_out_outcome(seq, kind, None, store.clock.now())

    await store.register_worker("busy", ["q"], "", [])
    alive = True
    store.keep_alive("busy", 0.05, lambda: alive)
    # the event loop (and so every coroutine) is blocked for longer than dead_after
    time.sleep(1.5)  # noqa: ASYNC251
    assert await store.reclaim_dead_workers(dead_after=1.0, decider=decider) == 0
    alive = False  # a loop stuck for good: the worker gives its work up
    await asyncio.sleep(1.3)
    assert await store.reclaim_dead_workers(dead_after=1.0, decider=decider) == 1
    alive = True
    await asyncio.sleep(0.3)  # beats again: back to life
    await store.stop_keeping_alive("busy")
    assert await store.reclaim_dead_workers(dead_after=1.0, decider=decider) == 0
    await asyncio.sleep(1.3)  # stopped: no beat lands any more
    assert await store.reclaim_dead_workers(dead_after=1.0, decider=decider) == 1


async def test_no_task_queues_match_nothing(store: WorkflowStore) -> None:
    """An empty queue list (a time skipper with no worker running) is valid on every backend."""
    await _start(store, "queues")
    assert await store.count_ready_tasks([]) == 0
    assert await store.count_ready_tasks(None) == 1
    assert await store.next_due_time([]) is None
    assert await store.next_due_time(None) is not None


async def test_an_attempt_left_open_belongs_to_no_worker_and_ends_once(
    store: WorkflowStore,
) -> None:
    """Async completion: an attempt left open is not handed back when its worker leaves,
    not reclaimed by sweeps, and ends once, for its own attempt number only."""
    await store.register_worker("A", ["q"], "", [])
    run_id = await _start(store, "w")
    [claim] = await store.claim_workflow_tasks("A", ["q"], 10, lease=600)
    assert await store.complete_workflow_task(
        _completion(("w", run_id), "A", claim.history_length, activity=True)
    )
    [task] = await store.claim_activity_tasks("A", ["q"], 10)
    assert not await store.await_async_completion("w", run_id, 1, task.attempt, "B")
    assert await store.await_async_completion("w", run_id, 1, task.attempt, "A")
    await store.remove_worker("A")

    def decider(seq: int, kind: str, last: bytes | None):  # type: ignore[no-untyped-def]
        return activity_timed_out_outcome(seq, kind, None, store.clock.now())

    assert await store.reclaim_dead_workers(dead_after=-1.0, decider=decider) == 0
    assert await store.claim_activity_tasks("Z", ["q"], 10) == []
    # its worker cannot end it any more; a handle can, for this attempt only
    decide = activity_completed_outcome(1, task.attempt, b"1")
    assert (await store.finish_activity_attempt("w", run_id, 1, task.attempt, "A", decide,
                                                claim_workflow_task=False, lease=60))[0] is False
    assert await store.heartbeat_async_activity("w", run_id, 1, task.attempt + 1, None) is None
    assert await store.heartbeat_async_activity("w", None, 1, None, b'["x"]') == "ok"
    assert not await store.resolve_async_activity(
        "w", run_id, 1, task.attempt + 1, lambda attempt: decide)
    assert await store.resolve_async_activity("w", None, 1, task.attempt, lambda attempt: decide)
    assert not await store.resolve_async_activity("w", run_id, 1, None, lambda attempt: decide)
    [wf_claim] = await store.claim_workflow_tasks("C", ["q"], 10, lease=60)
    assert [decode_event(d).__class__.__name__ for _, d in wf_claim.inbox] == ["ActivityCompleted"]
