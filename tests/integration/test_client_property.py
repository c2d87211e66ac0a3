"""Property: whatever a caller passes to the public client API, only Perdure's typed
errors come out, and a call that raised changed nothing.

Hypothesis drives ``start_workflow``, ``signal_with_start``, ``get_workflow_handle`` and
the handle's ``signal``, ``query``, ``start_update``/``execute_update``, ``cancel``,
``terminate``, ``reset``, ``fork``, ``describe``, ``fetch_history``, ``stream`` and
``result``, ``list_workflows`` and ``get_async_activity_handle`` with generated arguments:
wrong types, NaN and infinity, huge and deeply nested values, NUL and lone-surrogate
strings, negative and huge numbers, bad enum values, mixed with valid ones so that calls
also get past their first check. After each call: it returned, or it raised a
:class:`PerdureError`, and then a digest of every row of every Perdure table is what it
was before the call. No worker runs, so no call may wait without a bound: a call that
hangs fails the property too.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from perdure import (
    Client,
    IdConflictPolicy,
    IdReusePolicy,
    PerdureError,
    RetryPolicy,
    WorkflowStatus,
    WorkflowUpdateStage,
    workflow,
)
from tests._digest import DatabaseDigest

TQ = "property"
RUNNING = ["w-1", "w-2", "w-3"]


@workflow.defn(name="Target")
class Target:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    @workflow.run
    async def run(self, value: Any = None) -> Any:
        await workflow.wait_condition(lambda: False)

    @workflow.signal
    def poke(self, value: Any = None) -> None:
        self.seen.append(value)

    @workflow.query
    def state(self) -> list[Any]:
        return self.seen

    @workflow.update
    def change(self, value: Any = None) -> Any:
        return value


def _deep(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


class Opaque:
    """A value too big or deep for Hypothesis to print; :func:`_unwrap` opens it."""

    def __init__(self, name: str, value: Any) -> None:
        self.name, self.value = name, value

    def __repr__(self) -> str:
        return f"<{self.name}>"


def _unwrap(value: Any) -> Any:
    if isinstance(value, Opaque):
        return value.value
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


LONG = Opaque("1,002 bytes of UTF-8", "é" * 501)
LONGER = Opaque("1,001 ASCII characters", "q" * 1001)
DEEP = Opaque("a list nested 100,000 deep", _deep(100_000))
HUGE = Opaque("a 3 MiB string", "x" * (3 * 1024 * 1024))

hostile_text = st.one_of(
    st.sampled_from(["", "\x00", "a\x00b", "\ud800", "x\udfff", LONG, LONGER, " ",
                     "null", "NaN", "running", "w-1", "poke", "change", "state"]),
    st.text(max_size=12),
)
numbers = st.one_of(st.integers(-(2**80), 2**80), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, -1, 1, 2**63, -(2**63) - 1, 2**31, math.nan, math.inf]))
scalars = st.one_of(
    st.none(), st.booleans(), numbers, hostile_text, st.binary(max_size=6),
    st.sampled_from([object(), timedelta(seconds=-1), timedelta(0), timedelta(days=10**6),
                     datetime(2024, 1, 1), datetime(2024, 1, 1, tzinfo=UTC), b"\x00",
                     WorkflowStatus.RUNNING, IdReusePolicy.REJECT_DUPLICATE, Ellipsis]),
)
values = st.one_of(
    st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.one_of(hostile_text, st.integers(-3, 3)), inner,
                                   max_size=3), max_leaves=8),
    st.sampled_from([DEEP, HUGE, {"k": math.nan}, [1.0, math.inf], {"\ud800": 1}]),
)
plain = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-100, 100),
                               st.floats(allow_nan=False, allow_infinity=False),
                               st.text(max_size=8)),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=5)
values = st.one_of(plain, values)  # valid values too: calls must get past their first check
known = st.sampled_from([*RUNNING, "new-1", "new-2", "new-3"])
ids = st.one_of(known, known, known, hostile_text, st.integers(-3, 2**70), st.none(),
                st.lists(st.text(max_size=2), max_size=2))
maybe = st.one_of(st.none(), ids)
bad_timeouts = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda f: not math.isfinite(f) or f < 0),
    st.integers(max_value=-1), st.just(True),
    st.sampled_from(["soon", timedelta(seconds=-3), timedelta(days=-1), [], {}]),
)
"""Timeouts every call refuses."""
timeouts = st.one_of(st.sampled_from([0.01, 0.02, timedelta(milliseconds=10)]), bad_timeouts)
"""Bad ones, and short good ones: no worker answers, and a call must not wait long."""
workflows = st.one_of(st.sampled_from([Target.run, Target, "Target", "Other", object(), 7]),
                      hostile_text)
signals = st.one_of(st.sampled_from([Target.poke, "poke", Target.change, print]), hostile_text,
                    st.integers())
enums = st.one_of(st.sampled_from([*IdReusePolicy, *IdConflictPolicy]), hostile_text,
                  st.integers(-2, 5))
policies = st.sampled_from([None, RetryPolicy(), RetryPolicy(maximum_attempts=2), "forever",
                            {"maximum_attempts": 1}, 3])
attributes = st.one_of(st.none(), values,
                       st.dictionaries(st.sampled_from(["k", "n", "tags", "0bad", "a b", ""]),
                                       values, max_size=3))
start_options = {
    "execution_timeout": timeouts, "run_timeout": timeouts, "id_reuse_policy": enums,
    "id_conflict_policy": enums, "memo": attributes, "search_attributes": attributes,
    "retry_policy": policies, "start_signal": signals, "start_signal_args": values,
}


def _call(name: str, **parts: Any) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    return st.tuples(st.just(name), st.fixed_dictionaries(
        {k: v for k, v in parts.items() if not k.startswith("opt_")},
        optional={k[4:]: v for k, v in parts.items() if k.startswith("opt_")}))


CALLS = st.one_of(
    _call("start", workflow=workflows, args=st.lists(values, max_size=2), id=ids,
          task_queue=st.one_of(st.just(TQ), ids),
          **{f"opt_{k}": v for k, v in start_options.items()}),
    _call("signal_with_start", workflow=workflows, signal=signals, signal_args=values,
          args=st.lists(values, max_size=2), id=ids, task_queue=st.one_of(st.just(TQ), ids),
          opt_id_reuse_policy=enums, opt_memo=attributes, opt_search_attributes=attributes,
          opt_execution_timeout=timeouts),
    _call("signal", id=ids, opt_run_id=maybe, signal=signals, args=st.lists(values, max_size=2)),
    _call("query", id=ids, query=st.one_of(st.just(Target.state), signals),
          args=st.lists(values, max_size=2), timeout=timeouts),
    _call("start_update", id=ids, update=signals, args=st.lists(values, max_size=2),
          opt_update_id=maybe,
          wait_for_stage=st.one_of(st.just(WorkflowUpdateStage.ADMITTED), st.just(1),
                                   hostile_text, st.integers(4, 9), st.just(None))),
    _call("execute_update", id=ids, update=signals, args=st.lists(values, max_size=2),
          opt_update_id=maybe, timeout=bad_timeouts),
    _call("cancel", id=ids, reason=st.one_of(hostile_text, values)),
    _call("terminate", id=ids, reason=st.one_of(hostile_text, values)),
    _call("describe", id=ids, opt_run_id=maybe),
    _call("history", id=ids, opt_run_id=maybe),
    _call("stream", id=ids, after=st.one_of(st.integers(-5, 2**70), values)),
    _call("result", id=ids, timeout=bad_timeouts, opt_follow_runs=values),
    _call("reset", id=ids, opt_to_event=st.one_of(st.integers(-3, 2**40), values),
          opt_to_last_workflow_task=st.one_of(st.booleans(), values),
          opt_reason=st.one_of(hostile_text, values),
          opt_reapply_signals=st.one_of(st.booleans(), values)),
    _call("fork", id=ids, new_id=ids, opt_to_event=st.one_of(st.integers(-3, 20), values),
          opt_edit_results=st.one_of(values, st.dictionaries(st.one_of(st.integers(-2, 9),
                                                                       hostile_text), values,
                                                             max_size=2)),
          opt_task_queue=maybe),
    _call("list", opt_status=st.one_of(st.sampled_from(list(WorkflowStatus)), enums, values),
          opt_workflow_type=maybe, opt_started_after=st.one_of(numbers, values),
          opt_started_before=st.one_of(numbers, values), opt_closed_after=values,
          opt_closed_before=values, opt_parent_workflow_id=maybe, opt_parent_run_id=maybe,
          opt_search_attributes=attributes,
          opt_limit=st.one_of(st.integers(-2, 2**70), values),
          opt_page_token=st.one_of(hostile_text, values)),
    _call("async_activity", opt_task_token=st.one_of(st.binary(max_size=40), hostile_text,
                                                     values),
          opt_workflow_id=maybe, opt_run_id=maybe,
          opt_activity_id=st.one_of(hostile_text, st.integers(), values),
          result=values),
)


async def _invoke(client: Client, name: str, kw: dict[str, Any]) -> Any:
    """One call of the public API, as a caller would write it."""
    kw = _unwrap(dict(kw))
    if name == "start":
        return await client.start_workflow(kw.pop("workflow"), *kw.pop("args"), **kw)
    if name == "signal_with_start":
        return await client.signal_with_start(kw.pop("workflow"), kw.pop("signal"),
                                              kw.pop("signal_args"), *kw.pop("args"), **kw)
    if name == "list":
        return await client.list_workflows(**kw)
    if name == "async_activity":
        result = kw.pop("result")
        return await client.get_async_activity_handle(**kw).complete(result)
    handle = client.get_workflow_handle(kw.pop("id"), run_id=kw.pop("run_id", None))
    if name == "signal":
        return await handle.signal(kw["signal"], *kw["args"])
    if name == "query":
        return await handle.query(kw["query"], *kw["args"], timeout=kw["timeout"])
    if name == "start_update":
        return await handle.start_update(kw.pop("update"), *kw.pop("args"), **kw)
    if name == "execute_update":
        return await handle.execute_update(kw.pop("update"), *kw.pop("args"), **kw)
    if name == "cancel":
        return await handle.cancel(kw["reason"])
    if name == "terminate":
        return await handle.terminate(kw["reason"])
    if name == "describe":
        return await handle.describe()
    if name == "history":
        return await handle.fetch_history()
    if name == "stream":
        return [event async for event in handle.stream(after=kw["after"], follow=False)]
    if name == "result":
        return await handle.result(**kw)
    if name == "reset":
        return await handle.reset(**kw)
    if name == "fork":
        return await handle.fork(kw.pop("new_id"), **kw)
    raise AssertionError(name)


def test_only_typed_errors_and_no_change_when_refused(database_url: str) -> None:
    runner = asyncio.Runner()
    client = runner.run(Client.connect(database_url))
    digest = DatabaseDigest(database_url)
    try:
        for workflow_id in RUNNING:
            handle = runner.run(client.start_workflow(Target.run, workflow_id, id=workflow_id,
                                                      task_queue=TQ))
            runner.run(handle.signal(Target.poke, 1))

        @settings(max_examples=500, derandomize=True, database=None, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.large_base_example])
        @given(call=CALLS)
        # found by earlier runs, kept: a task token given as text, one with a lone
        # surrogate, a reason too deep to print
        @example(call=("async_activity", {"task_token": "not a token", "result": None}))
        @example(call=("async_activity", {"task_token": "\ud800", "result": None}))
        @example(call=("cancel", {"id": "w-1", "reason": DEEP}))
        def property_holds(call: tuple[str, dict[str, Any]]) -> None:
            name, kw = call
            before = digest()
            try:
                runner.run(asyncio.wait_for(_invoke(client, name, kw), 10))
            except PerdureError as exc:
                event(f"{name}: {type(exc).__name__}")
                assert digest() == before, f"{name} raised, but changed the database"
            except BaseException as exc:
                raise AssertionError(
                    f"{name} raised {type(exc).__module__}.{type(exc).__name__}: {exc!r}"[:500]
                ) from exc
            else:
                event(f"{name}: returned")

        property_holds()
    finally:
        digest.close()
        runner.run(client.close())
        runner.close()
