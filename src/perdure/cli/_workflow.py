"""``perdure workflow export | diff``: one workflow's history, out of the database."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

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
    for sub in (export, diff):
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
        diff = diff_histories(await _history(client, args.a), await _history(client, args.b),
                              context=args.context)
        print(diff.describe())
        return 0 if diff.first_difference is None else 1
    finally:
        await client.close()
