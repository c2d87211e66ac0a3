"""The ``perdure`` command: ``db migrate``, ``db status`` and ``db prune`` on both backends;
the numbers it takes (durations, batch sizes, limits) are finite and in range."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from perdure import Client
from perdure.cli import main
from perdure.store._schema import SCHEMA_VERSION

from ._cli import assert_refused, perdure


def test_migrate_creates_then_reports_up_to_date(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "status", "--database-url", database_url]) == 1
    assert "run `perdure db migrate`" in capsys.readouterr().out
    assert main(["db", "migrate", "--database-url", database_url]) == 0
    assert f"migrated from version 0 to {SCHEMA_VERSION}" in capsys.readouterr().out
    assert main(["db", "migrate", "--database-url", database_url]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["db", "status", "--database-url", database_url]) == 0
    assert f"schema version {SCHEMA_VERSION}, up to date" in capsys.readouterr().out


def test_the_installed_command_reads_the_environment_variable(database_url: str) -> None:
    env = dict(os.environ, PERDURE_DATABASE_URL=database_url)
    done = subprocess.run([sys.executable, "-m", "perdure.cli", "db", "migrate"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "migrated" in done.stdout


def test_bad_urls_exit_2_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "migrate", "--database-url", "mysql://x"]) == 2
    err = capsys.readouterr().err
    assert "InvalidDatabaseURLError" in err
    assert "unsupported database URL scheme 'mysql'" in err


def test_no_database_named(monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("PERDURE_DATABASE_URL", raising=False)
    assert main(["db", "migrate"]) == 2
    assert "PERDURE_DATABASE_URL" in capsys.readouterr().err


def test_passwords_are_not_printed(capsys: pytest.CaptureFixture[str]) -> None:
    from perdure.cli._main import _redact

    assert _redact("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert _redact("postgresql://bob@db/x") == "postgresql://bob@db/x"
    assert _redact("sqlite:///tmp/x.db") == "sqlite:///tmp/x.db"


def _create_version(database_url: str, version: int) -> None:
    """A database as an older Perdure left it: migrations up to ``version`` applied, and
    one run row, written with the columns that version had."""
    from perdure.store._schema import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS

    run = ("INSERT INTO workflow_runs (workflow_id, run_id, workflow_type, task_queue, status, "
           "history_length, created_at) VALUES ('old', 'r1', 'Old', 'q', 'completed', 2, 1.0)")
    if database_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(database_url.split(":///", 1)[1]) as conn:
            for migration in SQLITE_MIGRATIONS[:version]:
                conn.executescript(migration)
            conn.execute("INSERT INTO perdure_schema (version) VALUES (?)", (version,))
            conn.execute(run)
        return
    import psycopg

    base, schema = database_url.split("?schema=")
    with psycopg.connect(base, autocommit=True) as pg:
        pg.execute(f'CREATE SCHEMA "{schema}"')
        pg.execute(f'SET search_path TO "{schema}"')
        for migration in POSTGRES_MIGRATIONS[:version]:
            for statement in migration.split(";"):
                if statement.strip():
                    pg.execute(statement)  # type: ignore[call-overload]
        pg.execute("INSERT INTO perdure_schema (version) VALUES (%s)", (version,))
        pg.execute(run)


def _cron_columns(database_url: str) -> list[tuple[object, ...]]:
    """Version 4's columns of every run (the old run gets NULLs)."""
    query = "SELECT workflow_id, cron_schedule, scheduled_at, last_completion_result " \
            "FROM workflow_runs"
    if database_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(database_url.split(":///", 1)[1]) as conn:
            return [tuple(r) for r in conn.execute(query).fetchall()]
    import psycopg

    base, schema = database_url.split("?schema=")
    with psycopg.connect(base, autocommit=True) as pg:
        pg.execute(f'SET search_path TO "{schema}"')
        return [tuple(r) for r in pg.execute(query).fetchall()]  # type: ignore[call-overload]


@pytest.mark.parametrize("version", [1, 3])
def test_migrate_upgrades_an_older_schema(
    database_url: str, capsys: pytest.CaptureFixture[str], version: int,
) -> None:
    assert SCHEMA_VERSION >= 4
    _create_version(database_url, version)
    assert main(["db", "status", "--database-url", database_url]) == 1
    assert f"schema version {version}" in capsys.readouterr().out
    assert main(["db", "migrate", "--database-url", database_url]) == 0
    assert f"migrated from version {version} to {SCHEMA_VERSION}" in capsys.readouterr().out
    assert main(["db", "status", "--database-url", database_url]) == 0
    assert _cron_columns(database_url) == [("old", None, None, None)]


async def test_prune_deletes_old_closed_runs_only(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from perdure import Client, Worker, WorkflowNotFoundError, workflow

    @workflow.defn(name="PruneMe")
    class PruneMe:
        @workflow.run
        async def run(self, wait: bool) -> str:
            if wait:
                await workflow.wait_condition(lambda: False)
            return "done"

    client = await Client.connect(database_url)
    try:
        async with Worker(client, task_queue="prune", workflows=[PruneMe]):
            for index in range(3):
                await client.execute_workflow(PruneMe.run, False, id=f"old-{index}",
                                              task_queue="prune")
            running = await client.start_workflow(PruneMe.run, True, id="still-running",
                                                  task_queue="prune")
        # closed less than a day ago: kept
        assert await asyncio.to_thread(
            main, ["db", "prune", "--database-url", database_url, "--older-than", "1d"]
        ) == 0
        assert "deleted 0 closed runs" in capsys.readouterr().out
        assert len(await client.list_workflows()) == 4
        # closed at all: deleted, in batches of two; the running one stays
        await asyncio.sleep(0.01)
        assert await asyncio.to_thread(
            main, ["db", "prune", "--database-url", database_url, "--older-than", "0s",
                   "--batch", "2"],
        ) == 0
        assert "deleted 3 closed runs" in capsys.readouterr().out
        listed = await client.list_workflows()
        assert [d.workflow_id for d in listed] == ["still-running"]
        with pytest.raises(WorkflowNotFoundError):
            await client.get_workflow_handle("old-0").fetch_history()
        assert (await running.describe()).status.value == "running"
    finally:
        await client.close()


def test_prune_rejects_a_bad_duration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "prune", "--database-url", "sqlite:///x.db", "--older-than",
                 "soon"]) == 2
    assert "not a duration" in capsys.readouterr().err


async def _closed_and_running(client: Client) -> None:
    """Two runs closed just now (terminated) and one running: no worker needed."""
    for index in range(2):
        handle = await client.start_workflow("Kept", id=f"closed-{index}", task_queue="q")
        await handle.terminate("closed just now")
    await client.start_workflow("Kept", id="running", task_queue="q")


NOT_FINITE = ["nan", "NaN", "-nan", "inf", "-inf", "nand", "infh", "1e999", "1e306d"]
OUT_OF_RANGE = ["-1d", "-0.5", "36501d"]


async def test_prune_refuses_durations_that_are_not_finite_or_in_range(
    database_url: str,
) -> None:
    """``--older-than nan`` deleted every closed run on PostgreSQL (NaN sorts above every
    number there), however recent, and nothing on SQLite; both exited 0. Every such
    duration, and a batch size that is not a positive count, is now refused with exit 2,
    and nothing is deleted."""
    client = await Client.connect(database_url)
    try:
        await _closed_and_running(client)
        for text in [*NOT_FINITE, *OUT_OF_RANGE]:
            done = await asyncio.to_thread(
                perdure, "db", "prune", f"--older-than={text}", "--database-url",
                database_url, console_script=True)
            assert_refused(done, 2, "--older-than")
        for batch in ("0", "-1", "nan", "1.5", "100001"):
            done = await asyncio.to_thread(
                perdure, "db", "prune", "--older-than=1s", f"--batch={batch}",
                "--database-url", database_url)
            assert_refused(done, 2, "--batch")
        assert len(await client.list_workflows()) == 3
        # the longest duration taken: nothing closed that long ago
        done = await asyncio.to_thread(perdure, "db", "prune", "--older-than=36500d",
                                       "--database-url", database_url)
        assert done.returncode == 0 and "deleted 0 closed runs" in done.stdout, done.stderr
        done = await asyncio.to_thread(perdure, "db", "prune", "--older-than=0s",
                                       "--database-url", database_url)
        assert done.returncode == 0 and "deleted 2 closed runs" in done.stdout, done.stderr
        assert [d.workflow_id for d in await client.list_workflows()] == ["running"]
    finally:
        await client.close()


async def test_replay_refuses_a_limit_that_checks_nothing(database_url: str,
                                                          tmp_path: Path) -> None:
    """``replay --limit 0`` (or -1) checked nothing and exited 0: a CI replay gate passed
    vacuously. A limit below 1 is bad input (2); a replay that found no history to check
    exits 3 (not found), unless ``--allow-empty`` says that is expected."""
    client = await Client.connect(database_url)
    try:
        await _closed_and_running(client)
    finally:
        await client.close()
    code = ("--workflows", "tests.replay.pipelines:Original", "--database-url", database_url)
    for limit in ("0", "-1", "nan", "1000001"):
        done = await asyncio.to_thread(perdure, "replay", *code, f"--limit={limit}",
                                       console_script=True)
        assert_refused(done, 2, "--limit")
    # the only running run is of a type no filter matches: zero histories
    done = await asyncio.to_thread(perdure, "replay", *code, "--type", "Pipeline")
    assert_refused(done, 3, "nothing was checked")
    assert "0 histories checked" in done.stdout
    done = await asyncio.to_thread(perdure, "replay", *code, "--type", "Pipeline",
                                   "--allow-empty")
    assert done.returncode == 0, done.stderr
    # a directory without histories: the same
    (tmp_path / "histories").mkdir()
    done = await asyncio.to_thread(perdure, "replay", "--workflows",
                                   "tests.replay.pipelines:Original",
                                   str(tmp_path / "histories"))
    assert_refused(done, 3, "hold no .json history")
