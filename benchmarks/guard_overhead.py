"""What the determinism guard costs: workflow-task time with ``determinism_guard="off"``
and ``"raise"`` (the default), measured in the same process, round by round.

Run: ``python benchmarks/guard_overhead.py [--rounds N] [--no-e2e]``.

* **live**: a realistic workflow (50 activities, each step building a payload, sorting,
  formatting, ``workflow.random()``, ``workflow.now()``, the replay-safe logger, and
  folding the result into its state) driven activation by activation in the pure runtime,
  no database. The time is that of ``WorkflowInstance.activate`` alone, per activation,
  over 20 runs of the workflow.
* **replay**: the same workflow's history with 350 activities (1,052 events), decoded
  once, replayed into a fresh instance (what a worker does after a cache miss).
* **e2e**: 20 such workflows (1,000 activities) started at once on SQLite with an
  in-process worker, from the first start to the last result: the guard's share of
  everything else a workflow task does (store, encoding, scheduling).

Each round measures both variants, in alternating order; the ratio raise/off is taken
within the round. The table shows the median and the spread (min-max) over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import msgspec

from perdure import Client, Worker, WorkerOptions, activity, workflow
from perdure.history import (
    ActivityCompleted,
    ActivityScheduled,
    HistoryEvent,
    WorkflowStarted,
    WorkflowTaskCompleted,
    decode_event,
    encode_event,
)
from perdure.workflow._definition import get_workflow_definition
from perdure.workflow._instance import WorkflowInstance

MODES = ("off", "raise")
QUEUE = "guard-bench"


@activity.defn
async def process(payload: dict[str, Any]) -> dict[str, Any]:
    return {"name": payload["name"], "score": len(payload["tags"]) + payload["step"]}


@workflow.defn
class Realistic:
    """Some Python per step, as workflows have: build a payload, fold in the result."""

    @workflow.run
    async def run(self, steps: int) -> dict[str, Any]:
        rng = workflow.random()
        summary: dict[str, Any] = {"count": 0, "total": 0, "names": [], "seen": {}}
        for step in range(steps):
            payload = {
                "step": step,
                "name": f"item-{step:04d}",
                "tags": sorted({f"t{step % 7}", f"t{step % 3}", f"t{step % 5}"}),
                "weight": round(rng.random(), 6),
                "at": workflow.now().isoformat(),
            }
            result = await workflow.execute_activity(process, payload,
                                                     start_to_close_timeout=30)
            summary["count"] += 1
            summary["total"] += result["score"]
            summary["names"].append(result["name"].upper())
            summary["seen"][result["name"]] = result["score"] % 11
            if len(summary["names"]) > 10:
                summary["names"] = summary["names"][-5:]
            if step % 10 == 0:
                workflow.logger.debug("step %d of %d: total %d", step, steps, summary["total"])
        summary["seen"] = len(summary["seen"])
        return summary


DEFINITION = get_workflow_definition(Realistic)
assert DEFINITION is not None


def _result_for(command: ActivityScheduled) -> msgspec.Raw:
    (payload,) = msgspec.json.decode(bytes(command.input))
    return msgspec.Raw(msgspec.json.encode(
        {"name": payload["name"], "score": len(payload["tags"]) + payload["step"]}))


def drive(steps: int, mode: str) -> tuple[float, int, list[HistoryEvent]]:
    """Run one workflow live: (seconds spent in activate, activations, its history)."""
    instance = WorkflowInstance(DEFINITION, workflow_id="w", run_id="r",
                                determinism_guard=mode)
    history: list[HistoryEvent] = []
    inbound: list[HistoryEvent] = [WorkflowStarted(
        workflow_type=DEFINITION.name, task_queue=QUEUE,
        input=msgspec.Raw(f"[{steps}]".encode()), started_at=1_700_000_000.0)]
    now, spent, activations = 1_700_000_000.0, 0.0, 0
    while True:
        start = time.perf_counter()
        commands = instance.activate(inbound, now)
        spent += time.perf_counter() - start
        activations += 1
        history.extend(inbound)
        history.append(WorkflowTaskCompleted(time=now))
        history.extend(commands)
        instance.history_length = len(history)
        if instance.completed:
            return spent, activations, history
        command = commands[0]
        assert isinstance(command, ActivityScheduled)
        now += 0.01
        inbound = [ActivityCompleted(seq=command.seq, result=_result_for(command), attempt=1)]


def live_us_per_activation(mode: str, repeats: int = 20) -> float:
    gc.collect()
    spent = activations = 0.0
    for _ in range(repeats):
        seconds, count, _ = drive(50, mode)
        spent += seconds
        activations += count
    return spent / activations * 1e6


def replay_ms(events: list[HistoryEvent], mode: str, repeats: int = 3) -> float:
    gc.collect()
    start = time.perf_counter()
    for _ in range(repeats):
        WorkflowInstance(DEFINITION, workflow_id="w", run_id="r",
                         determinism_guard=mode).replay(events)
    return (time.perf_counter() - start) / repeats * 1000


async def _e2e(mode: str, workflows: int, steps: int) -> tuple[float, int]:
    directory = tempfile.mkdtemp(prefix="perdure-guard-bench-")
    try:
        client = await Client.connect(f"sqlite:///{os.path.join(directory, 'p.db')}")
        options = WorkerOptions(determinism_guard=mode)
        worker = Worker(client, task_queue=QUEUE, workflows=[Realistic],
                        activities=[process], options=options)
        async with worker:
            warm = await client.start_workflow(Realistic.run, 2, id="warm", task_queue=QUEUE)
            await warm.result()
            tasks0 = worker.stats["workflow_tasks"]
            gc.collect()
            start = time.perf_counter()
            handles = await asyncio.gather(*(
                client.start_workflow(Realistic.run, steps, id=f"e2e-{i}", task_queue=QUEUE)
                for i in range(workflows)))
            for handle in handles:
                assert (await handle.result())["count"] == steps
            elapsed = time.perf_counter() - start
            tasks = worker.stats["workflow_tasks"] - tasks0
        await client.close()
        return elapsed, tasks
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def e2e_ms_per_activity(mode: str, workflows: int = 20, steps: int = 50) -> float:
    elapsed, _tasks = asyncio.run(_e2e(mode, workflows, steps))
    return elapsed / (workflows * steps) * 1000


def _revision() -> str:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=here,
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return rev + (" with uncommitted changes in src/" if dirty else "")


def _spread(values: list[float], digits: int) -> str:
    return (f"{statistics.median(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-e2e", action="store_true", help="skip the SQLite measurement")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    _seconds, _count, history = drive(350, "off")
    events = [decode_event(encode_event(event)) for event in history]
    measures: list[tuple[str, str, int, Callable[[str], float]]] = [
        ("live", "us/activation", 1, live_us_per_activation),
        ("replay", f"ms/replay of {len(events):,} events", 2,
         lambda mode: replay_ms(events, mode)),
    ]
    if not args.no_e2e:
        measures.append(("e2e", "ms/activity (SQLite, 20 x 50 activities)", 3,
                         e2e_ms_per_activity))
    for _name, _unit, _digits, measure in measures:  # warm up: imports, caches
        for mode in MODES:
            measure(mode)
    results: dict[str, dict[str, list[float]]] = {
        name: {"off": [], "raise": [], "ratio": []} for name, *_ in measures}
    for round_ in range(args.rounds):
        for name, _unit, _digits, measure in measures:
            order = MODES if round_ % 2 == 0 else tuple(reversed(MODES))
            got = {mode: measure(mode) for mode in order}
            results[name]["off"].append(got["off"])
            results[name]["raise"].append(got["raise"])
            results[name]["ratio"].append(got["raise"] / got["off"])
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    print(f"Perdure {_revision()}; Python {sys.version.split()[0]}; "
          f"{args.rounds} rounds; median (min-max)")
    print()
    print("| Measure | Unit | guard off | guard on (raise) | on/off ratio (same round) |")
    print("|---|---|---:|---:|---:|")
    for name, unit, digits, _measure in measures:
        r = results[name]
        print(f"| {name} | {unit} | {_spread(r['off'], digits)} | "
              f"{_spread(r['raise'], digits)} | {_spread(r['ratio'], 2)} |")


if __name__ == "__main__":
    main()
