"""``perdure db migrate`` and ``perdure db status``.

Every command takes ``--database-url`` and falls back to ``$PERDURE_DATABASE_URL``,
as :meth:`perdure.Client.connect` does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from perdure._errors import PerdureError
from perdure.store import open_store
from perdure.store._schema import SCHEMA_VERSION

__all__ = ["main"]


def _database_url(args: argparse.Namespace) -> str:
    url = args.database_url or os.environ.get("PERDURE_DATABASE_URL")
    if not url:
        raise SystemExit(
            "perdure: no database: pass --database-url URL or set PERDURE_DATABASE_URL "
            "(for example postgresql://user@host:5432/dbname or sqlite:///perdure.db)"
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


def _redact(url: str) -> str:
    """The URL without its password, for printing."""
    if "://" not in url or "@" not in url.split("://", 1)[1].split("/", 1)[0]:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.split("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in credentials else ''}@{host}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perdure", description="Perdure: durable execution for AI agents."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    db = commands.add_parser("db", help="create, upgrade and inspect the database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    for name, help_text in (
        ("migrate", "create the schema, or upgrade it to this version of Perdure"),
        ("status", "print the schema version; exit 1 unless it matches this Perdure"),
    ):
        sub = db_commands.add_parser(name, help=help_text)
        sub.add_argument("--database-url", help="database URL (default: $PERDURE_DATABASE_URL)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``perdure`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    url = _database_url(args)
    try:
        if args.db_command == "migrate":
            print(asyncio.run(_migrate(url)))
            return 0
        message, status = asyncio.run(_status(url))
        print(message)
        return status
    except PerdureError as exc:
        print(f"perdure: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
