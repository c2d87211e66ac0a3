"""A worker in its own process: prints "ready", serves until SIGTERM.

Used by W5 (crash recovery, both backends) and, with ``--backend postgres
--workers N``, by every workload: the benchmark process is then the client only.
It registers every workflow and activity of ``_defs``.

Protocol on stdout, one line each:

* ``ready`` once the worker has registered and polls;
* on SIGUSR1: ``{"kind": "snapshot", ...}`` with this process's store counters
  (``commits``, ``operations``, ``statements``, ``round_trips``), its VmRSS in MB
  after ``gc.collect()``, ``cached`` (workflows in its cache) and the worker's stats;
* on SIGTERM: a graceful shutdown, then ``{"kind": "final", ...}``, the same fields
  (the counters cover the whole process: warm-up, idle heartbeats and shutdown too).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import signal
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _defs import (  # noqa: E402
    Branch,
    ChildFanOut,
    FanOut,
    Recovery,
    Sequential,
    Waiter,
    noop,
    slow_step,
)
from _util import rss_mb  # noqa: E402
from perdure import Client, Worker, WorkerOptions  # noqa: E402

COUNTERS = ("commits", "operations", "statements", "round_trips")


def _die_with_parent() -> None:
    """SIGTERM this process when the benchmark process that started it dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


OP_NAMES_ENV = "PERDURE_BENCH_OP_NAMES"
"""Set to 1 to count store calls by method name (a diagnostic; adds a wrapper per call)."""


def count_calls(store: Any, counts: dict[str, int]) -> None:
    """Wrap this store instance's public coroutine methods to count calls by name."""
    import inspect

    for name in dir(type(store)):
        if name.startswith("_") or not inspect.iscoroutinefunction(getattr(type(store), name)):
            continue
        original = getattr(store, name)

        def wrapped(*args: Any, _original: Any = original, _name: str = name, **kw: Any) -> Any:
            counts[_name] = counts.get(_name, 0) + 1
            return _original(*args, **kw)

        setattr(store, name, wrapped)


CALLS: dict[str, int] = {}


def report(kind: str, client: Client, worker: Worker) -> dict[str, Any]:
    gc.collect()
    line: dict[str, Any] = {"kind": kind, "pid": os.getpid(), "rss_mb": rss_mb()}
    for name in COUNTERS:
        line[name] = int(getattr(client.store, name, 0) or 0)
    line["conflicts"] = int(getattr(getattr(client.store, "_pool", None), "conflicts", 0))
    line["cached"] = len(getattr(worker, "_cache", ()))
    line["stats"] = dict(getattr(worker, "stats", {}))
    if os.environ.get(OP_NAMES_ENV) == "1":
        line["stats"].update({f"calls.{k}": v for k, v in CALLS.items()})
    return line


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("task_queue")
    parser.add_argument("--dead-worker-timeout", type=float, default=None)
    parser.add_argument("--liveness-interval", type=float, default=None)
    parser.add_argument("--max-cached-workflows", type=int, default=None)
    parser.add_argument("--no-eager", action="store_true")
    args = parser.parse_args()
    _die_with_parent()
    overrides: dict[str, Any] = {}
    if args.dead_worker_timeout is not None:
        overrides["dead_worker_timeout"] = args.dead_worker_timeout
    if args.liveness_interval is not None:
        overrides["liveness_interval"] = args.liveness_interval
    if args.max_cached_workflows is not None:
        overrides["max_cached_workflows"] = args.max_cached_workflows
    if args.no_eager:
        overrides["eager_activities"] = False
    client = await Client.connect(args.url)
    if os.environ.get(OP_NAMES_ENV) == "1":
        count_calls(client.store, CALLS)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    worker = Worker(client, task_queue=args.task_queue,
                    workflows=[Sequential, FanOut, Waiter, Recovery, ChildFanOut, Branch],
                    activities=[noop, slow_step], options=WorkerOptions(**overrides))

    def snapshot() -> None:
        print(json.dumps(report("snapshot", client, worker)), flush=True)

    loop.add_signal_handler(signal.SIGUSR1, snapshot)
    async with worker:
        print("ready", flush=True)
        await stop.wait()
    final = report("final", client, worker)  # before close(): the counters go with the pool
    await client.close()
    print(json.dumps(final), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
