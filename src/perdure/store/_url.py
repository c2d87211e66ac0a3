"""Database URLs: which store to open."""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from perdure._clock import Clock
from perdure._errors import InvalidDatabaseURLError
from perdure.store._base import WorkflowStore

__all__ = ["open_store"]

_EXAMPLES = (
    "sqlite:///perdure.db (relative path), sqlite:////var/lib/perdure.db (absolute) or "
    "postgresql://user@host:5432/dbname"
)
_PG_OPTIONS = ("schema", "pool_size")


def open_store(url: str, *, clock: Clock | None = None, **options: object) -> WorkflowStore:
    """Open the store a database URL names (not yet connected: call ``migrate``)."""
    if not isinstance(url, str) or "://" not in url:
        raise InvalidDatabaseURLError(
            f"malformed database URL {url!r}: expected a URL such as {_EXAMPLES}"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("sqlite", "sqlite3"):
        return _open_sqlite(url, clock, options)
    if scheme in ("postgresql", "postgres"):
        return _open_postgres(url, clock, options)
    raise InvalidDatabaseURLError(
        f"unsupported database URL scheme {scheme!r} in {url!r}; use {_EXAMPLES}"
    )


def _open_sqlite(url: str, clock: Clock | None, options: dict[str, object]) -> WorkflowStore:
    path = url.split("://", 1)[1]
    if not path.startswith("/") or path == "/":
        raise InvalidDatabaseURLError(
            f"malformed SQLite URL {url!r}: the path must follow three slashes, as in "
            f"{_EXAMPLES}"
        )
    path = path[1:]
    query = ""
    if "?" in path:
        path, query = path.split("?", 1)
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "synchronous":
            raise InvalidDatabaseURLError(
                f"unknown option {key!r} in SQLite URL {url!r}; supported: synchronous"
            )
        options["synchronous"] = value
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InvalidDatabaseURLError(
            f"SQLite URL {url!r} points into {directory!r}, which does not exist; create "
            "the directory or fix the path"
        )
    from perdure.store._sqlite import SqliteStore

    synchronous = str(options.get("synchronous", "FULL")).upper()
    if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise InvalidDatabaseURLError(
            f"synchronous={synchronous!r} is not one of OFF, NORMAL, FULL, EXTRA"
        )
    return SqliteStore(path, clock=clock, synchronous=synchronous, url=url)


def _open_postgres(url: str, clock: Clock | None, options: dict[str, object]) -> WorkflowStore:
    """``postgresql://user:password@host:port/dbname?schema=...&pool_size=...``; other
    query parameters (sslmode, connect_timeout, ...) go to libpq unchanged."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidDatabaseURLError(f"malformed PostgreSQL URL {url!r}: {exc}") from exc
    if not parts.path.strip("/"):
        raise InvalidDatabaseURLError(
            f"PostgreSQL URL {url!r} names no database; add one, as in "
            "postgresql://user@host:5432/dbname"
        )
    ours: dict[str, str] = {}
    libpq: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        (ours.__setitem__(key, value) if key in _PG_OPTIONS else libpq.append((key, value)))
    schema = ours.get("schema") or None
    if schema is not None and not (schema.replace("_", "a").isalnum() and schema.isascii()
                                   and not schema[0].isdigit() and len(schema) <= 50):
        raise InvalidDatabaseURLError(
            f"schema={schema!r} in {url!r} is not a plain identifier (letters, digits and _, "
            "at most 50 characters, not starting with a digit)"
        )
    pool_size = 2
    if "pool_size" in ours or "pool_size" in options:
        raw = ours.get("pool_size", options.get("pool_size"))
        try:
            pool_size = int(str(raw))
        except ValueError:
            pool_size = 0
        if not 1 <= pool_size <= 64:
            raise InvalidDatabaseURLError(
                f"pool_size={raw!r} in {url!r} must be a whole number from 1 to 64"
            )
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise InvalidDatabaseURLError(
            "PostgreSQL URLs need the psycopg driver: pip install 'perdure[postgres]'"
        ) from exc
    from perdure.store._postgres import PostgresStore

    # quote, not quote_plus: libpq reads '+' literally (options=-c%20x%3Dy must stay so)
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path,
                           urlencode(libpq, quote_via=quote), ""))
    describe = f"{parts.hostname or 'localhost'}:{port or 5432}{parts.path}"
    if parts.username:
        describe = f"{parts.username}@{describe}"
    return PostgresStore(conninfo, url=url, schema=schema, pool_size=pool_size, clock=clock,
                         describe=describe)
