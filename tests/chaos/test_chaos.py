"""Chaos: 500 workflows of 10 activities on 4 worker processes, one SIGKILLed every second.

A replacement starts after each kill. Every workflow must complete with the right
result, and every activity completion must be in its history exactly once. Activities
may run more than once (at-least-once), never zero times: the test prints how many did.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from perdure import Client
from tests._databases import database_url_for, require_postgres

from ._harness import (
    WorkerFleet,
    count_closed,
    start_workflows,
    stuck_report,
    verify_all,
    within,
)

pytestmark = pytest.mark.slow

WORKFLOWS = 500
ACTIVITIES = 10
WORKERS = 4
KILL_EVERY = 1.0
TIMEOUT = 75.0
"""Seconds for the whole run, from the first start to the last completion."""


async def test_random_worker_sigkilled_every_second(
    tmp_path: Path, report: Callable[[str], None]
) -> None:
    require_postgres()
    rng = random.Random()
    with database_url_for("postgres", tmp_path) as url:
        # 40-120 ms activities, 12 slots a worker: about 10 s of work, so about 10 kills
        fleet = WorkerFleet(url, tmp_path, step_seconds=0.08, activity_slots=12)
        client = await Client.connect(url)
        starter: asyncio.Task[None] | None = None
        try:
            began = time.monotonic()
            deadline = began + TIMEOUT
            await fleet.wait_ready([fleet.start() for _ in range(WORKERS)])
            keys = range(WORKFLOWS)
            # the killing starts while the workflows are still being started
            starter = asyncio.create_task(start_workflows(client, keys, ACTIVITIES))
            next_kill = time.monotonic() + KILL_EVERY
            closed = 0
            while not starter.done() or closed < WORKFLOWS:
                assert not fleet.unexpected_exits(), "\n".join(fleet.unexpected_exits())
                now = time.monotonic()
                if now > deadline:
                    pytest.fail(
                        f"only {closed} of {WORKFLOWS} workflows closed within {TIMEOUT:g}s "
                        f"({fleet.kills} kills)\n{await stuck_report(client, fleet)}"
                    )
                if now >= next_kill:
                    # a random worker that is serving (not one still starting up)
                    candidates = [w for w in fleet.live() if w.ready()] or fleet.live()
                    if candidates:
                        fleet.kill(rng.choice(candidates))
                    fleet.start()
                    next_kill = now + KILL_EVERY
                await asyncio.sleep(0.1)
                if starter.done():
                    await starter  # raises if a start failed
                    closed = await within(count_closed(client, WORKFLOWS), deadline,
                                          "list_workflows")
            elapsed = time.monotonic() - began

            verified = await verify_all(client, fleet, keys, ACTIVITIES)
            fleet.assert_no_errors_logged()
            report(
                f"\nchaos: {verified.workflows} workflows, {verified.activities} activities, "
                f"{fleet.kills} kills, {verified.reexecuted} activities executed more than "
                f"once, {verified.executions} executions in all, {elapsed:.1f}s wall"
            )
            assert fleet.kills >= 3, f"the run ended before the chaos began ({fleet.kills} kills)"
        finally:
            if starter is not None and not starter.done():
                starter.cancel()
            fleet.stop_all()
            await client.close()
