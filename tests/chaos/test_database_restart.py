"""Database restart: PostgreSQL goes away in the middle of a run and comes back.

The server is a private throwaway cluster (initdb in a temporary directory, its own
port), so stopping it disturbs nothing else. Two worker processes run 50 workflows of
10 activities; half are started before the outage, half while it lasts (the test
process's client must ride it out too). Afterwards every workflow has completed with the
right result and every activity completion is in its history exactly once.

* ``fast restart``: ``pg_ctl restart -m fast`` (sessions are terminated, a clean
  shutdown, the server is back at once);
* ``crash and outage``: ``pg_ctl stop -m immediate`` (a crash: no shutdown checkpoint,
  recovery on start), two seconds with no server at all, then start.

A third test pins down what the crash variant first caught: settling a COMMIT that a
crash cut off, when the server has handed that transaction's id out again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from perdure import Client
from tests._databases import require_postgres

from ._cluster import PrivateCluster, require_cluster
from ._harness import (
    WorkerFleet,
    count_closed,
    start_workflows,
    stuck_report,
    verify_all,
    within,
    workflow_id,
)

pytestmark = pytest.mark.slow

WORKFLOWS = 50
ACTIVITIES = 10
WORKERS = 2
STEP_SECONDS = 0.1
OUTAGE_SECONDS = 2.0
TIMEOUT = 60.0


@pytest.mark.parametrize("outage", ["fast restart", "crash and outage"])
async def test_run_survives_postgres_restart(
    outage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    report: Callable[[str], None],
) -> None:
    caplog.set_level(logging.WARNING, logger="perdure")
    require_postgres()
    require_cluster()
    cluster = PrivateCluster()
    fleet: WorkerFleet | None = None
    client: Client | None = None
    try:
        await asyncio.to_thread(cluster.init)
        await asyncio.to_thread(cluster.start)
        url = f"{cluster.url}?schema=restart"
        client = await Client.connect(url)
        fleet = WorkerFleet(url, tmp_path, step_seconds=STEP_SECONDS)
        await fleet.wait_ready([fleet.start() for _ in range(WORKERS)])
        began = time.monotonic()
        deadline = began + TIMEOUT
        first, second = range(WORKFLOWS // 2), range(WORKFLOWS // 2, WORKFLOWS)
        await start_workflows(client, first, ACTIVITIES)

        # mid-run: about a quarter of the first half's activities have started
        while sum(fleet.read_executions().values()) < len(first) * ACTIVITIES // 4:
            assert time.monotonic() < deadline, "the run did not get going before the outage"
            await asyncio.sleep(0.01)
        executed_before = sum(fleet.read_executions().values())

        # the outage; meanwhile the client starts the second half and asks about the first
        outage_began, outage_at = time.monotonic(), time.time()
        if outage == "fast restart":
            server = asyncio.create_task(asyncio.to_thread(cluster.restart, "fast"))
        else:
            await asyncio.to_thread(cluster.stop, "immediate")

            async def come_back() -> None:
                await asyncio.sleep(OUTAGE_SECONDS)
                await asyncio.to_thread(cluster.start)

            server = asyncio.create_task(come_back())
        described = await within(
            client.get_workflow_handle(workflow_id(0)).describe(), deadline,
            f"describe() across the {outage}",
        )
        assert described.workflow_id == workflow_id(0)
        await within(start_workflows(client, second, ACTIVITIES), deadline,
                      f"start_workflow across the {outage}")
        await within(server, deadline, f"the {outage} itself")
        server_back = time.monotonic() - outage_began

        while (closed := await within(count_closed(client, WORKFLOWS), deadline,
                                       "list_workflows")) < WORKFLOWS:
            assert not fleet.unexpected_exits(), "\n".join(fleet.unexpected_exits())
            if time.monotonic() > deadline:
                pytest.fail(
                    f"only {closed} of {WORKFLOWS} workflows closed within {TIMEOUT:g}s after "
                    f"a {outage}\n{await stuck_report(client, fleet)}\n"
                    f"server log:\n{cluster.server_log()}"
                )
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - began

        verified = await verify_all(
            client, fleet, range(WORKFLOWS), ACTIVITIES,
            context=f" (the {outage} began at {outage_at:.3f}, the server was back "
                    f"{server_back:.1f}s later)",
        )
        assert not fleet.unexpected_exits(), "\n".join(fleet.unexpected_exits())
        fleet.assert_no_errors_logged()
        client_errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not client_errors, [r.getMessage() for r in client_errors]
        # the outage really cut the workers' and the test client's connections
        workers_lost = fleet.logged("connection lost")
        client_lost = sum("connection lost" in r.getMessage() for r in caplog.records)
        assert workers_lost > 0, f"no worker noticed the {outage}:\n{fleet.stderr_tail()}"
        report(
            f"\n{outage}: {verified.workflows} workflows, {verified.activities} activities, "
            f"{executed_before} executions before the outage, server back after "
            f"{server_back:.1f}s, connections lost: {workers_lost} in workers, {client_lost} in "
            f"the client, {verified.reexecuted} activities executed more than once, "
            f"{verified.executions} executions in all, {elapsed:.1f}s wall"
        )
    finally:
        if fleet is not None:
            fleet.stop_all()
        if client is not None:
            await client.close()
        await asyncio.to_thread(cluster.destroy)


def test_cut_off_commits_are_settled_by_their_markers() -> None:
    """A COMMIT cut off mid-flight is settled on a new connection by the batch's marker
    row: a batch that committed is reported committed; one whose session lingers (its
    COMMIT never arrived) is ended first, then reported not committed; and after a
    crash, where the server hands the ids of unflushed transactions out again (so a
    transaction id would lie), the marker still tells the truth."""
    require_postgres()
    require_cluster()
    import psycopg

    from perdure.store._postgres_writer import PostgresWriterPool
    from perdure.store._schema import POSTGRES_MIGRATIONS

    cluster = PrivateCluster()
    try:
        cluster.init()
        cluster.start()
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            for migration in POSTGRES_MIGRATIONS:
                for statement in migration.split(";"):
                    if statement.strip():
                        conn.execute(statement)  # type: ignore[call-overload]
            conn.execute("CREATE TABLE t (x int)")
        pool = PostgresWriterPool(cluster.url, size=1, setup=lambda conn: None,
                                  channel="perdure", origin="test", describe="test")
        pool.marking = True

        def batch(conn, value):  # type: ignore[no-untyped-def]
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t VALUES (?)", (value,))
            return pool._mark(conn)

        committed = pool.connect()
        committed_marker = batch(committed, 1)
        committed.execute("COMMIT")
        lingering = pool.connect()
        lingering_marker = batch(lingering, 2)  # COMMIT never sent; the session lives on
        asker = pool.connect()
        assert pool._settle(asker, committed_marker) is True
        assert pool._settle(asker, lingering_marker) is False  # ends the lingering session
        with pytest.raises(psycopg.OperationalError):
            lingering.raw.execute("SELECT 1")  # it was terminated
        lost = pool.connect()
        lost_marker = batch(lost, 3)  # COMMIT never sent: the server crashes
        cluster.stop("immediate")
        cluster.start()
        after = pool.connect()
        for _ in range(3):  # new transactions take the lost one's id, and commit
            after.execute("BEGIN")
            after.execute("SELECT txid_current()").fetchone()
            after.execute("COMMIT")
        assert pool._settle(after, lost_marker) is False
        assert pool._settle(after, committed_marker) is True
        assert sorted(after.execute("SELECT x FROM t").fetchall()) == [(1,)]
        for conn in (committed, asker, lost, after):
            conn.raw.close()
    finally:
        cluster.destroy()
