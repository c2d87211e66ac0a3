"""Replay speed from the store: a 10,000-event history read from the database, cold and warm.

Run: ``python benchmarks/replay_from_store.py [--backend postgres] [--runs N]``.

1. **Setup**: a worker runs one workflow of ``--activities`` (3,333) sequential no-op
   activities, which then waits for updates: about 10,000 events, stored as the engine
   writes them. (SQLite: a fresh file; PostgreSQL: a fresh schema, dropped afterwards.)
   The worker is then stopped, so that nothing else runs during the measurements.
2. **Cold**: ``--runs`` fresh processes (``--child cold``), each importing Perdure,
   connecting (``Client.connect``), reading the history (``store.get_history``), decoding
   it (``decode_event``) and replaying it (``WorkflowInstance.replay``): what a new worker
   pays for its first task of a long run. Each phase is timed in the child; the parent
   also times the whole process, interpreter start-up included.
3. **Warm**: the same read / decode / replay, ``--passes`` times in this process, after
   one unmeasured pass (connection open, code imported, SQLite's page cache and
   PostgreSQL's shared buffers hot).
4. **Worker, cached vs after an eviction**: a fresh in-process worker answers ``--pokes``
   updates (a trivial handler: one workflow task each). Before every other update the run
   is dropped from the worker's cache (``Worker._forget``, what its LRU does on eviction),
   so that task must read the whole history and replay it first. Times are the client's
   ``execute_update`` round trip, and the worker's own ``_instance_for`` (load + replay).

Prints medians with the spread (min-max). ``--json PATH`` writes every sample.
``--src-at REV`` measures ``src/`` as committed at REV (``git archive``), as ``run.py`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

T_START = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

PINNED = "PERDURE_BENCH_PINNED_SRC"
PINNED_DIR = "PERDURE_BENCH_PINNED_DIR"


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg", default=os.environ.get(
        "PERDURE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--activities", type=int, default=3333,
                        help="sequential activities of the measured run (3 events each)")
    parser.add_argument("--runs", type=int, default=7, help="cold processes")
    parser.add_argument("--passes", type=int, default=10, help="warm passes")
    parser.add_argument("--pokes", type=int, default=10,
                        help="worker updates of each kind (cached, after eviction)")
    parser.add_argument("--src-at", metavar="REV", nargs="?", const="HEAD",
                        help="measure src/ as committed at REV (default HEAD)")
    parser.add_argument("--json", metavar="PATH", help="write every sample here")
    # internal: one cold measurement in a fresh process
    parser.add_argument("--child", choices=["cold"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--workflow-id", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    return parser.parse_args()


ARGS = _parse()

if ARGS.src_at and not os.environ.get(PINNED) and not ARGS.child:
    # re-run this script with the pinned src/ first on PYTHONPATH (children inherit it)
    from run import _pin_src

    pinned = _pin_src(ARGS.src_at)
    assert pinned is not None
    src = os.path.join(pinned, "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [src, *filter(None, [os.environ.get("PYTHONPATH")])]),
        **{PINNED: ARGS.src_at, PINNED_DIR: pinned})
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)

# Perdure is imported only now: a cold child times its import
T_IMPORT = time.perf_counter()
from perdure import Client, Worker, WorkerOptions, activity, workflow  # noqa: E402
from perdure.history import decode_event  # noqa: E402
from perdure.workflow._definition import get_workflow_definition  # noqa: E402
from perdure.workflow._instance import WorkflowInstance  # noqa: E402

T_IMPORTED = time.perf_counter()
TQ = "replay-bench"


@activity.defn
async def noop(i: int) -> int:
    return i


@workflow.defn(name="ReplayBench")
class ReplayBench:
    """``n`` sequential activities (about 3n events), then waits, answering ``poke``."""

    def __init__(self) -> None:
        self.pokes = 0
        self.done = False

    @workflow.run
    async def run(self, n: int) -> int:
        total = 0
        for i in range(n):
            total += await workflow.execute_activity(noop, i, start_to_close_timeout=60)
        await workflow.wait_condition(lambda: self.done)
        return total

    @workflow.update
    def poke(self) -> int:
        self.pokes += 1
        return self.pokes

    @workflow.update
    def finish(self) -> int:
        self.done = True
        return self.pokes


DEFINITION = get_workflow_definition(ReplayBench)
assert DEFINITION is not None


async def load_and_replay(client: Client, workflow_id: str, run_id: str) -> dict[str, float]:
    """One pass: read, decode, replay (the worker's ``_instance_for`` does the same)."""
    t0 = time.perf_counter()
    rows = await client.store.get_history(workflow_id, run_id)
    t1 = time.perf_counter()
    events = [decode_event(data) for _, _, data in rows]
    t2 = time.perf_counter()
    instance = WorkflowInstance(DEFINITION, workflow_id=workflow_id, run_id=run_id,
                                converter=client.converter)
    tail = instance.replay(events)
    t3 = time.perf_counter()
    assert not tail and not instance.completed
    read, decode, replay = t1 - t0, t2 - t1, t3 - t2
    return {"events": len(rows), "bytes": sum(len(d) for _, _, d in rows),
            "read_ms": read * 1e3, "decode_ms": decode * 1e3, "replay_ms": replay * 1e3,
            "total_ms": (read + decode + replay) * 1e3,
            "events_per_s": len(rows) / (read + decode + replay),
            "replay_events_per_s": len(rows) / replay}


async def cold_child() -> None:
    t0 = time.perf_counter()
    client = await Client.connect(ARGS.url)
    connect = time.perf_counter() - t0
    try:
        sample = await load_and_replay(client, ARGS.workflow_id, ARGS.run_id)
    finally:
        t1 = time.perf_counter()
        await client.close()
        close = time.perf_counter() - t1
    sample["close_ms"] = close * 1e3
    sample["import_ms"] = (T_IMPORTED - T_IMPORT) * 1e3
    sample["connect_ms"] = connect * 1e3
    sample["in_process_ms"] = (time.perf_counter() - T_START) * 1e3
    print(json.dumps(sample), flush=True)


# ---------------------------------------------------------------- the parent


def _stats(values: list[float]) -> str:
    from _util import median

    med = median(values)

    def f(v: float) -> str:
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"

    return f"{f(med)} ({f(min(values))}-{f(max(values))})" if len(values) > 1 else f(med)


async def build(url: str, activities: int) -> tuple[str, str, float]:
    """Run the long workflow up to its wait; the worker stops once it is there."""
    async with await Client.connect(url) as client:
        options = WorkerOptions(history_warning_events=10**9)
        async with Worker(client, task_queue=TQ, workflows=[ReplayBench], activities=[noop],
                          options=options):
            t0 = time.perf_counter()
            handle = await client.start_workflow(ReplayBench.run, activities,
                                                 id="replay-bench", task_queue=TQ)
            expected = 3 * activities + 2  # started, then 3 per activity; the last: no command
            while (await handle.describe()).history_length < expected:
                await asyncio.sleep(0.05)
            seconds = time.perf_counter() - t0
        return handle.workflow_id, handle.run_id or "", seconds


def cold(url: str, workflow_id: str, run_id: str) -> dict[str, float]:
    args = [sys.executable, os.path.abspath(__file__), "--child", "cold", "--url", url,
            "--workflow-id", workflow_id, "--run-id", run_id]
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"cold child failed:\n{proc.stderr[-3000:]}")
    if proc.stderr.strip():
        print(f"  (cold child stderr: {proc.stderr.strip()[-500:]})", file=sys.stderr)
    sample: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    sample["process_wall_ms"] = wall * 1e3
    return sample


async def warm(url: str, workflow_id: str, run_id: str, passes: int) -> list[dict[str, float]]:
    async with await Client.connect(url) as client:
        await load_and_replay(client, workflow_id, run_id)  # unmeasured first pass
        return [await load_and_replay(client, workflow_id, run_id) for _ in range(passes)]


async def worker_pokes(url: str, workflow_id: str, run_id: str, pokes: int
                       ) -> dict[str, list[float]]:
    """Update round trips answered from the worker's cache, and after an eviction."""
    out: dict[str, list[float]] = {"cached_ms": [], "evicted_ms": [], "cached_load_ms": [],
                                   "evicted_load_ms": [], "evicted_replays": [],
                                   "cached_replays": []}
    async with await Client.connect(url) as client:
        worker = Worker(client, task_queue=TQ, workflows=[ReplayBench], activities=[noop],
                        options=WorkerOptions(history_warning_events=10**9))
        loads: list[float] = []
        original = worker._instance_for

        async def timed_instance_for(claim):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return await original(claim)
            finally:
                loads.append((time.perf_counter() - t0) * 1e3)

        worker._instance_for = timed_instance_for  # type: ignore[method-assign]
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        async with worker:
            await handle.execute_update(ReplayBench.poke)  # a fresh worker: replays; unmeasured
            for _ in range(2):
                await handle.execute_update(ReplayBench.poke)  # warm the cached path
            for _ in range(pokes):
                for kind in ("cached", "evicted"):
                    if kind == "evicted":
                        worker._forget(run_id)
                    loads.clear()
                    replays = worker.stats["replays"]
                    t0 = time.perf_counter()
                    await handle.execute_update(ReplayBench.poke)
                    out[f"{kind}_ms"].append((time.perf_counter() - t0) * 1e3)
                    out[f"{kind}_load_ms"].append(sum(loads))
                    out[f"{kind}_replays"].append(worker.stats["replays"] - replays)
            await handle.execute_update(ReplayBench.finish)
            await handle.result(timeout=60)
    return out


def _revision() -> str:
    from run import _revision as revision

    pinned = os.environ.get(PINNED)
    if pinned:
        from run import _short

        return f"{_short(pinned)} (src/ pinned with --src-at {pinned})"
    return revision()


def _db_size_mib(path: str) -> float:
    return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s)) / 2**20


async def measure() -> dict[str, Any]:
    from _backend import Bench, database

    bench = Bench(backend=ARGS.backend, pg_dsn=ARGS.pg)
    async with database(bench, "replay") as db:
        workflow_id, run_id, seconds = await build(db.url, ARGS.activities)
        print(f"setup: {ARGS.activities:,} sequential activities run by a worker in "
              f"{seconds:.1f} s", flush=True)
        colds = [cold(db.url, workflow_id, run_id) for _ in range(ARGS.runs)]
        warms = await warm(db.url, workflow_id, run_id, ARGS.passes)
        pokes = await worker_pokes(db.url, workflow_id, run_id, ARGS.pokes)
        size = _db_size_mib(db.path) if db.path else None
    return {"backend": ARGS.backend, "cold": colds, "warm": warms, "worker": pokes,
            "events": int(colds[0]["events"]), "setup_seconds": seconds,
            "db_file_mib": size}


def report(record: dict[str, Any]) -> None:
    colds, warms, pokes = record["cold"], record["warm"], record["worker"]
    if record["db_file_mib"] is not None:
        print(f"database file (with WAL): {record['db_file_mib']:.1f} MiB")
    print(f"history: {record['events']:,} events, {colds[0]['bytes'] / 2**20:.2f} MiB of "
          "event JSON\n")
    print("| Phase | cold (fresh process) | warm (same process) |")
    print("|---|---:|---:|")
    for key, label in [("read_ms", "read: `get_history` (ms)"),
                       ("decode_ms", "decode: `decode_event` x events (ms)"),
                       ("replay_ms", "replay: `WorkflowInstance.replay` (ms)"),
                       ("total_ms", "**read + decode + replay (ms)**"),
                       ("events_per_s", "**events/s, read + decode + replay**"),
                       ("replay_events_per_s", "events/s, replay only")]:
        print(f"| {label} | {_stats([c[key] for c in colds])} | "
              f"{_stats([w[key] for w in warms])} |")
    for key, label in [("import_ms", "import perdure (ms)"),
                       ("connect_ms", "`Client.connect` (ms)"),
                       ("close_ms", "`Client.close` (ms)"),
                       ("in_process_ms", "child: script start to done (ms)"),
                       ("process_wall_ms", "child process wall time, interpreter included (ms)")]:
        print(f"| {label} | {_stats([c[key] for c in colds])} | |")
    print(f"\n({len(colds)} cold processes, {len(warms)} warm passes; median (min-max))\n")
    print("| Worker: one workflow task of this run | update round trip (ms) | "
          "worker load + replay (ms) | replays |")
    print("|---|---:|---:|---:|")
    for kind, label in [("cached", "cached"), ("evicted", "after an eviction (full replay)")]:
        print(f"| {label} | {_stats(pokes[f'{kind}_ms'])} | "
              f"{_stats(pokes[f'{kind}_load_ms'])} | "
              f"{sum(pokes[f'{kind}_replays']):.0f} of {len(pokes[f'{kind}_replays'])} |")
    extra = [e - c for c, e in zip(pokes["cached_ms"], pokes["evicted_ms"], strict=True)]
    print(f"| eviction's extra cost, per pair | {_stats(extra)} | | |")
    print(f"\n({len(extra)} pairs, alternating cached / evicted)")
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump(record, f, indent=1)


def main() -> None:
    import perdure

    revision = _revision()
    print(f"replay from the store: backend {ARGS.backend}, Perdure {revision}, "
          f"imported from {os.path.dirname(perdure.__file__)}")
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    pinned_dir = os.environ.get(PINNED_DIR, "")
    if pinned_dir.startswith(tempfile.gettempdir()):
        atexit.register(shutil.rmtree, pinned_dir, ignore_errors=True)
    record = asyncio.run(measure())
    record["revision"] = revision
    report(record)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    if ARGS.child == "cold":
        asyncio.run(cold_child())
    else:
        main()
