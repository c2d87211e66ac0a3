"""Plain asyncio inside workflows: same semantics as normal asyncio, identical on replay."""

from __future__ import annotations

import asyncio
from typing import Any

from perdure import activity, workflow
from perdure._errors import ActivityError
from perdure.history import ActivityScheduled, TimerStarted

from ._harness import Run, completed, decode, describe, failed, fired, signal


@activity.defn
async def work(name: str) -> str:
    return name


def _seq_of(commands: list[Any], activity_input: list[Any]) -> int:
    for command in commands:
        if isinstance(command, ActivityScheduled) and decode(command.input) == activity_input:
            return command.seq
    raise AssertionError(f"no activity with input {activity_input} in {describe(commands)}")


def _timer_seq(commands: list[Any]) -> int:
    timers = [c.seq for c in commands if isinstance(c, TimerStarted)]
    assert len(timers) == 1, describe(commands)
    return timers[0]


# --------------------------------------------------------------------------- gather


@workflow.defn
class GatherWorkflow:
    @workflow.run
    async def run(self) -> list[Any]:
        results = await asyncio.gather(
            workflow.execute_activity(work, "a"),
            workflow.execute_activity(work, "b"),
            asyncio.sleep(5, result="slept"),
            return_exceptions=True,
        )
        return [r if isinstance(r, str) else f"error: {type(r).__name__}" for r in results]


def test_gather_with_return_exceptions() -> None:
    run = Run(GatherWorkflow)
    commands = run.start()
    assert sorted(describe(commands)) == sorted([
        ("ActivityScheduled", 1, "work", ["a"]),
        ("ActivityScheduled", 2, "work", ["b"]),
        ("TimerStarted", 3, 5),
    ])
    assert run.activate(fired(3), failed(2, RuntimeError("b broke"))) == []
    commands = run.activate(completed(1, "A"))
    assert describe(commands) == [("WorkflowCompleted", ["A", "error: ActivityError", "slept"])]
    run.assert_replays_identically()


# --------------------------------------------------------------------------- create_task


@workflow.defn
class TaskWorkflow:
    def __init__(self) -> None:
        self.trace: list[str] = []

    async def branch(self, name: str, pause: float) -> str:
        self.trace.append(f"{name} start")
        await asyncio.sleep(pause)
        self.trace.append(f"{name} woke")
        result = await workflow.execute_activity(work, name)
        self.trace.append(f"{name} done")
        return result

    @workflow.run
    async def run(self) -> dict[str, Any]:
        first = asyncio.create_task(self.branch("one", 10))
        second = asyncio.get_running_loop().create_task(self.branch("two", 20))
        self.trace.append("created")
        assert asyncio.current_task() is not None
        results = [await second, await first]
        return {"results": results, "trace": self.trace}


def test_create_task_runs_concurrently() -> None:
    run = Run(TaskWorkflow)
    commands = run.start()
    assert describe(commands) == [("TimerStarted", 1, 10), ("TimerStarted", 2, 20)]
    assert describe(run.activate(fired(2))) == [("ActivityScheduled", 3, "work", ["two"])]
    assert describe(run.activate(fired(1))) == [("ActivityScheduled", 4, "work", ["one"])]
    assert run.activate(completed(4, "ONE")) == []
    commands = run.activate(completed(3, "TWO"))
    assert describe(commands) == [
        ("WorkflowCompleted", {
            "results": ["TWO", "ONE"],
            "trace": ["created", "one start", "two start", "two woke", "one woke", "one done",
                      "two done"],
        })
    ]
    run.assert_replays_identically()


# --------------------------------------------------------------------------- wait


@workflow.defn
class WaitFirstWorkflow:
    @workflow.run
    async def run(self) -> dict[str, Any]:
        tasks = {
            asyncio.ensure_future(workflow.execute_activity(work, name)): name
            for name in ("fast", "slow")
        }
        timer = asyncio.ensure_future(asyncio.sleep(60))
        done, pending = await asyncio.wait([*tasks, timer], return_when=asyncio.FIRST_COMPLETED)
        winners = sorted(tasks.get(t, "timer") for t in done)
        for task in pending:
            task.cancel()
        await asyncio.wait(pending)
        return {
            "winners": winners,
            "results": sorted(t.result() for t in done if t is not timer),
            "cancelled": sorted(tasks.get(t, "timer") for t in pending if t.cancelled()),
        }


def test_wait_first_completed_and_cancel_the_rest() -> None:
    run = Run(WaitFirstWorkflow)
    commands = run.start()
    assert sorted(describe(commands)) == [
        ("ActivityScheduled", 1, "work", ["fast"]),
        ("ActivityScheduled", 2, "work", ["slow"]),
        ("TimerStarted", 3, 60),
    ]
    commands = run.activate(completed(1, "FAST"))
    assert sorted(describe(commands)) == [
        ("ActivityCancelRequested", 2),
        ("TimerCanceled", 3),
        ("WorkflowCompleted", {"winners": ["fast"], "results": ["FAST"],
                               "cancelled": ["slow", "timer"]}),
    ]
    assert describe(commands)[-1][0] == "WorkflowCompleted"
    run.assert_replays_identically()


def test_wait_first_completed_timer_wins() -> None:
    run = Run(WaitFirstWorkflow)
    run.start()
    commands = run.activate(fired(3), advance=60)
    assert sorted(describe(commands)) == [
        ("ActivityCancelRequested", 1),
        ("ActivityCancelRequested", 2),
        ("WorkflowCompleted", {"winners": ["timer"], "results": [],
                               "cancelled": ["fast", "slow"]}),
    ]
    run.assert_replays_identically()


# --------------------------------------------------------------------------- wait_for / timeout


@workflow.defn
class WaitForWorkflow:
    @workflow.run
    async def run(self, use_timeout_cm: bool) -> str:
        try:
            if use_timeout_cm:
                async with asyncio.timeout(30):
                    result = await workflow.execute_activity(work, "maybe")
            else:
                result = await asyncio.wait_for(workflow.execute_activity(work, "maybe"), 30)
        except TimeoutError:
            return "timed out"
        return f"got {result}"


def test_wait_for_raises_timeout_error_when_timer_fires_first() -> None:
    for use_timeout_cm in (False, True):
        run = Run(WaitForWorkflow)
        commands = run.start(use_timeout_cm)
        timer = _timer_seq(commands)
        activity_seq = _seq_of(commands, ["maybe"])
        assert sorted(describe(commands)) == sorted([
            ("TimerStarted", timer, 30), ("ActivityScheduled", activity_seq, "work", ["maybe"]),
        ])
        commands = run.activate(fired(timer), advance=30)
        assert describe(commands) == [
            ("ActivityCancelRequested", activity_seq), ("WorkflowCompleted", "timed out"),
        ]
        # the activity's late result is ignored
        run.assert_replays_identically()


def test_wait_for_completes_before_timeout_cancels_timer() -> None:
    for use_timeout_cm in (False, True):
        run = Run(WaitForWorkflow)
        commands = run.start(use_timeout_cm)
        timer = _timer_seq(commands)
        commands = run.activate(completed(_seq_of(commands, ["maybe"]), "yes"))
        assert describe(commands) == [("TimerCanceled", timer), ("WorkflowCompleted", "got yes")]
        run.assert_replays_identically()


# --------------------------------------------------------------------------- shield


@workflow.defn
class ShieldWorkflow:
    @workflow.run
    async def run(self) -> list[str]:
        important = asyncio.ensure_future(workflow.execute_activity(work, "important"))
        try:
            await asyncio.wait_for(asyncio.shield(important), 10)
        except TimeoutError:
            outcome = "timed out, still running"
        else:
            outcome = "in time"
        return [outcome, await important]


def test_shield_protects_activity_from_timeout_cancellation() -> None:
    run = Run(ShieldWorkflow)
    commands = run.start()
    timer = _timer_seq(commands)
    activity_seq = _seq_of(commands, ["important"])
    commands = run.activate(fired(timer), advance=10)
    assert commands == []  # no ActivityCancelRequested: the shield held
    commands = run.activate(completed(activity_seq, "done"))
    assert describe(commands) == [("WorkflowCompleted", ["timed out, still running", "done"])]
    run.assert_replays_identically()


# --------------------------------------------------------------------------- Event


@workflow.defn
class EventWorkflow:
    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.order: list[str] = []

    async def waiter(self, name: str) -> None:
        await self.go.wait()
        self.order.append(name)
        await workflow.execute_activity(work, name)

    @workflow.run
    async def run(self) -> list[str]:
        await asyncio.gather(self.waiter("w1"), self.waiter("w2"))
        return self.order

    @workflow.signal
    def release(self) -> None:
        self.order.append("released")
        self.go.set()


def test_event_set_by_signal_wakes_all_waiters() -> None:
    run = Run(EventWorkflow)
    assert run.start() == []
    assert run.activate(signal("other")) == []
    commands = run.activate(signal("release"))
    assert describe(commands) == [
        ("ActivityScheduled", 1, "work", ["w1"]),
        ("ActivityScheduled", 2, "work", ["w2"]),
    ]
    commands = run.activate(completed(2, "x"), completed(1, "y"))
    assert describe(commands) == [("WorkflowCompleted", ["released", "w1", "w2"])]
    run.assert_replays_identically()


# --------------------------------------------------------------------------- Lock / Semaphore


@workflow.defn
class LockWorkflow:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.semaphore = asyncio.Semaphore(2)
        self.log: list[str] = []

    async def critical(self, name: str) -> None:
        async with self.lock:
            self.log.append(f"{name} in")
            await workflow.execute_activity(work, name)
            self.log.append(f"{name} out")

    async def limited(self, name: str) -> None:
        async with self.semaphore:
            await workflow.execute_activity(work, name)

    @workflow.run
    async def run(self) -> list[str]:
        await asyncio.gather(*(self.critical(n) for n in ("a", "b", "c")))
        await asyncio.gather(*(self.limited(n) for n in ("s1", "s2", "s3")))
        return self.log


def test_lock_serialises_and_semaphore_limits() -> None:
    run = Run(LockWorkflow)
    assert describe(run.start()) == [("ActivityScheduled", 1, "work", ["a"])]
    assert describe(run.activate(completed(1, "a"))) == [("ActivityScheduled", 2, "work", ["b"])]
    assert describe(run.activate(completed(2, "b"))) == [("ActivityScheduled", 3, "work", ["c"])]
    assert describe(run.activate(completed(3, "c"))) == [
        ("ActivityScheduled", 4, "work", ["s1"]),
        ("ActivityScheduled", 5, "work", ["s2"]),
    ]
    assert describe(run.activate(completed(5, "s2"))) == [("ActivityScheduled", 6, "work", ["s3"])]
    assert run.activate(completed(6, "s3")) == []
    commands = run.activate(completed(4, "s1"))
    assert describe(commands) == [
        ("WorkflowCompleted", ["a in", "a out", "b in", "b out", "c in", "c out"])
    ]
    run.assert_replays_identically()


# --------------------------------------------------------------------------- Queue


@workflow.defn
class QueueWorkflow:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=10)
        self.processed: list[str] = []

    @workflow.signal
    def submit(self, item: str | None) -> None:
        self.queue.put_nowait(item)

    @workflow.run
    async def run(self) -> list[str]:
        while (item := await self.queue.get()) is not None:
            self.processed.append(await workflow.execute_activity(work, item))
            self.queue.task_done()
        assert self.queue.empty()
        return self.processed


def test_queue_fed_by_signals() -> None:
    run = Run(QueueWorkflow)
    assert run.start() == []
    commands = run.activate(signal("submit", "one"), signal("submit", "two"))
    assert describe(commands) == [("ActivityScheduled", 1, "work", ["one"])]
    assert run.activate(signal("submit", None)) == []
    assert describe(run.activate(completed(1, "ONE"))) == [("ActivityScheduled", 2, "work", ["two"])]
    commands = run.activate(completed(2, "TWO"))
    assert describe(commands) == [("WorkflowCompleted", ["ONE", "TWO"])]
    run.assert_replays_identically()


# --------------------------------------------------------------------------- exceptions in tasks


@workflow.defn
class TaskGroupWorkflow:
    @workflow.run
    async def run(self) -> str:
        outcome = "no failure"
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(workflow.execute_activity(work, "ok"))
                group.create_task(workflow.execute_activity(work, "bad"))
                group.create_task(asyncio.sleep(100))
        except* ActivityError as errors:
            outcome = f"{len(errors.exceptions)} failed: {errors.exceptions[0].__cause__}"
        return outcome


def test_task_group_cancels_siblings_on_failure() -> None:
    run = Run(TaskGroupWorkflow)
    commands = run.start()
    ok, bad = _seq_of(commands, ["ok"]), _seq_of(commands, ["bad"])
    timer = _timer_seq(commands)
    commands = run.activate(failed(bad, ValueError("boom")))
    assert sorted(describe(commands)) == [
        ("ActivityCancelRequested", ok),
        ("TimerCanceled", timer),
        ("WorkflowCompleted", "1 failed: boom"),
    ]
    run.assert_replays_identically()


# --------------------------------------------------------------------------- set iteration order


@workflow.defn
class SetOrderWorkflow:
    @workflow.run
    async def run(self, n: int) -> list[str]:
        tasks = {
            asyncio.ensure_future(workflow.execute_activity(work, f"a{i}")): f"a{i}"
            for i in range(n)
        }
        done, _ = await asyncio.wait(tasks)
        order = [tasks[task] for task in done]  # a set: iterated by hash
        for name in order:
            await workflow.execute_activity(work, f"then {name}")
        return order


def test_sets_of_tasks_iterate_in_the_same_order_on_replay() -> None:
    n = 24
    run = Run(SetOrderWorkflow)
    run.start(n)
    commands = run.activate(*(completed(seq, f"r{seq}") for seq in range(1, n + 1)))
    for _ in range(n):
        assert len(commands) == 1
        scheduled = commands[0]
        assert isinstance(scheduled, ActivityScheduled)
        commands = run.activate(completed(scheduled.seq, "ok"))
    order = run.result
    assert sorted(order) == sorted(f"a{i}" for i in range(n))
    # instances in other places of memory (and other processes) agree
    keep = [Run(SetOrderWorkflow) for _ in range(3)]
    for other in keep:
        other.start(n)
    run.assert_replays_identically()
    run.assert_replays_identically()
