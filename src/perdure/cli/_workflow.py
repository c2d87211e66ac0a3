"""``perdure workflow export | diff | reset | fork``: one workflow's history and its runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from perdure._errors import InvalidArgumentError
from perdure.client import Client, WorkflowHistory
from perdure.replay import diff_histories

__all__ = ["add_workflow_parser", "run_workflow_command"]


def add_workflow_parser(commands: Any) -> None:
    """Add ``workflow`` and its subcommands to the ``perdure`` command."""
    workflow = commands.add_parser("workflow", help="export, compare, reset and fork runs")
    subs = workflow.add_subparsers(dest="workflow_command", required=True)
    export = subs.add_parser("export", help="print a run's history as JSON (format version 1)")
    export.add_argument("workflow_id")
    export.add_argument("--run-id", help="this run (default: the latest run of the id)")
    export.add_argument("--output", "-o", help="write to this file instead of standard output")
    diff = subs.add_parser(
        "diff", help="two runs side by side, from the first event where they differ")
    diff.add_argument("a", help="a workflow id (latest run), ID:RUN_ID, or an exported file")
    diff.add_argument("b", help="the same, for the other side")
    diff.add_argument("--context", type=int, default=50, help="rows to show (default 50)")
    reset = subs.add_parser(
        "reset", help="end the run and start a new one from its first N events")
    reset.add_argument("workflow_id")
    fork = subs.add_parser(
        "fork", help="start a new workflow id from a run's first N events (original untouched)")
    fork.add_argument("workflow_id")
    fork.add_argument("new_id", help="the new workflow's id")
    fork.add_argument("--edit-result", action="append", default=[], metavar="N=JSON",
                      help="replace the recorded result of event N (an ActivityCompleted or "
                      "ChildWorkflowCompleted) with this JSON value (repeatable)")
    fork.add_argument("--task-queue", help="run the fork on another task queue")
    for sub in (reset, fork):
        where = sub.add_mutually_exclusive_group(required=sub is reset)
        where.add_argument("--to-event", type=int, metavar="N",
                           help="keep events 1..N (a cut inside an activation's commands "
                           "moves back, so that the activation runs again)")
        where.add_argument("--to-last-workflow-task", action="store_true",
                           help="run the last activation again")
        sub.add_argument("--run-id", help="this run (default: the latest run of the id)")
        sub.add_argument("--drop-signals", action="store_true",
                         help="do not deliver again the signals received after the cut")
    reset.add_argument("--reason", default="", help="recorded in the old run's history")
    for sub in (export, diff, reset, fork):
        sub.add_argument("--database-url", help="database URL (default: $PERDURE_DATABASE_URL)")


def _is_file(path: str) -> bool:
    return os.path.isfile(path)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


async def _history(client: Client, ref: str, run_id: str | None = None) -> WorkflowHistory:
    if run_id is None and _is_file(ref):
        return WorkflowHistory.from_file(ref)
    workflow_id = ref
    if run_id is None and ":" in ref:
        workflow_id, run_id = ref.rsplit(":", 1)
    return await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()


async def run_workflow_command(args: argparse.Namespace, url: str) -> int:
    """Run a ``perdure workflow`` subcommand."""
    client = await Client.connect(url, migrate=False)
    try:
        if args.workflow_command == "export":
            history = await _history(client, args.workflow_id, args.run_id)
            data = history.to_json()
            if args.output:
                _write(args.output, data + b"\n")
            else:
                sys.stdout.buffer.write(data + b"\n")
                sys.stdout.flush()
            return 0
        if args.workflow_command == "diff":
            diff = diff_histories(await _history(client, args.a),
                                  await _history(client, args.b), context=args.context)
            print(diff.describe())
            return 0 if diff.first_difference is None else 1
        handle = client.get_workflow_handle(args.workflow_id, run_id=args.run_id)
        if args.workflow_command == "reset":
            new = await handle.reset(to_event=args.to_event, reason=args.reason,
                                     to_last_workflow_task=args.to_last_workflow_task,
                                     reapply_signals=not args.drop_signals)
            print(f"reset {args.workflow_id}: new run {new.run_id}")
            return 0
        edits = {}
        for text in args.edit_result:
            number, _, value = text.partition("=")
            try:
                edits[int(number)] = json.loads(value)
            except ValueError:
                raise InvalidArgumentError(
                    f"--edit-result {text!r}: write it as N=JSON, e.g. 12='\"yes\"'"
                ) from None
        new = await handle.fork(args.new_id, to_event=args.to_event,
                                to_last_workflow_task=args.to_last_workflow_task,
                                edit_results=edits, reapply_signals=not args.drop_signals,
                                task_queue=args.task_queue)
        print(f"forked {args.workflow_id} into {new.workflow_id} (run {new.run_id})")
        return 0
    finally:
        await client.close()
