"""Replay speed of the pure runtime: decode and replay a 10,000-event history, no database.

Run: ``python benchmarks/replay_speed.py [--runs N] [--activities N]``. Prints the median
and spread of N runs. DESIGN.md asks for a 10,000-event history "in well under a second".
"""

from __future__ import annotations

import argparse
import statistics
import time

import msgspec

from perdure import activity, workflow
from perdure.history import (
    ActivityCompleted,
    HistoryEvent,
    WorkflowStarted,
    WorkflowTaskCompleted,
    decode_event,
    encode_event,
)
from perdure.workflow._definition import get_workflow_definition
from perdure.workflow._instance import WorkflowInstance


@activity.defn
async def noop(i: int) -> int:
    return i


@workflow.defn
class Long:
    @workflow.run
    async def run(self, n: int) -> int:
        total = 0
        for i in range(n):
            total += await workflow.execute_activity(noop, i)
        return total


def record_history(activities: int) -> list[bytes]:
    """Drive a run live, recording its history as the engine would, encoded."""
    definition = get_workflow_definition(Long)
    assert definition is not None
    instance = WorkflowInstance(definition, workflow_id="w", run_id="r")
    history: list[HistoryEvent] = []

    def activate(inbound: list[HistoryEvent], now: float) -> None:
        commands = instance.activate(inbound, now)
        history.extend(inbound)
        history.append(WorkflowTaskCompleted(time=now))
        history.extend(commands)

    started = WorkflowStarted(workflow_type="Long", task_queue="q",
                              input=msgspec.Raw(f"[{activities}]".encode()), started_at=0.0)
    activate([started], 0.0)
    seq = 1
    while not instance.completed:
        result = msgspec.Raw(str(seq - 1).encode())
        activate([ActivityCompleted(seq=seq, result=result, attempt=1)], float(seq))
        seq += 1
    return [encode_event(e) for e in history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--activities", type=int, default=3333)
    args = parser.parse_args()
    encoded = record_history(args.activities)
    definition = get_workflow_definition(Long)
    assert definition is not None
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        events = [decode_event(data) for data in encoded]
        WorkflowInstance(definition, workflow_id="w", run_id="r").replay(events)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"replay of {len(encoded):,} events: median {median * 1000:.0f} ms "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, {args.runs} runs); "
          f"{len(encoded) / median:,.0f} events/s")


if __name__ == "__main__":
    main()
