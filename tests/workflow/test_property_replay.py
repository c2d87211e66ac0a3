"""Property: any program, any delivery order, replays to exactly the same commands.

Hypothesis generates a workflow *program* (N branches, each a random sequence
of activities, timers, waits for signals, activity-vs-timeout races and
deterministic-helper calls) and a random *schedule*: which of the outstanding
completions, failures, timer firings and signals arrive in each activation,
in which order, several per activation. The recorded history must replay into
a fresh instance with byte-identical commands at every activation; a worker
that lost its cache at any point must carry on exactly as the original; and
the workflow must have seen what was delivered, step by step.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from perdure import activity, workflow
from perdure._errors import ActivityError, ApplicationError
from perdure.history import (
    ActivityCancelRequested,
    ActivityScheduled,
    HistoryEvent,
    TimerCanceled,
    TimerStarted,
    WorkflowCanceled,
    WorkflowCompleted,
)

from ._harness import Run, cancel, completed, decode, encoded, failed, fired, signal


@activity.defn
async def step(name: str) -> str:
    return name


@workflow.defn
class Program:
    """Runs ``branches`` concurrently; each step appends to the trace when done."""

    def __init__(self) -> None:
        self.trace: list[list[Any]] = []
        self.signals: dict[str, Any] = {}

    @workflow.signal
    def poke(self, name: str, value: Any) -> None:
        self.signals[name] = value

    @workflow.query
    def trace_so_far(self) -> list[list[Any]]:
        return self.trace

    async def branch(self, index: int, steps: list[list[Any]]) -> None:
        for number, (kind, arg) in enumerate(steps):
            name = f"b{index}s{number}"
            outcome: Any
            if kind == "act":
                try:
                    outcome = "ok:" + await workflow.execute_activity(step, name)
                except ActivityError as err:
                    outcome = f"fail:{err.__cause__}"
            elif kind == "timer":
                await workflow.sleep(arg)
                outcome = "timer"
            elif kind == "signal":
                await workflow.wait_condition(lambda name=name: name in self.signals)
                outcome = f"signal:{self.signals[name]}"
            elif kind == "race":
                try:
                    outcome = "race-ok:" + await asyncio.wait_for(
                        workflow.execute_activity(step, name), arg
                    )
                except TimeoutError:
                    outcome = "race-timeout"
                except ActivityError as err:
                    outcome = f"race-fail:{err.__cause__}"
            else:  # "helpers": no command, but must replay the same values
                outcome = [workflow.now().timestamp(), workflow.random().random(),
                           str(workflow.uuid4())]
            self.trace.append([index, number, outcome])

    @workflow.run
    async def run(self, branches: list[list[list[Any]]]) -> dict[str, Any]:
        await asyncio.gather(*(self.branch(i, steps) for i, steps in enumerate(branches)))
        return {"trace": self.trace, "final": workflow.random().randint(0, 2**32)}


STEPS = st.one_of(
    st.tuples(st.just("act"), st.none()),
    st.tuples(st.just("timer"), st.integers(1, 100)),
    st.tuples(st.just("signal"), st.none()),
    st.tuples(st.just("race"), st.integers(1, 100)),
    st.tuples(st.just("helpers"), st.none()),
).map(list)
PROGRAMS = st.lists(st.lists(STEPS, min_size=0, max_size=5), min_size=1, max_size=4)


class Driver:
    """Tracks what the engine could deliver next, and what it delivered."""

    def __init__(self, program: list[list[list[Any]]]) -> None:
        self.activities: dict[int, str] = {}  # seq -> activity input (step name)
        self.timers: dict[int, float] = {}  # seq -> fire_at
        self.late: list[HistoryEvent] = []  # events for cancelled work (must be ignored)
        self.signals = [
            f"b{i}s{n}" for i, steps in enumerate(program)
            for n, (kind, _) in enumerate(steps) if kind == "signal"
        ]
        self.delivered: dict[str, str] = {}  # step name -> outcome the workflow must see

    def observe(self, commands: list[HistoryEvent]) -> None:
        for command in commands:
            if isinstance(command, ActivityScheduled):
                self.activities[command.seq] = decode(command.input)[0]
            elif isinstance(command, ActivityCancelRequested):
                name = self.activities.pop(command.seq)
                self.late.append(completed(command.seq, f"late {name}"))
            elif isinstance(command, TimerStarted):
                self.timers[command.seq] = command.fire_at
            elif isinstance(command, TimerCanceled):
                del self.timers[command.seq]
                self.late.append(fired(command.seq))

    def candidates(self) -> list[tuple[str, Any]]:
        return [
            *(("activity", seq) for seq in sorted(self.activities)),
            *(("timer", seq) for seq in sorted(self.timers)),
            *(("signal", name) for name in self.signals),
            *(("late", index) for index in range(len(self.late))),
        ]

    def event(self, kind: str, key: Any, succeed: bool) -> HistoryEvent:
        if kind == "activity":
            name = self.activities.pop(key)
            if succeed:
                self.delivered[name] = f"R{key}"
                return completed(key, f"R{key}")
            self.delivered[name] = f"E{key}"
            return failed(key, ApplicationError(f"E{key}"), attempt=2)
        if kind == "timer":
            del self.timers[key]
            return fired(key)
        if kind == "signal":
            self.signals.remove(key)
            self.delivered[key] = key.upper()
            return signal("poke", key, key.upper())
        return self.late[key]


def expected_outcomes(kind: str, name: str, delivered: dict[str, str]) -> list[Any] | None:
    """What the trace may say for a finished step (None: any helper values)."""
    if kind == "act":
        value = delivered[name]
        return [("ok:" if value.startswith("R") else "fail:") + value]
    if kind == "timer":
        return ["timer"]
    if kind == "signal":
        return [f"signal:{delivered[name]}"]
    if kind == "race":
        value = delivered.get(name)
        options: list[Any] = ["race-timeout"]
        if value is not None:
            options.append(("race-ok:" if value.startswith("R") else "race-fail:") + value)
        return options
    return None


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=PROGRAMS, data=st.data())
def test_random_programs_replay_identically(
    program: list[list[list[Any]]], data: st.DataObject
) -> None:
    driver = Driver(program)
    run = Run(Program)

    early = data.draw(st.sets(st.sampled_from(driver.signals)) if driver.signals
                      else st.just(set()), label="early")
    extra = [driver.event("signal", name, True) for name in sorted(early)]
    driver.observe(run.start(program, extra=extra))

    may_cancel = data.draw(st.booleans(), label="may_cancel")
    for _ in range(200):
        if run.done:
            break
        candidates = driver.candidates()
        if may_cancel and data.draw(st.integers(0, 19), label="cancel now") == 0:
            inbound: list[HistoryEvent] = [cancel("property test")]
        else:
            assert candidates, "the workflow waits for nothing the engine could deliver"
            order = data.draw(st.permutations(candidates), label="order")
            count = data.draw(st.integers(1, min(4, len(order))), label="count")
            picked = order[:count]
            succeed = data.draw(st.lists(st.booleans(), min_size=count, max_size=count),
                                label="succeed")
            # late events are looked up by index: resolve them before mutating the list
            inbound = [driver.event(kind, key, ok) for (kind, key), ok in zip(picked, succeed,
                                                                              strict=True)]
            driver.late = [e for i, e in enumerate(driver.late) if ("late", i) not in picked]
        due = [driver.timers.get(e.seq, 0.0) for e in inbound if type(e).__name__ == "TimerFired"]
        advance = max([1.0, *(when - run.now for when in due)])
        driver.observe(run.activate(*inbound, advance=advance))
    assert run.done
    event(f"ended {type(run.outcome).__name__}")
    event(f"activations >= 5: {len(run.commands) >= 5}")
    event(f"an activation had several inbound events: {any(len(i) > 1 for i, _ in run.inbound)}")

    # 1. replay: every check passes and every activation's commands are byte-identical
    replayed = run.assert_replays_identically()
    assert replayed.completed
    assert replayed.query("trace_so_far", b"[]") == run.instance.query("trace_so_far", b"[]")

    # 2. a worker that lost its cache after any activation carries on identically
    cut = data.draw(st.integers(0, len(run.commands) - 1), label="cut")
    assert [encoded(c) for c in run.resume_after(cut)] == [
        encoded(c) for c in run.commands[cut:]
    ]

    # 3. the workflow saw exactly what was delivered, in program order per branch
    trace = msgspec.json.decode(run.instance.query("trace_so_far", b"[]"))
    outcome = run.outcome
    for index, steps in enumerate(program):
        seen = [(number, result) for i, number, result in trace if i == index]
        assert [number for number, _ in seen] == list(range(len(seen)))
        if isinstance(outcome, WorkflowCompleted):
            assert len(seen) == len(steps)
        for number, result in seen:
            kind = steps[number][0]
            options = expected_outcomes(kind, f"b{index}s{number}", driver.delivered)
            if options is not None:
                assert result in options, (kind, result, options)
    if isinstance(outcome, WorkflowCompleted):
        assert decode(outcome.result)["trace"] == trace
    else:
        assert isinstance(outcome, WorkflowCanceled), outcome
