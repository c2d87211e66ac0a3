"""A dropped workflow instance must never act inside another workflow's activation.

Its suspended coroutines still have ``finally:`` blocks. Closed at garbage collection in
the middle of another run's activation, they would issue commands into that run.
"""

from __future__ import annotations

import gc

import pytest

from perdure import workflow
from perdure.history import MemoUpserted
from perdure.workflow import _context

from ._harness import new_instance, started


@workflow.defn
class CleansUp:
    @workflow.run
    async def run(self) -> None:
        try:
            await workflow.wait_condition(lambda: False)
        finally:
            workflow.upsert_memo({"cleaned": True})


@workflow.defn
class Allocates:
    @workflow.run
    async def run(self) -> int:
        junk = []
        for i in range(20_000):  # plenty of allocations: automatic collections would run
            cycle: list[object] = [i]
            cycle.append(cycle)
            junk.append(cycle)
        return len(junk)


def test_close_runs_finally_blocks_as_its_own_and_issues_nothing() -> None:
    instance = new_instance(CleansUp)
    assert instance.activate([started(CleansUp)], 1.0) == []
    instance.close()
    assert instance.closed
    assert _context.maybe_current() is None
    instance.close()  # twice is fine


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_garbage_collection_during_an_activation_does_not_leak_commands() -> None:
    """(Unclosed on purpose: collected outside an activation, the finally block's workflow
    call raises NotInWorkflowError, which Python reports as unraisable.)"""
    thresholds = gc.get_threshold()
    gc.set_threshold(1, 1, 1)
    try:
        for _ in range(20):
            dropped = new_instance(CleansUp, run_id="dropped")
            dropped.activate([started(CleansUp)], 1.0)
            del dropped  # not closed: only the collector can reach its coroutine now
            other = new_instance(Allocates, run_id="other")
            commands = other.activate([started(Allocates)], 1.0)
            assert not [c for c in commands if isinstance(c, MemoUpserted)]
            gc.collect()  # outside any activation: the finally block finds no workflow
    finally:
        gc.set_threshold(*thresholds)
