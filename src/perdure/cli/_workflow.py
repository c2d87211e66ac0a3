"""``perdure workflow export | diff | reset | fork``: one workflow's history and its runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from perdure._errors import InvalidArgumentError, WorkflowNotFoundError
from perdure.cli._exit import CommandError, ExitStatus
from perdure.cli._values import whole_number
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
        "diff", help="two runs side by side, from the first event where they differ; exit 1 "
        "if they differ")
    diff.add_argument("a", help="a workflow id (latest run), ID:RUN_ID, or an exported file")
    diff.add_argument("b", help="the same, for the other side")
    diff.add_argument("--context", type=whole_number(0, 1_000_000), default=50,
                      help="rows to show (default 50)")
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
        where.add_argument("--to-event", type=whole_number(1, 10**9), metavar="N",
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


def _check_output(path: str) -> None:
    """Refuse, before any work, an output file that cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CommandError(f"--output {path}: is a directory; name a file",
                           ExitStatus.USAGE)
    if not os.path.isdir(folder):
        raise CommandError(f"--output {path}: no such directory {folder}; create it first",
                           ExitStatus.USAGE)


def _write(path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise CommandError(f"--output {path}: cannot write it: {exc.strerror or exc}",
                           ExitStatus.USAGE) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _edits(texts: list[str]) -> dict[int, Any]:
    """``--edit-result N=JSON`` values: event numbers and the JSON that replaces them."""
    edits = {}
    for text in texts:
        number, _, value = text.partition("=")
        try:
            event = int(number)
            edits[event] = json.loads(value, parse_constant=_refuse_constant)
        except ValueError:
            raise InvalidArgumentError(
                f"--edit-result {text!r}: write it as N=JSON, e.g. 12='\"yes\"'"
            ) from None
        if event < 1:
            raise InvalidArgumentError(f"--edit-result {text!r}: events are numbered from 1")
    return edits


async def _history(client: Client, ref: str, run_id: str | None = None) -> WorkflowHistory:
    if run_id is None and _is_file(ref):
        return WorkflowHistory.from_file(ref)
    workflow_id = ref
    if run_id is None and ":" in ref:
        workflow_id, run_id = ref.rsplit(":", 1)
    try:
        return await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    except WorkflowNotFoundError as exc:
        if ref.endswith(".json") or os.sep in ref:
            raise WorkflowNotFoundError(f"{exc}, and there is no file {ref!r}") from None
        raise


async def run_workflow_command(args: argparse.Namespace, url: str) -> int:
    """Run a ``perdure workflow`` subcommand."""
    if args.workflow_command == "export" and args.output:
        _check_output(args.output)
    if args.workflow_command == "fork":
        _edits(args.edit_result)  # bad input is refused before connecting
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
            return ExitStatus.OK if diff.first_difference is None else ExitStatus.FAILED
        handle = client.get_workflow_handle(args.workflow_id, run_id=args.run_id)
        if args.workflow_command == "reset":
            new = await handle.reset(to_event=args.to_event, reason=args.reason,
                                     to_last_workflow_task=args.to_last_workflow_task,
                                     reapply_signals=not args.drop_signals)
            print(f"reset {args.workflow_id}: new run {new.run_id}")
            return 0
        new = await handle.fork(args.new_id, to_event=args.to_event,
                                to_last_workflow_task=args.to_last_workflow_task,
                                edit_results=_edits(args.edit_result),
                                reapply_signals=not args.drop_signals,
                                task_queue=args.task_queue)
        print(f"forked {args.workflow_id} into {new.workflow_id} (run {new.run_id})")
        return 0
    finally:
        await client.close()
