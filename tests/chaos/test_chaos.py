"""Chaos: 500 workflows of 10 activities on 4 worker processes, one SIGKILLed every second.

Each round starts a replacement worker; once it serves (and a second has passed), a
random other serving worker is SIGKILLed. Every workflow must complete with the right
result, and every activity completion must be in its history exactly once. Activities
may run more than once (at-least-once), never zero times: the test prints how many did.

Progress is judged per kill, not by the clock: every workflow must finish within
``MAX_KILLS`` kills (about 20 are usual), and activity completions must grow over any
``STALL_KILLS`` kills in a row. On a loaded machine a worker process takes seconds to
start; a kill every wall-clock second then killed workers before or just after they
began to serve, and the fleet spent its time starting up (see
``benchmarks/chaos_under_load.py``). Waiting for the replacement slows the chaos down
on such a machine instead of turning it into a start-up benchmark; unloaded, start-up
takes well under a second and the kills still come every second.
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
    completed_activities,
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
"""Seconds between kills, at least (and until the replacement serves)."""
MAX_KILLS = 60
"""Every workflow must have closed within this many kills."""
STALL_KILLS = 5
"""Activity completions must grow over any this many kills in a row."""
START_UP = 120.0
"""Seconds a replacement worker may take to serve (a hang guard, not a measure)."""
HANG_GUARD = 900.0
"""Seconds after which store calls are taken for hung (progress is judged per kill)."""


async def test_random_worker_sigkilled_every_second(
    tmp_path: Path, report: Callable[[str], None]
) -> None:
    require_postgres()
    rng = random.Random()
    with database_url_for("postgres", tmp_path) as url:
        # 40-120 ms activities, 12 slots a worker: about 10 s of work, so about 10-20 kills
        fleet = WorkerFleet(url, tmp_path, step_seconds=0.08, activity_slots=12)
        client = await Client.connect(url)
        starter: asyncio.Task[None] | None = None
        try:
            began = time.monotonic()
            deadline = began + HANG_GUARD
            await fleet.wait_ready([fleet.start() for _ in range(WORKERS)], timeout=START_UP)
            keys = range(WORKFLOWS)
            # the killing starts while the workflows are still being started
            starter = asyncio.create_task(start_workflows(client, keys, ACTIVITIES))
            replacement = fleet.start()
            next_kill = time.monotonic() + KILL_EVERY
            completions: list[int] = []  # activity completions at each kill
            closed = 0
            while not starter.done() or closed < WORKFLOWS:
                assert not fleet.unexpected_exits(), "\n".join(fleet.unexpected_exits())
                if fleet.kills >= MAX_KILLS:
                    pytest.fail(
                        f"only {closed} of {WORKFLOWS} workflows closed within {MAX_KILLS} "
                        f"kills; activity completions at each kill: {completions}\n"
                        f"{await stuck_report(client, fleet)}")
                now = time.monotonic()
                if now >= next_kill and replacement.ready():
                    fleet.kill(fleet.victim(rng, spare=replacement))
                    completions.append(await within(completed_activities(url), deadline,
                                                    "counting completions"))
                    if (len(completions) > STALL_KILLS
                            and completions[-1] == completions[-1 - STALL_KILLS]):
                        pytest.fail(
                            f"no activity completed over {STALL_KILLS} kills in a row; at "
                            f"each kill: {completions}\n{await stuck_report(client, fleet)}")
                    replacement = fleet.start()
                    next_kill = now + KILL_EVERY
                elif time.monotonic() - replacement.started > START_UP:
                    pytest.fail(f"a replacement worker did not serve within {START_UP:g}s:"
                                f"\n{fleet.stderr_tail()}")
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
                f"{fleet.kills} kills ({verified.activities / max(fleet.kills, 1):.0f} "
                f"activities per kill), {verified.reexecuted} activities executed more than "
                f"once, {verified.executions} executions in all, {elapsed:.1f}s wall"
            )
            assert fleet.kills >= 3, f"the run ended before the chaos began ({fleet.kills} kills)"
        finally:
            if starter is not None and not starter.done():
                starter.cancel()
            fleet.stop_all()
            await client.close()
