"""The replay check against stored histories, on both backends: Replayer, files, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from perdure import NondeterminismError, WorkflowStatus
from perdure.history import (
    ActivityScheduled,
    ChildWorkflowScheduled,
    HistoryEvent,
    WorkflowTaskCompleted,
)
from perdure.replay import Replayer
from perdure.testing import WorkflowEnvironment

from . import pipelines as p

TQ = "replay-check"
ROOT = Path(__file__).resolve().parents[2]


async def _stored_runs(env: WorkflowEnvironment) -> None:
    """One finished run and one waiting on its timer, both written by ``Original``."""
    async with env.worker(task_queue=TQ, workflows=[p.Original, p.Review],
                          activities=p.ACTIVITIES):
        done = await env.client.start_workflow(p.Original.run, "wiki", id="p-done",
                                               task_queue=TQ)
        assert await done.result(timeout=20) == "stored reviewed summary of data from wiki"
        waiting = await env.client.start_workflow(p.Original.run, "news", id="p-waiting",
                                                  task_queue=TQ)
        for _ in range(500):
            if (await waiting.describe()).pending_timers:
                break
            await env.sleep(0)
        assert (await waiting.describe()).pending_timers == 1


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``perdure ARGS`` in a real subprocess (blocking: the CLI runs its own event loop)."""
    return subprocess.run([sys.executable, "-m", "perdure.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=60)


def _seq_of(events: list[HistoryEvent], predicate: Any) -> int:
    return next(i for i, e in enumerate(events, 1) if predicate(e))


def _scheduled(activity_type: str) -> Any:
    return lambda e: isinstance(e, ActivityScheduled) and e.activity_type == activity_type


INCOMPATIBLE = [
    (p.ActivityAdded, _scheduled("summarize"), "produced: ActivityScheduled(seq=2, "
     "activity_type='audit')"),
    (p.ActivityRemoved, _scheduled("summarize"), "produced: TimerStarted(seq=2"),
    (p.ActivitiesReordered, _scheduled("fetch"), "activity_type='summarize')"),
    (p.ActivityRenamed, _scheduled("summarize"), "activity_type='summarize-v2')"),
    (p.ArgumentsChanged, _scheduled("fetch"), "arguments differ in shape"),
    (p.TimerAdded, _scheduled("summarize"), "produced: TimerStarted(seq=2, duration=1s)"),
    (p.ChildSwappedForActivity, lambda e: isinstance(e, ChildWorkflowScheduled),
     "produced: ActivityScheduled(seq=4, activity_type='audit')"),
]
COMPATIBLE = [p.Original, p.LoggingAdded, p.QueryAdded, p.PromptReworded, p.BranchBehindPatch]


async def test_incompatible_changes_fail_naming_the_event(env: WorkflowEnvironment) -> None:
    await _stored_runs(env)
    done = (await env.client.get_workflow_handle("p-done").fetch_history()).events
    for variant, recorded, produced in INCOMPATIBLE:
        replayer = Replayer([variant, p.Review])
        report = await replayer.replay_from_database(
            env.client, statuses=[WorkflowStatus.COMPLETED], workflow_type="Pipeline")
        assert len(report) == 1 and not report.ok, variant.__name__
        error = report[0].error
        assert isinstance(error, NondeterminismError), (variant.__name__, error)
        assert error.event_seq == _seq_of(done, recorded), (variant.__name__, str(error))
        assert produced in str(error), (variant.__name__, str(error))
        # the line of the variant's code that produced the command
        assert "pipelines.py:" in error.location, (variant.__name__, error.location)
        text = report.describe()
        assert text.startswith("FAIL p-done") and "recorded:" in text


async def test_compatible_changes_pass(env: WorkflowEnvironment) -> None:
    await _stored_runs(env)
    for variant in COMPATIBLE:
        report = await Replayer([variant, p.Review]).replay_from_database(
            env.client, statuses=list(WorkflowStatus))
        # both Pipeline runs (done and waiting) and the finished child
        assert len(report) == 3, variant.__name__
        assert report.ok, (variant.__name__, report.describe())
        assert all(r.build_ids for r in report)


async def test_running_only_by_default_and_unknown_types_fail(env: WorkflowEnvironment) -> None:
    await _stored_runs(env)
    report = await Replayer([p.Original]).replay_from_database(env.client)
    assert [r.workflow_id for r in report] == ["p-waiting"] and report.ok
    report = await Replayer([p.Original]).replay_from_database(
        env.client, statuses=list(WorkflowStatus))
    assert not report.ok  # the Review child's type was not given
    assert "workflow type 'Review' is not among the workflows" in report.describe()
    with pytest.raises(NondeterminismError, match="1 failed"):
        report.raise_on_failure()


async def test_exported_files_replay_and_cli(env: WorkflowEnvironment, database_url: str,
                                             tmp_path: Path) -> None:
    await _stored_runs(env)
    cli_env = dict(os.environ, PYTHONPATH=str(ROOT))
    export = _cli(cli_env, "workflow", "export", "p-done", "--database-url", database_url)
    assert export.returncode == 0, export.stderr
    document = json.loads(export.stdout)
    assert document["format"] == "perdure-history" and document["version"] == 1
    history_file = tmp_path / "p-done.json"
    history_file.write_text(export.stdout)
    assert Replayer([p.Original]).replay_files([history_file]).ok
    bad = Replayer([p.ActivityRenamed]).replay_files([history_file])
    assert not bad.ok and bad[0].source == str(history_file)

    def replay(*args: str) -> subprocess.CompletedProcess[str]:
        return _cli(cli_env, "replay", *args)

    ok = replay("--workflows", "tests.replay.pipelines:Original", str(tmp_path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("ok   p-done") and "1 histories checked, 0 failed" in ok.stdout
    failed = replay("--workflows", "tests.replay.pipelines:ActivityRenamed",
                    "--workflows", "tests.replay.pipelines:Review",
                    "--database-url", database_url, "--include-closed")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "FAIL p-done" in failed.stdout and "FAIL p-waiting" in failed.stdout
    assert "recorded: ActivityScheduled(seq=2, activity_type='summarize')" in failed.stdout
    assert "pipelines.py:" in failed.stdout and "builds:" in failed.stdout
    ambiguous = replay("--workflows", "tests.replay.pipelines", str(tmp_path))
    assert ambiguous.returncode == 2
    assert "both define workflow type 'Pipeline'" in ambiguous.stderr
    running_only = replay("--workflows", "tests.replay.pipelines:Original",
                          "--database-url", database_url)
    assert running_only.returncode == 0, running_only.stdout + running_only.stderr
    assert "ok   p-waiting" in running_only.stdout and "p-done" not in running_only.stdout
    missing = replay("--workflows", "tests.replay.nowhere", str(tmp_path))
    assert missing.returncode == 2 and "cannot import 'tests.replay.nowhere'" in missing.stderr


async def test_build_ids_are_reported(env: WorkflowEnvironment) -> None:
    await _stored_runs(env)
    events = (await env.client.get_workflow_handle("p-done").fetch_history()).events
    builds = {e.build_id for e in events if isinstance(e, WorkflowTaskCompleted)}
    assert len(builds) == 1 and "" not in builds
    build = builds.pop()
    # derived from the workflow code when not configured
    assert (await env.client.get_workflow_handle("p-done").describe()).last_build_id == build
    report = await Replayer([p.Original, p.Review]).replay_from_database(
        env.client, statuses=list(WorkflowStatus))
    assert f"builds: {build}" in report.describe()


async def test_configured_build_id_is_recorded_per_task(env: WorkflowEnvironment) -> None:
    async with env.worker(task_queue=TQ, workflows=[p.Original, p.Review],
                          activities=p.ACTIVITIES, build_id="agents-2026.11.29"):
        handle = await env.client.start_workflow(p.Original.run, "docs", id="p-built",
                                                 task_queue=TQ)
        await handle.result(timeout=20)
    history = await handle.fetch_history()
    assert history.build_ids == ["agents-2026.11.29"]
    assert (await handle.describe()).last_build_id == "agents-2026.11.29"
