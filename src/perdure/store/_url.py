"""Database URLs: which store to open."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

from perdure._clock import Clock
from perdure._errors import InvalidDatabaseURLError
from perdure.store._base import WorkflowStore

__all__ = ["open_store"]

_EXAMPLES = "sqlite:///perdure.db (relative path) or sqlite:////var/lib/perdure.db (absolute)"


def open_store(url: str, *, clock: Clock | None = None, **options: object) -> WorkflowStore:
    """Open the store a database URL names (not yet connected: call ``migrate``)."""
    if not isinstance(url, str) or "://" not in url:
        raise InvalidDatabaseURLError(
            f"malformed database URL {url!r}: expected a URL such as {_EXAMPLES}"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("sqlite", "sqlite3"):
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
        for key, values in parse_qs(query).items():
            if key != "synchronous":
                raise InvalidDatabaseURLError(
                    f"unknown option {key!r} in SQLite URL {url!r}; supported: synchronous"
                )
            options.setdefault("synchronous", values[-1])
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
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit(url)
        raise InvalidDatabaseURLError(
            f"the PostgreSQL backend is not available in this version of Perdure "
            f"(host {parts.hostname!r}); use a SQLite URL such as {_EXAMPLES}"
        )
    raise InvalidDatabaseURLError(
        f"unsupported database URL scheme {scheme!r} in {url!r}; use {_EXAMPLES}"
    )
