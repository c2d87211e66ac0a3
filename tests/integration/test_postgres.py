"""What only PostgreSQL does: wake-ups across processes (LISTEN/NOTIFY), a pool of
connections, and riding out connections the server drops."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from perdure import Client, Worker, WorkerOptions, activity, workflow
from perdure.history import ActivityCompleted
from tests._databases import POSTGRES_URL, database_url_for

from ._helpers import wait_until

TQ = "pg"


@activity.defn
async def double(value: int) -> int:
    await asyncio.sleep(0.01)
    return value * 2


@workflow.defn
class Doubler:
    @workflow.run
    async def run(self, steps: int) -> int:
        total = 0
        for index in range(steps):
            total += await workflow.execute_activity(
                double, index, start_to_close_timeout=timedelta(seconds=30)
            )
        return total


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    with database_url_for("postgres", tmp_path) as url:
        yield url


def _backends(application_name: str) -> list[int]:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        ).fetchall()
    return [row[0] for row in rows]


async def _count(application_name: str, expected: int) -> bool:
    return len(_backends(application_name)) == expected


async def test_notify_wakes_an_idle_worker_of_another_process_at_once(pg_url: str) -> None:
    # two stores = two "processes": the worker's only way to hear of the start is NOTIFY,
    # since it would otherwise poll only every 30 s
    worker_client = await Client.connect(pg_url)
    client = await Client.connect(pg_url)
    options = WorkerOptions(max_poll_interval=30.0)
    try:
        async with Worker(worker_client, task_queue=TQ, workflows=[Doubler],
                          activities=[double], options=options):
            # the worker's polls back off (5 ms, doubling): after 6 s idle its next poll
            # is at 10.2 s, so a result within 3 s means a NOTIFY woke it
            await asyncio.sleep(6.0)
            started = time.monotonic()
            handle = await client.start_workflow(Doubler.run, 3, id="notified", task_queue=TQ)
            assert await handle.result(timeout=10) == 6
            elapsed = time.monotonic() - started
            assert elapsed < 3.0, f"the worker was not woken by NOTIFY ({elapsed:.2f}s)"
    finally:
        await client.close()
        await worker_client.close()


async def test_pool_size_opens_that_many_writer_connections(pg_url: str) -> None:
    name = f"perdure_pool_{uuid.uuid4().hex[:8]}"
    client = await Client.connect(f"{pg_url}&pool_size=3&application_name={name}")
    try:
        # three writers and one listener (which connects in the background)
        await wait_until(lambda: _count(name, 4), what="4 connections", timeout=10)
        await asyncio.sleep(0.2)
        assert len(_backends(name)) == 4
    finally:
        await client.close()
    # the server forgets a closed connection as soon as its backend process exits
    await wait_until(lambda: _count(name, 0), what="no connections left", timeout=10)


async def test_dropped_connections_are_reopened_and_nothing_is_lost(pg_url: str) -> None:
    name = f"perdure_drop_{uuid.uuid4().hex[:8]}"
    client = await Client.connect(f"{pg_url}&application_name={name}")
    try:
        async with Worker(client, task_queue=TQ, workflows=[Doubler], activities=[double]):
            handles = [
                await client.start_workflow(Doubler.run, 20, id=f"drop-{i}", task_queue=TQ)
                for i in range(10)
            ]
            for _ in range(3):  # the server drops every connection of ours, three times
                await asyncio.sleep(0.3)
                with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = %s", (name,),
                    )
            results = [await handle.result(timeout=60) for handle in handles]
        assert results == [sum(2 * i for i in range(20))] * 10
        for handle in handles:
            history = await handle.fetch_history()
            seqs = [e.seq for e in history.events if isinstance(e, ActivityCompleted)]
            assert sorted(seqs) == sorted(set(seqs)) and len(seqs) == 20
        assert client.store._pool.reconnects >= 3  # type: ignore[attr-defined]
    finally:
        await client.close()


async def test_a_store_that_lost_its_server_waits_for_it_instead_of_failing(
    pg_url: str,
) -> None:
    name = f"perdure_wait_{uuid.uuid4().hex[:8]}"
    client = await Client.connect(f"{pg_url}&application_name={name}&pool_size=1")
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = %s", (name,))
        # the next operation notices the dead connection, reconnects and succeeds
        handle = await client.start_workflow(Doubler.run, 1, id="after-drop", task_queue=TQ)
        description = await handle.describe()
        assert description.status.value == "running"
    finally:
        await client.close()


async def test_libpq_options_pass_through_the_url(pg_url: str) -> None:
    # a libpq parameter with spaces: server settings for every session of the store
    client = await Client.connect(f"{pg_url}&options=-c%20work_mem%3D7MB")
    try:
        def op(conn, notes):  # type: ignore[no-untyped-def]
            return conn.execute("SHOW work_mem").fetchone()[0]

        assert await client.store._run(op) == "7MB"  # type: ignore[attr-defined]
    finally:
        await client.close()


async def test_a_claim_that_skips_a_busy_run_holds_no_lock_on_its_task(pg_url: str) -> None:
    # A claim skips a task whose run another transaction holds. It must not keep the task
    # row locked for the rest of its batch: the run's holder may want that row next (it
    # locks run, then task), while a later operation of the claim's batch waits for the
    # holder: a deadlock that PostgreSQL breaks only after deadlock_timeout (1 s).
    schema = pg_url.split("schema=")[1]
    client = await Client.connect(f"{pg_url}&pool_size=1")  # one writer: batches in order
    try:
        await client.start_workflow(Doubler.run, 1, id="busy", task_queue=TQ)
        store = client.store
        with psycopg.connect(POSTGRES_URL) as holder:
            holder.execute(f'SELECT 1 FROM "{schema}".workflow_runs WHERE workflow_id = %s '
                           "FOR UPDATE", ("busy",))

            writer_busy = threading.Event()

            def occupy_writer(conn: object, notes: object) -> None:
                writer_busy.set()
                time.sleep(0.3)  # the claim and the probe queue up meanwhile: one batch

            def task_row_is_free(conn: object, notes: object) -> bool:
                # runs in the claim's batch, before it commits
                with psycopg.connect(POSTGRES_URL, autocommit=True) as probe:
                    try:
                        probe.execute(f'SELECT 1 FROM "{schema}".workflow_tasks '
                                      "WHERE workflow_id = %s FOR UPDATE NOWAIT", ("busy",))
                    except psycopg.errors.LockNotAvailable:
                        return False
                    return True

            occupied = store._run(occupy_writer)  # type: ignore[attr-defined]
            assert await asyncio.to_thread(writer_busy.wait, 10)  # its batch is taken
            claim = asyncio.ensure_future(store.claim_workflow_tasks("w", [TQ], 10, 30.0))
            await asyncio.sleep(0.05)
            probe = store._run(task_row_is_free)  # type: ignore[attr-defined]
            await occupied
            assert await claim == []
            assert await probe, "the claim kept the skipped task's row locked"
            holder.rollback()
        # once the run is free, the task is claimed as usual
        claims = await store.claim_workflow_tasks("w", [TQ], 10, 30.0)
        assert [c.workflow_id for c in claims] == ["busy"]
    finally:
        await client.close()
