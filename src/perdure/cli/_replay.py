"""``perdure replay``: check that the code on disk can continue the stored histories."""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from perdure._errors import ConfigurationError
from perdure.client import Client, WorkflowStatus
from perdure.replay import Replayer, ReplayReport
from perdure.workflow._definition import get_workflow_definition

__all__ = ["add_replay_parser", "load_workflows", "run_replay"]


def load_workflows(specs: list[str]) -> list[type]:
    """``module:attr`` (a workflow class, or a list of them) or ``module`` (every
    ``@workflow.defn`` class it defines), imported from the current directory too."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    found: list[type] = []
    for spec in specs:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigurationError(
                f"cannot import {module_name!r} (from --workflows {spec}): {exc}"
            ) from None
        if attr:
            try:
                value: Any = getattr(module, attr)
            except AttributeError:
                raise ConfigurationError(f"module {module_name!r} has no {attr!r}") from None
            values = list(value) if isinstance(value, list | tuple | set) else [value]
        else:
            values = [v for _, v in inspect.getmembers(module, inspect.isclass)
                      if v.__module__ == module.__name__]
        classes = [v for v in values if get_workflow_definition(v) is not None]
        if attr and len(classes) != len(values):
            raise ConfigurationError(f"{spec} is not a @workflow.defn class (or a list of them)")
        if not classes:
            raise ConfigurationError(f"{spec} defines no @workflow.defn class")
        found += [c for c in classes if c not in found]
    return found


def _history_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            files += sorted(path.rglob("*.json"))
        elif path.exists():
            files.append(path)
        else:
            raise ConfigurationError(f"no such history file or directory: {text}")
    return files


def _when(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date: write it as 2026-11-29 or 2026-11-29T08:00:00+00:00"
        ) from None
    if value.tzinfo is None:
        from datetime import UTC

        value = value.replace(tzinfo=UTC)
    return value


def add_replay_parser(commands: Any) -> None:
    """Add ``replay`` to the ``perdure`` command's subcommands."""
    sub = commands.add_parser(
        "replay", help="replay stored histories against the code on disk; exit 1 if any fails",
        description="Replay histories (from the database, or exported files and directories) "
        "against the workflow code on disk. Prints ok or the first mismatch for each, and "
        "exits 1 if any history cannot be continued by this code.",
    )
    sub.add_argument("files", nargs="*", help="exported history files or directories of them")
    sub.add_argument("--workflows", action="append", required=True, metavar="MODULE[:ATTR]",
                     help="the workflow code: a module (all its workflow classes) or "
                     "module:Class or module:LIST (repeatable)")
    sub.add_argument("--database-url", help="database URL (default: $PERDURE_DATABASE_URL); "
                     "histories come from the database unless files are given")
    sub.add_argument("--type", dest="workflow_type", help="only this workflow type")
    sub.add_argument("--status", action="append", choices=[s.value for s in WorkflowStatus],
                     help="runs of this status (repeatable; default: running)")
    sub.add_argument("--include-closed", action="store_true",
                     help="closed runs too (every status)")
    sub.add_argument("--started-after", type=_when, help="runs started at or after this date")
    sub.add_argument("--started-before", type=_when, help="runs started before this date")
    sub.add_argument("--limit", type=int, default=1000,
                     help="at most this many runs from the database (default 1000)")


async def run_replay(args: argparse.Namespace, url: str | None) -> int:
    """Run ``perdure replay``; print the report; 0 if every history replays, else 1."""
    replayer = Replayer(load_workflows(args.workflows))
    report = ReplayReport()
    if args.files:
        report = replayer.replay_files(_history_files(args.files))
    else:
        if url is None:
            raise ConfigurationError(
                "perdure replay needs histories: pass exported files, or --database-url "
                "(or set PERDURE_DATABASE_URL)"
            )
        statuses = (list(WorkflowStatus) if args.include_closed
                    else args.status or [WorkflowStatus.RUNNING])
        client = await Client.connect(url, migrate=False)
        try:
            report = await replayer.replay_from_database(
                client, workflow_type=args.workflow_type, statuses=statuses,
                started_after=args.started_after, started_before=args.started_before,
                limit=args.limit,
            )
        finally:
            await client.close()
    print(report.describe())
    return 0 if report.ok else 1
