"""Test databases: a temporary SQLite file, or a throwaway schema on the real PostgreSQL.

PostgreSQL is found at ``$PERDURE_TEST_POSTGRES_URL`` (default: the local server,
database ``test``). If it cannot be reached, PostgreSQL tests skip and say why,
unless ``PERDURE_REQUIRE_POSTGRES=1`` (CI sets it), where they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import pytest

POSTGRES_URL = os.environ.get(
    "PERDURE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
BACKENDS = ["sqlite", "postgres"]


@cache
def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]')"
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {POSTGRES_URL} is unreachable: {str(exc).strip()}"
    return None


def require_postgres() -> None:
    """Skip (locally) or fail (CI) when PostgreSQL is not there."""
    problem = postgres_problem()
    if problem is None:
        return
    if os.environ.get("PERDURE_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PERDURE_REQUIRE_POSTGRES=1 but {problem}")
    pytest.skip(problem)


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def database_url_for(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of ``backend``; removed afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'perdure.db'}"
        return
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}schema={schema}"
    finally:
        drop_schema(schema)
