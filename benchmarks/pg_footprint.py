"""What one activity costs PostgreSQL: WAL bytes, table bytes, server CPU, statements.

``python benchmarks/pg_footprint.py [--workflows 1000] [--runs 3] [--url URL]``

Runs W1's shape (workflows of 10 sequential no-op activities, started at once, one
in-process worker) on a fresh schema, and reads the server's own counters:
``pg_current_wal_lsn()`` before and after, ``pg_total_relation_size`` of each table,
and the CPU time of every PostgreSQL process from ``/proc`` (Linux). Figures feed
docs/scaling.md. Prints the median and spread of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta

import psycopg

from perdure import Client, Worker, activity, workflow

TABLES = ["history_events", "workflow_runs", "activity_tasks", "workflow_tasks", "inbox"]


@activity.defn
async def noop(index: int) -> int:
    return index


@workflow.defn
class TenSteps:
    @workflow.run
    async def run(self, steps: int) -> int:
        total = 0
        for index in range(steps):
            total += await workflow.execute_activity(
                noop, index, start_to_close_timeout=timedelta(seconds=60)
            )
        return total


def postgres_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) of each PostgreSQL process, by pid."""
    ticks = os.sysconf("SC_CLK_TCK")
    result: dict[str, float] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if not f.read().startswith(("postgres", "postmaster")):
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        result[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return result


async def one_run(base_url: str, workflows: int) -> dict[str, float]:
    schema = "footprint_" + uuid.uuid4().hex[:8]
    separator = "&" if "?" in base_url else "?"
    client = await Client.connect(f"{base_url}{separator}schema={schema}")
    admin = psycopg.connect(base_url, autocommit=True)
    activities = workflows * 10
    try:
        async with Worker(client, task_queue="fp", workflows=[TenSteps], activities=[noop]):
            await client.execute_workflow(TenSteps.run, 2, id="warm-up", task_queue="fp")
            lsn = admin.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
            cpu0 = postgres_cpu_seconds()
            store = client.store
            statements0, trips0, commits0 = store.statements, store.round_trips, store.commits  # type: ignore[attr-defined]
            started = time.perf_counter()
            handles = await asyncio.gather(*[
                client.start_workflow(TenSteps.run, 10, id=f"w{i}", task_queue="fp")
                for i in range(workflows)
            ])
            await asyncio.gather(*[h.result() for h in handles])
            elapsed = time.perf_counter() - started
            cpu1 = postgres_cpu_seconds()
            wal = admin.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)",
                                (lsn,)).fetchone()[0]  # type: ignore[index]
            metrics = {
                "activities/s": activities / elapsed,
                "wal_bytes/activity": float(wal) / activities,
                "pg_cpu_us/activity": sum(v - cpu0.get(k, 0.0) for k, v in cpu1.items())
                / activities * 1e6,
                "statements/activity": (store.statements - statements0) / activities,  # type: ignore[attr-defined]
                "round_trips/activity": (store.round_trips - trips0) / activities,  # type: ignore[attr-defined]
                "commits/activity": (store.commits - commits0) / activities,
            }
        for table in TABLES:
            size = admin.execute(f"SELECT pg_total_relation_size('\"{schema}\".{table}')"
                                 ).fetchone()[0]  # type: ignore[index]
            metrics[f"{table}_bytes/activity"] = size / activities
        events, data = admin.execute(
            f'SELECT count(*), avg(octet_length(data)) FROM "{schema}".history_events'
        ).fetchone()  # type: ignore[misc]
        metrics["events/activity"] = events / activities
        metrics["event_json_bytes"] = float(data)
        return metrics
    finally:
        await client.close()
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get(
        "PERDURE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [await one_run(args.url, args.workflows) for _ in range(args.runs)]
    print(f"{args.runs} runs of {args.workflows} workflows x 10 activities; load "
          f"{os.getloadavg()[0]:.2f}", file=sys.stderr)
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"{key:32s} median {statistics.median(values):10.2f}   "
              f"spread {min(values):.2f}-{max(values):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
