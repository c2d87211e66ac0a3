"""Record the golden histories: ``python -m tests.golden.generate`` (from the repository root).

Runs every scenario of ``golden_workflows`` with the real worker on a fresh SQLite
database (``WorkflowEnvironment.start_time_skipping()``), then exports every run,
children and continued runs included, to ``tests/golden/histories/<workflow id>.run-<n>.json``
(``n`` is the run's place in its continue-as-new chain, from 0). Old ``*.json`` files there
are removed first.

Run it by hand, only when the golden set itself should change (a new scenario, a new
event type): the files are meant to be written by *old* code and read by new code.
Regenerating them after an incompatible engine change would hide exactly what they are
there to catch. Commit the new files with a note saying why they changed.

Files are JSON as ``WorkflowHistory.to_json`` writes it, laid out one event per line so
that a diff reads as a list of events; payloads inside events are kept byte for byte.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec

from perdure import (
    UpdateRejectedError,
    WorkflowFailureError,
    WorkflowHistory,
    WorkflowStatus,
    workflow,
)
from perdure.history import WorkflowStarted
from perdure.testing import WorkflowEnvironment, assert_replays
from tests.golden import golden_workflows as g

HISTORIES = Path(__file__).resolve().parent / "histories"
ROOT = HISTORIES.parents[2]
_PINNED = "PERDURE_GOLDEN_PINNED_SRC"
_PINNED_DIR = "PERDURE_GOLDEN_PINNED_DIR"


# ------------------------------------------------------------------ the code before the patch


@workflow.defn(name="SupportTriage")
class SupportTriageBeforePatch:
    """``SupportTriage`` as it was before the ``structured-triage`` patch: the run started
    under this code and finished under the patched code is the patch's golden case."""

    def __init__(self) -> None:
        self.details: str | None = None

    @workflow.run
    async def run(self, ticket: str) -> str:
        await workflow.execute_activity(g.acknowledge_ticket, ticket, start_to_close_timeout=g.T)
        await workflow.wait_condition(lambda: self.details is not None, timeout=timedelta(days=1))
        assert self.details is not None
        category: str = await workflow.execute_activity(g.classify_ticket, ticket, self.details,
                                                        start_to_close_timeout=g.T)
        reply: str = await workflow.execute_activity(g.send_reply, ticket, category, "normal",
                                                     start_to_close_timeout=g.T)
        return reply

    @workflow.signal
    def customer_details(self, text: str) -> None:
        self.details = text


# ------------------------------------------------------------------ helpers


async def wait_until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


def _revision() -> str:
    """The commit whose src/ is recorded with: the pinned one, or HEAD."""
    try:
        rev = os.environ.get(_PINNED) or "HEAD"
        return subprocess.run(["git", "rev-parse", "--short", rev], capture_output=True,
                              text=True, check=True, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def format_history(history: WorkflowHistory) -> bytes:
    """``history.to_json()`` laid out one top-level field, and one event, per line."""
    document = msgspec.json.decode(history.to_json(), type=dict[str, msgspec.Raw])
    events = msgspec.json.decode(document.pop("events"), type=list[msgspec.Raw])
    lines = [b"{"]
    lines += [b"  " + msgspec.json.encode(key) + b": " + bytes(value) + b","
              for key, value in document.items()]
    lines.append(b'  "events": [')
    lines += [b"    " + bytes(event) + (b"," if i < len(events) - 1 else b"")
              for i, event in enumerate(events)]
    lines += [b"  ]", b"}", b""]
    return b"\n".join(lines)


# ------------------------------------------------------------------ scenarios


async def start_triage_before_patch(env: WorkflowEnvironment, rev: str) -> None:
    """A triage run started by the old code, which stops (a deploy) while it waits."""
    client = env.client
    async with env.worker(task_queue=g.TASK_QUEUE, workflows=[SupportTriageBeforePatch],
                          activities=g.ACTIVITIES, build_id=f"golden-{rev}-before-patch",
                          identity="golden-generator-v1"):
        handle = await client.start_workflow(SupportTriageBeforePatch.run, "order #4711 missing",
                                             id="triage-before-patch", task_queue=g.TASK_QUEUE)

        async def waiting() -> bool:
            return (await handle.describe()).pending_timers == 1

        await wait_until(waiting, "the pre-patch triage run waiting for details")


async def run_scenarios(env: WorkflowEnvironment) -> None:
    client = env.client
    q = g.TASK_QUEUE

    # (d) first: the pre-patch run waits on a one-day timer, which time skipping would
    # fire as soon as anything else awaits a result
    old = client.get_workflow_handle("triage-before-patch")
    await old.signal(g.SupportTriage.customer_details, "the invoice says 3 items, got 2")
    print("triage-before-patch:", await old.result(timeout=30))

    new = await client.start_workflow(g.SupportTriage.run, "urgent: invoice charged twice",
                                      id="triage-patched", task_queue=q)

    async def triage_waiting() -> bool:
        return (await new.describe()).pending_timers == 1

    await wait_until(triage_waiting, "the patched triage run waiting for details")
    await new.signal(g.SupportTriage.customer_details, "see the attached invoice")
    print("triage-patched:", await new.result(timeout=30))

    # (a)
    research = await client.execute_workflow(g.ResearchAgent.run, "durable agents",
                                             id="research-durable-agents", task_queue=q)
    print("research-durable-agents:", research)
    assert research["notes"] == 7, research

    # (b)
    report = await client.execute_workflow(g.WriteReport.run, "q3 churn", id="report-q3-churn",
                                           task_queue=q)
    print("report-q3-churn:", report)
    assert report["fact_check"].startswith("not verified"), report

    # (c) a decision that comes in time, with feedback; the second opinion never comes
    approval = await client.start_workflow(g.HumanApproval.run, "raise the GPU budget",
                                           id="approval-gpu-budget", task_queue=q)

    async def awaiting_decision() -> bool:
        status = await approval.query(g.HumanApproval.status)
        return bool(status["phase"] == "awaiting decision")

    await wait_until(awaiting_decision, "the approval waiting for a decision")
    await approval.signal(g.HumanApproval.add_feedback, "cap it at 20 %")
    await approval.signal(g.HumanApproval.add_feedback, "review again in Q4")
    await approval.signal(g.HumanApproval.decide, True)
    result = await approval.result(timeout=30)
    print("approval-gpu-budget:", result, await approval.query(g.HumanApproval.status))
    assert result["outcome"].startswith("executed"), result

    # (c) no decision within three days: the timeout timer fires
    lapsed = await client.execute_workflow(g.HumanApproval.run, "rename the product",
                                           id="approval-lapsed", task_queue=q)
    print("approval-lapsed:", lapsed)
    assert lapsed["outcome"] == "rejected", lapsed

    # (e) updates (one rejected by the validator), continue-as-new after two turns
    chat = await client.start_workflow(g.ChatSession.run, {"title": "trip planning"},
                                       id="chat-trip-planning", task_queue=q)
    print("ask 1:", await chat.execute_update(g.ChatSession.ask, "where to go in May?"))
    try:
        await chat.execute_update(g.ChatSession.ask, "   ")
        raise AssertionError("the validator should have rejected an empty question")
    except UpdateRejectedError as err:
        print("rejected:", err.cause)
    print("ask 2:", await chat.execute_update(g.ChatSession.ask, "and for how long?"))
    first_run = (await client.get_workflow_handle("chat-trip-planning",
                                                  run_id=chat.run_id).describe())

    async def continued() -> bool:
        latest = await client.get_workflow_handle("chat-trip-planning").describe()
        return latest.run_id != first_run.run_id and latest.history_length >= 3

    await wait_until(continued, "the chat session continuing as new")
    print("ask 3:", await chat.execute_update(g.ChatSession.ask, "what should I pack?"))
    print("close:", await chat.execute_update(g.ChatSession.close))
    print("chat-trip-planning:", await chat.result(timeout=30))

    # (f) the slow tool times out; the user cancels while the child runs the test suite
    coder = await client.start_workflow(g.CodingAgent.run, "fix the flaky login test",
                                        id="coding-agent-cancelled", task_queue=q)

    async def tests_running() -> bool:
        return "coding-agent-cancelled.tests" in g.TOOLS_RUNNING

    await wait_until(tests_running, "the test suite running in the child")
    await coder.cancel("the user closed the tab")
    try:
        await coder.result(timeout=30)
        raise AssertionError("the cancelled coding agent completed")
    except WorkflowFailureError as err:
        print("coding-agent-cancelled:", err.status, err)
        assert err.status == "canceled", err


# ------------------------------------------------------------------ export


async def collect(env: WorkflowEnvironment) -> list[tuple[str, WorkflowHistory]]:
    """Every run's history, named ``<workflow id>.run-<n>.json`` (``n``: its place in the
    continue-as-new chain); checked to replay on the golden workflows."""
    client = env.client
    runs: dict[str, list[WorkflowHistory]] = {}
    async for description in client.iter_workflows():
        if description.status == WorkflowStatus.RUNNING:
            raise AssertionError(f"{description.workflow_id} is still running")
        handle = client.get_workflow_handle(description.workflow_id, run_id=description.run_id)
        runs.setdefault(description.workflow_id, []).append(await handle.fetch_history())
    histories: list[tuple[str, WorkflowHistory]] = []
    for workflow_id, chain in sorted(runs.items()):
        by_predecessor: dict[str | None, WorkflowHistory] = {}
        for history in chain:
            started = history.events[0]
            assert isinstance(started, WorkflowStarted)
            by_predecessor[started.continued_from_run_id] = history
        previous: str | None = None
        for index in range(len(chain)):
            history = by_predecessor[previous]
            histories.append((f"{workflow_id}.run-{index}.json", history))
            previous = history.run_id
    assert_replays(g.WORKFLOWS, *(history for _, history in histories))
    return histories


def write(histories: list[tuple[str, WorkflowHistory]], out: Path) -> list[Path]:
    """Replace the ``*.json`` files in ``out``; check each reads back as written."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.json"):
        stale.unlink()
    written = []
    for name, history in histories:
        path = out / name
        path.write_bytes(format_history(history))
        back = WorkflowHistory.from_file(path)
        assert back.events == history.events and back.to_json() == history.to_json(), name
        written.append(path)
    return written


def _pin_src(rev: str) -> str:
    """``src/`` as committed at ``rev`` (``git archive``), in a temporary directory."""
    directory = tempfile.mkdtemp(prefix="perdure-golden-src-")
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "src"], check=True,
                             capture_output=True, cwd=ROOT).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    return os.path.join(directory, "src")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=HISTORIES)
    parser.add_argument("--src-at", metavar="REV", nargs="?", const="HEAD",
                        help="record with src/ as committed at REV (default HEAD), not the "
                        "working tree's uncommitted src/")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    import perdure

    rev = _revision()
    pinned = os.environ.get(_PINNED)
    print(f"recording with Perdure from {os.path.dirname(perdure.__file__)} "
          f"({'src/ as committed at ' + rev if pinned else 'the working tree, HEAD ' + rev})")
    env = await WorkflowEnvironment.start_time_skipping()
    try:
        await start_triage_before_patch(env, rev)
        async with env.worker(task_queue=g.TASK_QUEUE, workflows=g.WORKFLOWS,
                              activities=g.ACTIVITIES, build_id=f"golden-{rev}",
                              identity="golden-generator"):
            await run_scenarios(env)
        histories = await collect(env)
    finally:
        await env.shutdown()
    for path in write(histories, args.out):
        history = WorkflowHistory.from_file(path)
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
              f"{history.workflow_type}, {len(history.events)} events")


if __name__ == "__main__":
    ARGS = _parse()
    if ARGS.src_at and os.environ.get(_PINNED) != ARGS.src_at:
        # run again, importing Perdure from the committed src/ (first on PYTHONPATH)
        pinned = _pin_src(ARGS.src_at)
        paths = [pinned, str(ROOT), os.environ.get("PYTHONPATH", "")]
        os.execve(sys.executable, [sys.executable, "-m", "tests.golden.generate", *sys.argv[1:]],
                  dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)),
                       **{_PINNED: ARGS.src_at, _PINNED_DIR: os.path.dirname(pinned)}))
    if os.environ.get(_PINNED_DIR, "").startswith(tempfile.gettempdir()):
        atexit.register(shutil.rmtree, os.environ[_PINNED_DIR], ignore_errors=True)
    asyncio.run(main(ARGS))
