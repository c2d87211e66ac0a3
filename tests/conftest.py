"""Shared fixtures: every backend-facing test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from perdure.testing import WorkflowEnvironment
from tests._databases import BACKENDS, database_url_for


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend under test: ``sqlite`` or ``postgres``."""
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on the backend under test."""
    with database_url_for(backend, tmp_path) as url:
        yield url


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[WorkflowEnvironment]:
    """A fresh time-skipping environment on the backend under test."""
    environment = await WorkflowEnvironment.start_time_skipping(database_url)
    try:
        yield environment
    finally:
        await environment.shutdown()


@pytest.fixture
async def real_env(database_url: str) -> AsyncIterator[WorkflowEnvironment]:
    """A fresh environment on the real clock (for timeouts measured in real time)."""
    environment = await WorkflowEnvironment.start_local(database_url)
    try:
        yield environment
    finally:
        await environment.shutdown()


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Print a summary line past pytest's output capture, so that it reaches the CI log
    (the chaos tests report how many activities ran more than once)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def write(line: str) -> None:
        with capture.global_and_fixture_disabled():
            print(line, flush=True)

    return write
