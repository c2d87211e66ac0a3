"""The chaos test's run (500 workflows of 10 activities on 4 worker processes, a random one
SIGKILLed every second and replaced), measured, optionally with CPU hogs beside it.

    .venv/bin/python benchmarks/chaos_under_load.py                 # as the test runs it
    .venv/bin/python benchmarks/chaos_under_load.py --hogs 16       # 16 busy processes too
    .venv/bin/python benchmarks/chaos_under_load.py --hogs 16 --policy clock   # as it ran

It answers: does the fleet progress per kill, and when it does not, why? A thread of
its own watches the ``workers`` table (every 50 ms) and reports

* **declared dead while alive**: a worker's liveness row deleted by another worker's
  sweep while its process had not been killed (its heartbeat starved, not its process);
* the **heartbeat gaps** of live workers (longest time between two heartbeats);
* **start-up**: how long a new worker process takes to serve (spawn to ``ready``), and
  how long it then lives before the chaos kills it, and how many activities it ran.

Nothing here asserts; it prints figures. Needs PostgreSQL (as the chaos test).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests._databases import database_url_for  # noqa: E402
from tests.chaos._harness import (  # noqa: E402
    WorkerFleet,
    WorkerProcess,
    completed_activities,
    count_closed,
    start_workflows,
)

from perdure import Client  # noqa: E402

HOG = "while True: pass"


class LivenessWatch(threading.Thread):
    """Polls the workers table: heartbeat gaps, and rows deleted while their process lived."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True, name="liveness-watch")
        self.base, _, self.schema = url.partition("?schema=")
        self.stop = threading.Event()
        self.last: dict[str, float] = {}
        self.gaps: dict[str, float] = {}
        self.gone: list[tuple[str, float, float]] = []
        """(worker id, time.time() when its row was first seen missing, its last heartbeat)."""

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.base, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{self.schema}"')
            while not self.stop.wait(0.05):
                try:
                    rows = dict(conn.execute("SELECT worker_id, heartbeat_at FROM workers")
                                .fetchall())
                except psycopg.Error:
                    continue
                now = time.time()
                for worker_id, beat in rows.items():
                    previous = self.last.get(worker_id)
                    if previous is not None and beat > previous:
                        self.gaps[worker_id] = max(self.gaps.get(worker_id, 0.0),
                                                   beat - previous)
                    self.last[worker_id] = beat
                for worker_id in list(self.last):
                    if worker_id not in rows:
                        self.gone.append((worker_id, now, self.last.pop(worker_id)))


def pid_of(worker_id: str) -> int:
    return int(worker_id.split(":")[1])


async def chaos(url: str, logs: Path, seconds: float, kill_every: float, workflows: int,
                activities: int, workers: int, policy: str) -> dict[str, object]:
    fleet = WorkerFleet(url, logs, step_seconds=0.08, activity_slots=12)
    killed_at: dict[int, float] = {}
    ready_at: dict[int, float] = {}
    spawned_at: dict[int, float] = {}
    client = await Client.connect(url)
    watch = LivenessWatch(url)
    watch.start()

    def spawn() -> WorkerProcess:
        worker = fleet.start()
        spawned_at[worker.proc.pid] = time.time()
        return worker

    def note_ready() -> None:
        for w in fleet.workers:
            if w.proc.pid not in ready_at and w.ready():
                ready_at[w.proc.pid] = time.time()

    ready_at_kill: list[int] = []
    completions_at_kill: list[int] = []
    rng = random.Random(7)
    began = time.monotonic()
    try:
        await fleet.wait_ready([spawn() for _ in range(workers)], timeout=120)
        note_ready()
        keys = range(workflows)
        starter = asyncio.create_task(start_workflows(client, keys, activities))
        next_kill = time.monotonic() + kill_every
        closed = 0
        progress: list[tuple[float, int, int]] = []
        replacement = spawn() if policy == "ready" else None
        while time.monotonic() - began < seconds and (not starter.done() or closed < workflows):
            note_ready()
            now = time.monotonic()
            if now >= next_kill and (replacement is None or replacement.ready()):
                # clock: kill a random serving worker every second, then start another
                # (the chaos test before); ready: start the replacement first, and kill
                # another serving worker once it serves (the chaos test now)
                ready_at_kill.append(sum(w.ready() for w in fleet.live()))
                if fleet.live():
                    victim = fleet.victim(rng, spare=replacement)
                    fleet.kill(victim)
                    killed_at[victim.proc.pid] = time.time()
                    completions_at_kill.append(await completed_activities(url))
                started = spawn()
                replacement = started if policy == "ready" else None
                next_kill = now + kill_every
            await asyncio.sleep(0.1)
            if starter.done():
                closed = await count_closed(client, workflows)
                progress.append((now - began, fleet.kills, closed))
        elapsed = time.monotonic() - began
        if not starter.done():
            starter.cancel()
        closed = await count_closed(client, workflows) if starter.done() else 0
    finally:
        watch.stop.set()
        fleet.stop_all()
        await client.close()
    watch.join(timeout=5)
    executions: dict[int, int] = {}
    if fleet.executions.exists():
        for line in fleet.executions.read_text().splitlines():
            pid = int(line.split()[3])
            executions[pid] = executions.get(pid, 0) + 1
    alive_but_dead = [(w, t, beat) for w, t, beat in watch.gone
                      if killed_at.get(pid_of(w), float("inf")) > t]
    live_gaps = [gap for w, gap in watch.gaps.items()]
    startups = [ready_at[p] - spawned_at[p] for p in ready_at if p in spawned_at]
    lifetimes = [killed_at[p] - ready_at[p] for p in killed_at if p in ready_at]
    never_ready = [p for p in killed_at if p not in ready_at]
    return {
        "elapsed": elapsed, "closed": closed, "workflows": workflows, "kills": fleet.kills,
        "declared_dead_while_alive": len(alive_but_dead),
        "workers_declared_dead_while_alive": len({w for w, _, _ in alive_but_dead}),
        "their_silence_before_deletion": [round(t - beat, 2) for _, t, beat in alive_but_dead],
        "ready_workers_at_kills_median": statistics.median(ready_at_kill) if ready_at_kill
        else 0,
        "workers": len(fleet.workers),
        "heartbeat_gap_max": max(live_gaps, default=0.0),
        "heartbeat_gap_median": statistics.median(live_gaps) if live_gaps else 0.0,
        "gaps_over_1.5s": sum(g > 1.5 for g in live_gaps),
        "startup_median": statistics.median(startups) if startups else 0.0,
        "startup_max": max(startups, default=0.0),
        "life_after_ready_median": statistics.median(lifetimes) if lifetimes else 0.0,
        "killed_before_ready": len(never_ready),
        "executions_per_killed_worker_median": statistics.median(
            [executions.get(p, 0) for p in killed_at]) if killed_at else 0,
        "executions": sum(executions.values()),
        "longest_stall_in_kills": _longest_stall(completions_at_kill),
        "progress": [(round(t, 1), k, c) for t, k, c in progress[::max(1, len(progress) // 12)]],
    }


def _longest_stall(completions: list[int]) -> int:
    """The most kills in a row over which no activity completed."""
    longest = run = 0
    for before, after in itertools.pairwise(completions):
        run = run + 1 if after == before else 0
        longest = max(longest, run)
    return longest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hogs", type=int, default=0, help="busy-loop processes beside it")
    parser.add_argument("--seconds", type=float, default=150.0, help="give up after this")
    parser.add_argument("--kill-every", type=float, default=1.0)
    parser.add_argument("--workflows", type=int, default=500)
    parser.add_argument("--activities", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--policy", choices=["clock", "ready"], default="ready",
                        help="clock: a kill every second, whatever the fleet (the chaos test "
                        "until now); ready: a replacement first, the kill once it serves")
    args = parser.parse_args()
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.hogs)]
    try:
        with TemporaryDirectory() as tmp, database_url_for("postgres", Path(tmp)) as url:
            result = asyncio.run(chaos(url, Path(tmp), args.seconds, args.kill_every,
                                       args.workflows, args.activities, args.workers,
                                       args.policy))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    load = os.getloadavg()
    print(f"policy {args.policy}, hogs {args.hogs}, load average {load[0]:.1f} (1 min)")
    closed, kills = result["closed"], result["kills"]
    assert isinstance(closed, int) and isinstance(kills, int)
    print(f"{closed} of {result['workflows']} workflows closed in {result['elapsed']:.1f}s, "
          f"{kills} kills: {closed / max(kills, 1):.1f} workflows per kill")
    for key, value in result.items():
        if key not in ("closed", "workflows", "elapsed", "kills"):
            text = f"{value:.2f}" if isinstance(value, float) else str(value)
            print(f"  {key}: {text}")


if __name__ == "__main__":
    main()
