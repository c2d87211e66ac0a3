"""``perdure replay``: check that the code on disk can continue the stored histories."""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any

from perdure._errors import ConfigurationError
from perdure.cli._exit import CommandError, ExitStatus
from perdure.cli._values import when, whole_number
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
        except Exception as exc:  # not found, or the module itself fails (a syntax error)
            raise ConfigurationError(
                f"cannot import {module_name!r} (from --workflows {spec}): "
                f"{type(exc).__name__}: {exc}"
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
            raise CommandError(f"no such history file or directory: {text}",
                               ExitStatus.NOT_FOUND)
    return files


def add_replay_parser(commands: Any) -> None:
    """Add ``replay`` to the ``perdure`` command's subcommands."""
    sub = commands.add_parser(
        "replay", help="replay stored histories against the code on disk; exit 1 if any fails",
        description="Replay histories (from the database, or exported files and directories) "
        "against the workflow code on disk. Prints ok or the first mismatch for each, and "
        "exits 1 if any history cannot be continued by this code, 3 if there was no history "
        "to check (a gate that checked nothing does not pass, unless --allow-empty).",
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
    sub.add_argument("--started-after", type=when, help="runs started at or after this date")
    sub.add_argument("--started-before", type=when, help="runs started before this date")
    sub.add_argument("--limit", type=whole_number(1, 1_000_000), default=1000,
                     help="at most this many runs from the database, 1 to 1000000 "
                     "(default 1000)")
    sub.add_argument("--allow-empty", action="store_true",
                     help="exit 0 when no history matched (default: exit 3, since nothing "
                     "was checked)")


async def run_replay(args: argparse.Namespace, url: str | None) -> int:
    """Run ``perdure replay``; print the report; 0 if every history replays, 1 if one does
    not, 3 if there was none to check (unless ``--allow-empty``)."""
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
    if not report and not args.allow_empty:
        where = ("the files and directories given hold no .json history" if args.files
                 else "no run in the database matched (by default: running runs only)")
        raise CommandError(
            f"no history to replay: {where}; nothing was checked (pass --allow-empty if "
            "that is expected)", ExitStatus.NOT_FOUND)
    return ExitStatus.OK if report.ok else ExitStatus.FAILED
