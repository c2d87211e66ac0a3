"""Shared fixtures: a time-skipping environment on a real SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from perdure.testing import WorkflowEnvironment


@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """A fresh time-skipping environment on a temporary SQLite file."""
    environment = await WorkflowEnvironment.start_time_skipping()
    try:
        yield environment
    finally:
        await environment.shutdown()


@pytest.fixture
async def real_env() -> AsyncIterator[WorkflowEnvironment]:
    """A fresh environment on the real clock (for timeouts measured in real time)."""
    environment = await WorkflowEnvironment.start_local()
    try:
        yield environment
    finally:
        await environment.shutdown()
