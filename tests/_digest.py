"""A digest of every row of every Perdure table: proof that a refused call changed nothing."""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

IGNORED = {"writer_commits"}
"""The PostgreSQL writer's commit markers: its bookkeeping, not workflows' data."""


class DatabaseDigest:
    """Reads the database a URL names on a connection of its own (read-only on SQLite)."""

    def __init__(self, url: str) -> None:
        self._sqlite = url.startswith("sqlite")
        if self._sqlite:
            path = url.split("://", 1)[1][1:].split("?", 1)[0]
            self._conn: Any = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            self._schema = ""
            return
        import psycopg

        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        self._schema = query.pop("schema", "public")
        plain = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        self._conn = psycopg.connect(plain, autocommit=True)

    def close(self) -> None:
        self._conn.close()

    def __call__(self) -> str:
        """SHA-256 over every row of every table Perdure keeps, each table's rows sorted."""
        digest = hashlib.sha256()
        for table, rows in sorted(self._tables().items()):
            if table in IGNORED:
                continue
            digest.update(f"{table}:{len(rows)}\n".encode())
            for row in sorted(repr(r) for r in rows):
                digest.update(row.encode("utf-8", "backslashreplace") + b"\n")
        return digest.hexdigest()

    def _tables(self) -> dict[str, list[tuple[object, ...]]]:
        if self._sqlite:
            names = [r[0] for r in self._conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%'")]
            return {n: [tuple(r) for r in self._conn.execute(f'SELECT * FROM "{n}"')]
                    for n in names}
        names = [r[0] for r in self._conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (self._schema,))]
        return {n: [tuple(r) for r in self._conn.execute(
            f'SELECT * FROM "{self._schema}"."{n}"')] for n in names}


def database_digest(url: str) -> str:
    """:class:`DatabaseDigest` once."""
    reader = DatabaseDigest(url)
    try:
        return reader()
    finally:
        reader.close()
