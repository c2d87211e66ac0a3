"""Every ``perdure`` command, misused: one clear line on standard error, never a
traceback, and an exit status that says what went wrong (``perdure --help``): 1 the
answer is no, 2 bad input, 3 not found, 4 the database cannot be used.

Each command runs in its own process, as users run it.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from perdure import Client

from ._cli import UNREACHABLE, assert_refused, perdure

AGENT = "perdure.Agent"
"""The agent workflow's type (``perdure.agents``)."""

# every command, with arguments that are valid apart from the database
COMMANDS = {
    "db migrate": ["db", "migrate"],
    "db status": ["db", "status"],
    "db prune": ["db", "prune", "--older-than", "30d"],
    "replay": ["replay", "--workflows", "tests.replay.pipelines:Original"],
    "workflow export": ["workflow", "export", "plain"],
    "workflow diff": ["workflow", "diff", "plain", "plain"],
    "workflow reset": ["workflow", "reset", "plain", "--to-event", "1"],
    "workflow fork": ["workflow", "fork", "plain", "plain-2", "--to-event", "1"],
    "agent follow": ["agent", "follow", "agent"],
    "agent answer": ["agent", "answer", "agent", "blue"],
    "agent approve": ["agent", "approve", "agent", "call-1"],
    "agent deny": ["agent", "deny", "agent", "call-1"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_without_a_usable_database(command: str) -> None:
    args = COMMANDS[command]
    assert_refused(perdure(*args, "--database-url", "mysql://db/x"), 2,
                   "unsupported database URL scheme 'mysql'")
    assert_refused(perdure(*args, "--database-url", "postgresql://db:port/x"), 2,
                   "malformed PostgreSQL URL")
    assert_refused(perdure(*args, "--database-url", UNREACHABLE), 4, "cannot connect")
    no_url = perdure(*args, env={"PATH": "/usr/bin:/bin"})
    assert_refused(no_url, 2, "PERDURE_DATABASE_URL")


def test_usage_errors_are_one_line_and_help_lists_the_exit_statuses() -> None:
    assert_refused(perdure(), 2, "the following arguments are required: command")
    assert_refused(perdure("nonsense"), 2, "invalid choice: 'nonsense'")
    assert_refused(perdure("db", "prune", "--older-than"), 2, "expected one argument")
    assert_refused(perdure("workflow", "reset", "plain"), 2,
                   "one of the arguments --to-event --to-last-workflow-task is required")
    helped = perdure("workflow", "export", "--help")
    assert helped.returncode == 0 and "3    not found" in helped.stdout


@pytest.fixture
async def workflows(database_url: str) -> AsyncIterator[Client]:
    """A running workflow ``plain``, a terminated ``plain-closed``, a running agent
    ``agent`` and a terminated ``agent-closed`` (no worker runs: rows are enough)."""
    client = await Client.connect(database_url)
    try:
        await client.start_workflow("Plain", id="plain", task_queue="q")
        await client.start_workflow(AGENT, id="agent", task_queue="q")
        for workflow_type, workflow_id in (("Plain", "plain-closed"), (AGENT, "agent-closed")):
            handle = await client.start_workflow(workflow_type, id=workflow_id, task_queue="q")
            await handle.terminate("closed")
        yield client
    finally:
        await client.close()


async def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(perdure, *args, "--database-url", database_url)


async def test_db_commands_on_an_unmigrated_database(database_url: str) -> None:
    assert_refused(await cli(database_url, "db", "prune", "--older-than", "1d"), 4,
                   "run `perdure db migrate` first")
    assert_refused(await cli(database_url, "workflow", "export", "plain"), 4,
                   "SchemaVersionError")


async def test_workflow_export(workflows: Client, database_url: str, tmp_path: Path) -> None:
    assert_refused(await cli(database_url, "workflow", "export", "nobody"), 3,
                   "no workflow with id 'nobody'")
    assert_refused(await cli(database_url, "workflow", "export", "plain", "--run-id", "r0"),
                   3, "no workflow with id 'plain' and run r0")
    # into a folder that does not exist: a traceback (FileNotFoundError) before
    target = tmp_path / "missing" / "plain.json"
    assert_refused(await cli(database_url, "workflow", "export", "plain", "-o", str(target)),
                   2, "no such directory")
    assert_refused(await cli(database_url, "workflow", "export", "plain", "-o",
                             str(tmp_path)), 2, "is a directory")
    assert not target.parent.exists()
    done = await cli(database_url, "workflow", "export", "plain", "-o",
                     str(tmp_path / "plain.json"))
    assert done.returncode == 0 and (tmp_path / "plain.json").exists()


async def test_workflow_diff(workflows: Client, database_url: str, tmp_path: Path) -> None:
    assert_refused(await cli(database_url, "workflow", "diff", "plain", "nobody"), 3,
                   "no workflow with id 'nobody'")
    assert_refused(await cli(database_url, "workflow", "diff", "plain", "gone.json"), 3,
                   "and there is no file 'gone.json'")
    not_json = tmp_path / "not.json"
    not_json.write_text("{ not json")
    assert_refused(await cli(database_url, "workflow", "diff", "plain", str(not_json)), 2,
                   "is not valid JSON")
    other = tmp_path / "other.json"
    other.write_text('{"format": "other", "version": 1}')
    assert_refused(await cli(database_url, "workflow", "diff", "plain", str(other)), 2,
                   "is not a Perdure history export")
    assert_refused(await cli(database_url, "workflow", "diff", "plain", "plain",
                             "--context=-1"), 2, "--context")


async def test_workflow_reset(workflows: Client, database_url: str) -> None:
    assert_refused(await cli(database_url, "workflow", "reset", "nobody", "--to-event", "1"),
                   3, "no workflow with id 'nobody'")
    for event in ("0", "-1", "x", "1e3"):
        assert_refused(await cli(database_url, "workflow", "reset", "plain",
                                 f"--to-event={event}"), 2, "--to-event")
    assert_refused(await cli(database_url, "workflow", "reset", "plain", "--to-event", "99"),
                   2, "event 99 is not in this history")


async def test_workflow_fork(workflows: Client, database_url: str) -> None:
    assert_refused(await cli(database_url, "workflow", "fork", "nobody", "x", "--to-event",
                             "1"), 3, "no workflow with id 'nobody'")
    for edit in ("x", "2", "2=", "2={", "2=NaN", "2=Infinity", "x=1", "0=1"):
        assert_refused(await cli(database_url, "workflow", "fork", "plain", "x",
                                 "--edit-result", edit), 2, "--edit-result")
    assert_refused(await cli(database_url, "workflow", "fork", "plain", "plain", "--to-event",
                             "1"), 2, "a fork needs another workflow id")
    assert_refused(await cli(database_url, "workflow", "fork", "plain", "agent", "--to-event",
                             "1"), 1, "WorkflowAlreadyStartedError")


@pytest.mark.parametrize("command", [["answer", "blue"], ["approve", "call-1"],
                                     ["deny", "call-1"]])
async def test_agent_answer_approve_deny(workflows: Client, database_url: str,
                                         command: list[str]) -> None:
    """On a workflow that is not an agent these exited 0, having delivered a signal the
    workflow does not handle; now they refuse (2) and deliver nothing."""
    verb, value = command
    assert_refused(await cli(database_url, "agent", verb, "plain", value), 2,
                   "'plain' is a 'Plain' workflow, not an agent")
    assert (await workflows.get_workflow_handle("plain").describe()).pending_events == 0
    assert_refused(await cli(database_url, "agent", verb, "nobody", value), 3,
                   "no workflow with id 'nobody'")
    assert_refused(await cli(database_url, "agent", verb, "agent-closed", value), 1,
                   "agent 'agent-closed' is terminated: only a running agent")
    assert_refused(await cli(database_url, "agent", verb, "plain-closed", value), 2,
                   "not an agent")
    done = await cli(database_url, "agent", verb, "agent", value)
    assert done.returncode == 0, done.stderr
    assert (await workflows.get_workflow_handle("agent").describe()).pending_events == 1


async def test_agent_follow(workflows: Client, database_url: str) -> None:
    assert_refused(await cli(database_url, "agent", "follow", "plain"), 2, "not an agent")
    assert_refused(await cli(database_url, "agent", "follow", "nobody"), 3,
                   "no workflow with id 'nobody'")
    closed = await cli(database_url, "agent", "follow", "agent-closed")
    assert closed.returncode == 1, closed.stderr


async def test_replay(workflows: Client, database_url: str, tmp_path: Path) -> None:
    code = ("--workflows", "tests.replay.pipelines:Original")
    assert_refused(await cli(database_url, "replay", *code, str(tmp_path / "gone.json")), 3,
                   "no such history file or directory")
    broken = tmp_path / "broken.json"
    broken.write_text("{\"format\": \"perdure-hist")  # cut off
    assert_refused(await cli(database_url, "replay", *code, str(broken)), 2,
                   "is not valid JSON")
    (tmp_path / "broken_module.py").write_text("def oops(:\n")
    done = await asyncio.to_thread(perdure, "replay", "--workflows", "broken_module",
                                   "--database-url", database_url, cwd=tmp_path)
    assert_refused(done, 2, "cannot import 'broken_module'")
    assert_refused(await cli(database_url, "replay", *code, "--started-after", "soon"), 2,
                   "is not a date")
    assert_refused(await cli(database_url, "replay", *code, "--status", "lost"), 2,
                   "invalid choice: 'lost'")
