"""Trees of workflows: an orchestrator, its sub-agents, their tool-runners.

Cancelling the root must reach every node and every running activity, let each
node clean up (children before parents), and leave nothing running. One failing
branch must reach the root as a typed error while its siblings carry on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from perdure import (
    ActivityError,
    ApplicationError,
    CancelledFailure,
    ChildWorkflowError,
    RetryPolicy,
    TerminatedFailure,
    WorkflowDescription,
    WorkflowFailureError,
    WorkflowNotFoundError,
    WorkflowStatus,
    activity,
    workflow,
)
from perdure.client import Client
from perdure.history import (
    ActivityCancelRequested,
    ChildWorkflowCanceled,
    ChildWorkflowCancelRequested,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    ExternalSignalSent,
    WorkflowCanceled,
    WorkflowTerminated,
    event_type_name,
)
from perdure.testing import WorkflowEnvironment

from ._helpers import wait_until

TQ = "tree"
TOOLS_TQ = "tree-tools"
ONCE = RetryPolicy(maximum_attempts=1)

# What the activities saw, keyed by the workflow id that ran them (reset per test).
RUNNING: set[str] = set()
"""Tool-runners whose tool activity is running right now."""
SAW_CANCEL: collections.Counter[str] = collections.Counter()
"""Tool-runners whose tool activity saw asyncio.CancelledError (and how often)."""
CLEANUPS: list[str] = []
"""Workflows whose clean-up activity ran, in the order they ran."""


@pytest.fixture(autouse=True)
def _fresh_records() -> Iterator[None]:
    RUNNING.clear()
    SAW_CANCEL.clear()
    CLEANUPS.clear()
    yield
    RUNNING.clear()


# ---------------------------------------------------------------------------- activities
@activity.defn
async def run_tool() -> None:
    """A long tool call: heartbeats until it is cancelled."""
    me = activity.info().workflow_id
    RUNNING.add(me)
    try:
        while True:
            activity.heartbeat()
            await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        SAW_CANCEL[me] += 1
        raise
    finally:
        RUNNING.discard(me)


@activity.defn
async def crash_tool(others: int) -> None:
    """Fails for good, once ``others`` tool activities elsewhere in the tree are running."""
    for _ in range(500):
        if len(RUNNING) >= others:
            break
        await asyncio.sleep(0.01)
    else:
        raise ApplicationError(f"only {len(RUNNING)} other tools ever ran", non_retryable=True)
    raise ApplicationError("tool crashed", non_retryable=True)


@activity.defn
async def clean_up() -> None:
    CLEANUPS.append(activity.info().workflow_id)


async def _clean_up() -> None:
    await workflow.execute_activity(clean_up, start_to_close_timeout=10, retry_policy=ONCE)


# ----------------------------------------------------------------- tree that gets cancelled
@workflow.defn
class ToolRunner:
    @workflow.run
    async def run(self, tool_queue: str) -> str:
        try:
            await workflow.execute_activity(
                run_tool, task_queue=tool_queue, start_to_close_timeout=60,
                heartbeat_timeout=2, retry_policy=ONCE,
            )
        except asyncio.CancelledError:
            await _clean_up()
            raise
        return "tool returned"  # run_tool only ends by cancellation


@workflow.defn
class SubAgent:
    @workflow.run
    async def run(self, tool_queue: str) -> list[str]:
        me = workflow.info().workflow_id
        try:
            tools = [
                await workflow.start_child_workflow(ToolRunner.run, tool_queue,
                                                    id=f"{me}/tool-{i}")
                for i in range(2)
            ]
            return list(await asyncio.gather(*(tool.result() for tool in tools)))
        except asyncio.CancelledError:
            await _clean_up()
            raise


@workflow.defn
class Orchestrator:
    @workflow.run
    async def run(self, tool_queue: str) -> list[list[str]]:
        me = workflow.info().workflow_id
        try:
            agents = [
                await workflow.start_child_workflow(SubAgent.run, tool_queue,
                                                    id=f"{me}/agent-{i}")
                for i in range(3)
            ]
            return list(await asyncio.gather(*(agent.result() for agent in agents)))
        except asyncio.CancelledError:
            await _clean_up()
            raise


# ---------------------------------------------------------- tree with one failing branch
@workflow.defn
class StoppableToolRunner:
    """Runs its tool until told to finish; or, as the failing one, crashes."""

    def __init__(self) -> None:
        self.finished = False

    @workflow.run
    async def run(self, crash: bool) -> str:
        me = workflow.info().workflow_id
        if crash:
            # every other tool in the tree (5) is mid-call when this one crashes
            await workflow.execute_activity(crash_tool, 5, start_to_close_timeout=10,
                                            retry_policy=ONCE)
        tool = workflow.start_activity(run_tool, start_to_close_timeout=60,
                                       heartbeat_timeout=2, retry_policy=ONCE)
        await workflow.wait_condition(lambda: self.finished)
        tool.cancel()
        try:
            await tool
        except asyncio.CancelledError:
            pass
        return f"{me} finished"

    @workflow.signal
    def finish(self) -> None:
        self.finished = True


@workflow.defn
class SteerableAgent:
    """Runs two tool-runners; a ``finish`` signal is forwarded to both."""

    def __init__(self) -> None:
        self.finished = False

    @workflow.run
    async def run(self, failing: bool) -> list[str]:
        me = workflow.info().workflow_id
        tools = [
            await workflow.start_child_workflow(StoppableToolRunner.run, failing and i == 1,
                                                id=f"{me}/tool-{i}")
            for i in range(2)
        ]

        async def forward_finish() -> None:
            await workflow.wait_condition(lambda: self.finished)
            for tool in tools:
                await tool.signal(StoppableToolRunner.finish)

        forwarding = asyncio.ensure_future(forward_finish())
        # a failing tool fails this agent at once (its sibling is left to the parent-close
        # policy); otherwise both finish once told to
        results = list(await asyncio.gather(*(tool.result() for tool in tools)))
        await forwarding
        return results

    @workflow.signal
    def finish(self) -> None:
        self.finished = True


def _chain(error: BaseException | None) -> list[list[str]]:
    """The __cause__ chain, one entry per link: type name and what identifies it."""
    links: list[list[str]] = []
    while error is not None:
        if isinstance(error, ChildWorkflowError):
            links.append([type(error).__name__, error.workflow_id, error.workflow_type,
                          error.status])
        elif isinstance(error, ActivityError):
            links.append([type(error).__name__, error.activity_type])
        elif isinstance(error, ApplicationError):
            links.append([type(error).__name__, error.message, str(error.non_retryable)])
        else:
            links.append([type(error).__name__, str(error)])
        error = error.__cause__
    return links


@workflow.defn
class SteeringOrchestrator:
    @workflow.run
    async def run(self) -> dict[str, Any]:
        me = workflow.info().workflow_id
        agents = [
            await workflow.start_child_workflow(SteerableAgent.run, i == 1, id=f"{me}/agent-{i}")
            for i in range(3)
        ]
        waits = [asyncio.ensure_future(agent.result()) for agent in agents]
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_EXCEPTION)
        failed: dict[str, Any] = {}
        # iterate in start order, never over the sets (their order is not deterministic)
        for agent, wait in zip(agents, waits, strict=True):
            if wait in done and wait.exception() is not None:
                failed[agent.id] = _chain(wait.exception())
        # the siblings are still running: tell them to wrap up, then collect their work
        for agent, wait in zip(agents, waits, strict=True):
            if not wait.done():
                await agent.signal(SteerableAgent.finish)
        completed: dict[str, list[str]] = {}
        for agent, wait in zip(agents, waits, strict=True):
            if agent.id not in failed:
                completed[agent.id] = await wait
        return {"failed": failed, "completed": completed}


# ------------------------------------------------- a child slow to honour its cancellation
@workflow.defn
class SlowToCancel:
    """Takes its cancellation only once told to ``wrap_up``."""

    def __init__(self) -> None:
        self.wrapping_up = False

    @workflow.run
    async def run(self) -> None:
        try:
            await workflow.wait_condition(lambda: False)
        except asyncio.CancelledError:
            await workflow.wait_condition(lambda: self.wrapping_up)
            await _clean_up()
            raise

    @workflow.signal
    def wrap_up(self) -> None:
        self.wrapping_up = True


@workflow.defn
class WaitsForSlowChild:
    @workflow.run
    async def run(self) -> None:
        me = workflow.info().workflow_id
        try:
            await workflow.execute_child_workflow(SlowToCancel.run, id=f"{me}/slow")
        except asyncio.CancelledError:
            await _clean_up()
            raise


WORKFLOWS = [ToolRunner, SubAgent, Orchestrator, StoppableToolRunner, SteerableAgent,
             SteeringOrchestrator, SlowToCancel, WaitsForSlowChild]


# ------------------------------------------------------------------------------- helpers
async def _tree(client: Client, root: str) -> dict[str, WorkflowDescription]:
    """Every run below (and including) ``root``, found through list_workflows(parent=...)."""
    nodes: dict[str, WorkflowDescription] = {}
    frontier = [root]
    while frontier:
        workflow_id = frontier.pop()
        nodes[workflow_id] = await client.get_workflow_handle(workflow_id).describe()
        frontier += [child.workflow_id
                     for child in await client.list_workflows(parent_workflow_id=workflow_id)]
    return nodes


def _ids(root: str) -> dict[str, list[str]]:
    """The expected tree: each node's children."""
    tree: dict[str, list[str]] = {root: [f"{root}/agent-{a}" for a in range(3)]}
    for agent in tree[root]:
        tree[agent] = [f"{agent}/tool-{t}" for t in range(2)]
        for tool in tree[agent]:
            tree[tool] = []
    return tree


async def _busy(client: Client, ids: list[str]) -> list[str]:
    """The nodes that still run, or still have pending activities, timers or events."""
    busy = []
    for workflow_id in ids:
        d = await client.get_workflow_handle(workflow_id).describe()
        if (d.status == WorkflowStatus.RUNNING or d.pending_activities or d.pending_timers
                or d.pending_events):
            busy.append(f"{workflow_id}: {d.status} activities={len(d.pending_activities)} "
                        f"timers={d.pending_timers} events={d.pending_events}")
    return busy


async def _assert_nothing_left(client: Client, ids: list[str]) -> None:
    # a cancelled activity's task row goes once its worker reports the attempt's end
    busy = await _busy(client, ids)
    for _ in range(100):
        if not busy:
            break
        await asyncio.sleep(0.05)
        busy = await _busy(client, ids)
    assert busy == []
    assert list(await client.list_workflows(status="running")) == []
    assert set() == RUNNING


# --------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("tools_on", ["same_worker", "other_worker"])
async def test_cancelling_the_root_cancels_the_whole_tree(
    real_env: WorkflowEnvironment, tools_on: str
) -> None:
    """``other_worker``: tool activities run on another worker, so their cancellation
    must travel through the store (heartbeat / liveness) rather than in memory."""
    env = real_env
    root = "orchestrator"
    tool_queue = TQ if tools_on == "same_worker" else TOOLS_TQ
    async with contextlib.AsyncExitStack() as workers:
        await workers.enter_async_context(
            env.worker(task_queue=TQ, workflows=WORKFLOWS, activities=[run_tool, clean_up]))
        if tools_on == "other_worker":
            await workers.enter_async_context(
                env.worker(task_queue=TOOLS_TQ, activities=[run_tool]))
        await _cancel_tree(env, root, tool_queue, tools_on)


async def _cancel_tree(env: WorkflowEnvironment, root: str, tool_queue: str,
                       tools_on: str) -> None:
    tree = _ids(root)
    tools = [node for node, children in tree.items() if not children]
    handle = await env.client.start_workflow(Orchestrator.run, tool_queue, id=root,
                                             task_queue=TQ)
    await wait_until(lambda: _async(set(tools) == RUNNING), what="all six tools running",
                     timeout=10)
    assert sorted(CLEANUPS) == [] and not SAW_CANCEL
    started = asyncio.get_running_loop().time()
    await handle.cancel("user gave up")

    with pytest.raises(WorkflowFailureError) as info:
        await handle.result(timeout=10)
    took = asyncio.get_running_loop().time() - started
    assert info.value.status == "canceled"
    assert isinstance(info.value.cause, CancelledFailure)

    nodes = await _tree(env.client, root)
    assert sorted(nodes) == sorted(tree)
    assert {node: d.status for node, d in nodes.items()} == {
        node: WorkflowStatus.CANCELED for node in tree
    }
    for node, children in tree.items():
        listed = await env.client.list_workflows(parent_workflow_id=node)
        assert sorted(c.workflow_id for c in listed) == sorted(children)
        assert all(c.parent_run_id == nodes[node].run_id for c in listed)

    # every node cleaned up exactly once, and only after all of its children closed
    # (WAIT_CANCELLATION_COMPLETED): the root's clean-up ran before its result was there
    assert sorted(CLEANUPS) == sorted(tree), CLEANUPS
    for node, children in tree.items():
        for child in children:
            assert CLEANUPS.index(child) < CLEANUPS.index(node), CLEANUPS

    # every tool call saw its cancellation, once
    await wait_until(lambda: _async(len(SAW_CANCEL) == len(tools)),
                     what="every tool activity cancelled")
    tools_stopped = asyncio.get_running_loop().time() - started
    assert collections.Counter(dict.fromkeys(tools, 1)) == SAW_CANCEL

    # the histories say the same
    root_history = (await handle.fetch_history()).events
    assert sum(isinstance(e, ChildWorkflowCancelRequested) for e in root_history) == 3
    assert sum(isinstance(e, ChildWorkflowCanceled) for e in root_history) == 3
    assert isinstance(root_history[-1], WorkflowCanceled)
    for tool in tools:
        events = (await env.client.get_workflow_handle(tool).fetch_history()).events
        assert sum(isinstance(e, ActivityCancelRequested) for e in events) == 1
        assert isinstance(events[-1], WorkflowCanceled)

    await _assert_nothing_left(env.client, list(tree))
    print(f"\n[{tools_on}] cancel -> root closed {took:.2f}s, "
          f"-> all tool activities stopped {tools_stopped:.2f}s")


async def test_failing_branch_reaches_root_while_siblings_finish(
    real_env: WorkflowEnvironment,
) -> None:
    env = real_env
    root = "steering"
    tree = _ids(root)
    failing_agent = f"{root}/agent-1"
    crashed_tool = f"{failing_agent}/tool-1"
    orphan_tool = f"{failing_agent}/tool-0"
    async with env.worker(task_queue=TQ, workflows=WORKFLOWS,
                          activities=[run_tool, crash_tool, clean_up]):
        handle = await env.client.start_workflow(SteeringOrchestrator.run, id=root,
                                                 task_queue=TQ)
        summary = await handle.result(timeout=10)

        healthy = [f"{root}/agent-0", f"{root}/agent-2"]
        assert summary == {
            "failed": {
                failing_agent: [
                    ["ChildWorkflowError", failing_agent, "SteerableAgent", "failed"],
                    ["ChildWorkflowError", crashed_tool, "StoppableToolRunner", "failed"],
                    ["ActivityError", "crash_tool"],
                    ["ApplicationError", "tool crashed", "True"],
                ],
            },
            "completed": {
                agent: [f"{agent}/tool-0 finished", f"{agent}/tool-1 finished"]
                for agent in healthy
            },
        }

        nodes = await _tree(env.client, root)
        assert sorted(nodes) == sorted(tree)
        expected = dict.fromkeys(tree, WorkflowStatus.COMPLETED)
        expected[failing_agent] = WorkflowStatus.FAILED
        expected[crashed_tool] = WorkflowStatus.FAILED
        # the failing agent's other tool: default parent-close policy TERMINATE
        expected[orphan_tool] = WorkflowStatus.TERMINATED
        assert {node: d.status for node, d in nodes.items()} == expected

        # the siblings kept running after the failure, and finished later
        failed_at = nodes[failing_agent].close_time
        assert failed_at is not None
        for agent in healthy:
            for node in [agent, *tree[agent]]:
                closed = nodes[node].close_time
                assert closed is not None and closed > failed_at, node

        # terminated with the agent's close, not by its own code
        orphan = env.client.get_workflow_handle(orphan_tool)
        with pytest.raises(WorkflowFailureError) as info:
            await orphan.result(timeout=5)
        assert info.value.status == "terminated"
        assert isinstance(info.value.cause, TerminatedFailure)
        assert failing_agent in str(info.value.cause)
        orphan_events = (await orphan.fetch_history()).events
        assert isinstance(orphan_events[-1], WorkflowTerminated)
        orphan_closed = nodes[orphan_tool].close_time
        assert orphan_closed is not None and orphan_closed >= failed_at

        # the failing agent's own error is the tool-runner's, with its chain
        with pytest.raises(WorkflowFailureError) as info:
            await env.client.get_workflow_handle(failing_agent).result(timeout=5)
        cause = info.value.cause
        assert isinstance(cause, ChildWorkflowError)
        assert (cause.workflow_id, cause.status) == (crashed_tool, "failed")
        assert isinstance(cause.__cause__, ActivityError)
        assert isinstance(cause.__cause__.__cause__, ApplicationError)

        # the root saw one failure, two completions, and steered the two siblings
        root_events = (await handle.fetch_history()).events
        assert sum(isinstance(e, ChildWorkflowFailed) for e in root_events) == 1
        assert sum(isinstance(e, ChildWorkflowCompleted) for e in root_events) == 2
        assert sorted(e.workflow_id for e in root_events
                      if isinstance(e, ExternalSignalSent)) == healthy
        assert not any(isinstance(e, ChildWorkflowCancelRequested) for e in root_events)

        # every tool call that ran was stopped once: four by their runners, the
        # orphan's by its termination (through the store: its run is gone)
        running_tools = [t for t in tree if t.count("/") == 2 and t != crashed_tool]
        await wait_until(lambda: _async(len(SAW_CANCEL) == len(running_tools)),
                         what="every running tool stopped")
        assert collections.Counter(dict.fromkeys(running_tools, 1)) == SAW_CANCEL
        await _assert_nothing_left(env.client, list(tree))


async def test_parent_dropped_while_waiting_for_cancelled_child_resumes_by_replay(
    real_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancelled parent waits (WAIT_CANCELLATION_COMPLETED) for a child slow to cancel.
    Its worker shuts down meanwhile, dropping the parent's in-memory state quietly; a
    new worker replays it, and it ends canceled, after its child, once the child ends."""
    env = real_env
    root, slow = "patient", "patient/slow"
    unraisable: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook",
                        lambda u: unraisable.append(f"{u.object!r}: {u.exc_value!r}"))
    parent = await env.client.start_workflow(WaitsForSlowChild.run, id=root, task_queue=TQ)
    child = env.client.get_workflow_handle(slow)
    async with env.worker(task_queue=TQ, workflows=WORKFLOWS, activities=[clean_up]):
        await wait_until(lambda: _has_event(child, "WorkflowTaskCompleted"),
                         what="child running")
        await parent.cancel()
        await wait_until(lambda: _has_event(child, "CancelRequested", then_task=True),
                         what="child saw its cancellation")
        assert (await parent.describe()).status == WorkflowStatus.RUNNING
    gc.collect()  # the dropped instances' coroutines are closed: nothing may leak out
    assert unraisable == []
    assert CLEANUPS == []

    async with env.worker(task_queue=TQ, workflows=WORKFLOWS, activities=[clean_up]):
        await child.signal(SlowToCancel.wrap_up)
        with pytest.raises(WorkflowFailureError) as info:
            await parent.result(timeout=10)
    assert info.value.status == "canceled"
    assert (await child.describe()).status == WorkflowStatus.CANCELED
    assert list(CLEANUPS) == [slow, root]
    await _assert_nothing_left(env.client, [root, slow])


async def _has_event(handle: Any, name: str, *, then_task: bool = False) -> bool:
    """Whether ``name`` is in the history (and, with ``then_task``, was processed)."""
    try:
        names = [event_type_name(e) for e in (await handle.fetch_history()).events]
    except WorkflowNotFoundError:
        return False
    if name not in names:
        return False
    return not then_task or "WorkflowTaskCompleted" in names[names.index(name):]


async def _async(value: Any) -> Any:
    return value
