"""Small helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def wait_until(
    check: Callable[[], Awaitable[Any]], *, what: str, timeout: float = 5.0
) -> Any:
    """Poll ``check`` until it returns a truthy value (or fail, naming ``what``)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")
