"""``perdure db migrate | status | prune``, ``perdure replay`` and ``perdure workflow ...``.

Every command takes ``--database-url`` and falls back to ``$PERDURE_DATABASE_URL``,
as :meth:`perdure.Client.connect` does. Whatever goes wrong is one line on standard
error and an exit status that says what kind of thing went wrong (``_exit``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from perdure._errors import SchemaVersionError
from perdure.cli._agent import add_agent_parser, run_agent_command
from perdure.cli._exit import CommandError, CommandParser, ExitStatus, report_error
from perdure.cli._replay import add_replay_parser, run_replay
from perdure.cli._values import duration, whole_number
from perdure.cli._workflow import add_workflow_parser, run_workflow_command
from perdure.store import WorkflowStore, open_store
from perdure.store._schema import SCHEMA_VERSION

__all__ = ["main"]


def _database_url(args: argparse.Namespace, *, required: bool = True) -> str:
    url = args.database_url or os.environ.get("PERDURE_DATABASE_URL")
    if not url and not required:
        return ""
    if not url:
        raise CommandError(
            "no database: pass --database-url URL or set PERDURE_DATABASE_URL "
            "(for example postgresql://user@host:5432/dbname or sqlite:///perdure.db)",
            ExitStatus.USAGE,
        )
    return str(url)


async def _migrate(url: str) -> str:
    store = open_store(url)
    try:
        before = await store.schema_version()
        await store.migrate()
        after = await store.schema_version()
    finally:
        await store.close()
    if before == after:
        return f"{_redact(url)}: schema version {after}, up to date"
    return f"{_redact(url)}: schema migrated from version {before} to {after}"


async def _status(url: str) -> tuple[str, int]:
    store = open_store(url)
    try:
        version = await store.schema_version()
    finally:
        await store.close()
    if version == SCHEMA_VERSION:
        return f"{_redact(url)}: schema version {version}, up to date", 0
    if version > SCHEMA_VERSION:
        return (f"{_redact(url)}: schema version {version} is newer than this Perdure's "
                f"{SCHEMA_VERSION}; upgrade Perdure"), 1
    return (f"{_redact(url)}: schema version {version}, this Perdure needs {SCHEMA_VERSION}; "
            "run `perdure db migrate`"), 1


async def _prune(url: str, older_than: float, batch: int) -> str:
    store = open_store(url)
    try:
        await _require_current_schema(store)
        # nothing closed before 1970: a cutoff past it would only be refused
        cutoff = max(0.0, store.clock.now() - older_than)
        deleted = 0
        while True:
            count = await store.delete_closed_runs(cutoff, batch)
            deleted += count
            if count < batch:
                break
    finally:
        await store.close()
    return f"{_redact(url)}: deleted {deleted} closed runs (and their histories)"


async def _require_current_schema(store: WorkflowStore) -> None:
    version = await store.schema_version()
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the database has Perdure schema version {version}, this Perdure needs "
            f"{SCHEMA_VERSION}: run `perdure db migrate` first"
        )


def _redact(url: str) -> str:
    """The URL without its password, for printing."""
    if "://" not in url or "@" not in url.split("://", 1)[1].split("/", 1)[0]:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.split("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in credentials else ''}@{host}"


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="perdure", description="Perdure: durable execution for AI agents.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    db = commands.add_parser("db", help="create, upgrade and inspect the database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    for name, help_text in (
        ("migrate", "create the schema, or upgrade it to this version of Perdure"),
        ("status", "print the schema version; exit 1 unless it matches this Perdure"),
        ("prune", "delete closed workflow runs, and their histories, older than a duration"),
    ):
        sub = db_commands.add_parser(name, help=help_text)
        sub.add_argument("--database-url", help="database URL (default: $PERDURE_DATABASE_URL)")
        if name == "prune":
            sub.add_argument("--older-than", type=duration, required=True,
                             help="closed at least this long ago: 30d, 12h, 90m, 3600s "
                             "(finite, at most 100 years)")
            sub.add_argument("--batch", type=whole_number(1, 100_000), default=1000,
                             help="runs deleted per transaction, 1 to 100000 (default 1000)")
    add_replay_parser(commands)
    add_workflow_parser(commands)
    add_agent_parser(commands)
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "replay":
        return asyncio.run(run_replay(args, _database_url(args, required=False) or None))
    url = _database_url(args)
    if args.command == "workflow":
        return asyncio.run(run_workflow_command(args, url))
    if args.command == "agent":
        return asyncio.run(run_agent_command(args, url))
    if args.db_command == "migrate":
        print(asyncio.run(_migrate(url)))
        return ExitStatus.OK
    if args.db_command == "prune":
        print(asyncio.run(_prune(url, args.older_than, args.batch)))
        return ExitStatus.OK
    message, status = asyncio.run(_status(url))
    print(message)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``perdure`` command; returns the exit status (see ``perdure --help``)."""
    try:
        status = _run(_parser().parse_args(argv))
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except SystemExit:  # --help, --version: argparse's own exits
        raise
    except BaseException as exc:  # every error: one line and its status (_exit)
        return report_error(exc)


if __name__ == "__main__":
    sys.exit(main())
