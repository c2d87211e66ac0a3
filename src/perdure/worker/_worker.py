"""The worker: claims tasks, runs workflow activations and activities, heartbeats.

A worker's memory is only a cache (invariant 4): every decision is committed
before it is acted on, and a killed worker's tasks are reclaimed by others
once its liveness heartbeat stops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import socket
import sys
import traceback
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from perdure._errors import ConfigurationError, NondeterminismError
from perdure._identifiers import shown, storable_text
from perdure.activity._definition import ActivityDefinition
from perdure.engine import (
    activity_timed_out_outcome,
    plan_workflow_task,
)
from perdure.history import (
    ActivityCompleted,
    ActivityScheduled,
    Failure,
    HistoryEvent,
    UpdateAccepted,
    decode_event,
    encode_event,
)
from perdure.store._base import ASYNC_COMPLETION_OWNER
from perdure.store._records import (
    ActivityTaskClaim,
    QueryTaskClaim,
    WorkflowTaskClaim,
    WorkflowTaskCompletion,
)
from perdure.worker._activities import ActivityRunner, _RunningActivity
from perdure.worker._loop_watch import LoopWatch
from perdure.worker._options import WorkerOptions
from perdure.worker._registration import (
    check_activity_executor,
    check_storable_name,
    register_activities,
    register_workflows,
)
from perdure.workflow._definition import WorkflowDefinition
from perdure.workflow._instance import WorkflowInstance
from perdure.workflow._query import query_instance

if TYPE_CHECKING:
    from perdure.client._client import Client

__all__ = ["Worker", "WorkerOptions"]

_log = logging.getLogger("perdure.worker")
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERY_WAIT_FOR_TASK = 1.0
"""Seconds a query on a run cached here waits for the workflow task that takes the run's
pending events, before it answers from a throwaway replay instead."""
_failure_decoder = msgspec.json.Decoder(Failure)


class _RunGate:
    """A run's activation lock and how many activations hold or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


@dataclasses.dataclass
class EagerStart:
    """A first activation run before its start committed (see ``prepare_eager_start``)."""

    instance: WorkflowInstance
    workflow_type: str
    completion: WorkflowTaskCompletion
    reserved: list[ActivityScheduled]
    now: float


class Worker(ActivityRunner):
    """Serves task queues: runs workflow tasks for ``workflows`` and attempts of ``activities``.

    Use as ``async with Worker(...)`` (runs in the background until the block
    exits, then shuts down gracefully), or ``await worker.run()``.
    """

    def __init__(
        self,
        client: Client,
        *,
        task_queue: str | Sequence[str],
        workflows: Sequence[type] = (),
        activities: Sequence[Callable[..., Any]] = (),
        options: WorkerOptions | None = None,
        build_id: str | None = None,
        identity: str | None = None,
        activity_executor: concurrent.futures.Executor | None = None,
        workflow_failure_exception_types: Sequence[type[BaseException]] = (),
    ) -> None:
        self.client = client
        self.store = client.store
        self.converter = client.converter
        self.clock = client.store.clock
        self.task_queues = [task_queue] if isinstance(task_queue, str) else list(task_queue)
        if not self.task_queues:
            raise ConfigurationError("a Worker needs at least one task queue")
        self.options = options or WorkerOptions()
        if workflow_failure_exception_types:  # Temporal's spelling, on the Worker itself
            self.options = dataclasses.replace(self.options, workflow_failure_exception_types=(
                *self.options.workflow_failure_exception_types,
                *workflow_failure_exception_types))
        if not all(isinstance(q, str) and q for q in self.task_queues):
            raise ConfigurationError(
                f"task queues are non-empty strings, not {shown(task_queue)}"
            )
        for queue in self.task_queues:
            check_storable_name(queue, "task queue")
        check_activity_executor(activity_executor)
        self.workflows: dict[str, WorkflowDefinition] = register_workflows(workflows,
                                                                           self.converter)
        self.activities: dict[str, ActivityDefinition] = register_activities(activities,
                                                                             self.converter)
        self.build_id = build_id or self._derive_build_id()
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        check_storable_name(self.build_id, "build_id")
        check_storable_name(self.identity, "identity")
        if self.identity == ASYNC_COMPLETION_OWNER:
            raise ConfigurationError(
                f"a worker's identity cannot be {identity!r}: the store marks attempts left "
                "open for async completion with it; choose another"
            )
        self._executor = activity_executor
        self._own_executor = False
        self._cache: OrderedDict[str, WorkflowInstance] = OrderedDict()
        self._running_activities: dict[tuple[str, str, int], _RunningActivity] = {}
        self._run_locks: dict[str, _RunGate] = {}
        self._inflight_workflow_tasks = 0
        self._activity_slots = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._started = False
        self._loop_watch = LoopWatch(self.identity, self.options.liveness_interval,
                                     self.options.loop_stall_timeout)
        self.stats = {"workflow_tasks": 0, "replays": 0, "activities": 0, "eager_activities": 0,
                      "task_failures": 0, "rejected_completions": 0, "rejected_activity_results": 0,
                      "fused_completions": 0, "stale_claims": 0,
                      "eager_starts": 0}

    def _derive_build_id(self) -> str:
        digest = hashlib.sha256()
        for definition in sorted(self.workflows.values(), key=lambda d: d.name):
            module = sys.modules.get(definition.cls.__module__)
            path = getattr(module, "__file__", None)
            if path and os.path.exists(path):
                with open(path, "rb") as f:
                    digest.update(f.read())
            digest.update(definition.name.encode())
        return digest.hexdigest()[:12]

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Register with the store and start polling in the background."""
        if self._started:
            return
        self._started = True
        if self._executor is None and any(not a.is_async for a in self.activities.values()):
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.options.max_concurrent_activities,
                thread_name_prefix="perdure-activity",
            )
            self._own_executor = True
        self.client._local_workers.append(self)
        self.store.notifier.close_listeners.append(self._on_run_closed)
        await self.store.register_worker(
            self.identity,
            self.task_queues,
            self.build_id,
            [(d.name, [*d.signals, *(["*"] if d.dynamic_signals else [])], list(d.queries))
             for d in self.workflows.values()],
        )
        # alive while the process is, not only while the loop is free (invariant 5)
        self._loop_watch.start()
        self.store.keep_alive(self.identity, self.options.liveness_interval,
                              self._loop_watch.alive)
        self._loops = [
            asyncio.create_task(self._supervise(self._liveness_loop), name="perdure-liveness"),
            asyncio.create_task(self._supervise(self._due_work_loop), name="perdure-due-work"),
            asyncio.create_task(self._supervise(self._query_loop), name="perdure-queries"),
        ]
        if self.workflows:
            self._loops.append(asyncio.create_task(
                self._supervise(self._workflow_task_loop), name="perdure-workflow-tasks"))
        if self.activities:
            self._loops.append(asyncio.create_task(
                self._supervise(self._activity_task_loop), name="perdure-activity-tasks"))

    async def run(self) -> None:
        """Start, then serve until :meth:`shutdown` is called (or the task is cancelled)."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop polling, finish in-flight work (or hand it back), deregister."""
        if not self._started or self._stopping.is_set():
            await self._stopped.wait() if self._stopping.is_set() else None
            return
        self._stopping.set()
        if self in self.client._local_workers:
            self.client._local_workers.remove(self)
        if self._on_run_closed in self.store.notifier.close_listeners:
            self.store.notifier.close_listeners.remove(self._on_run_closed)
        self.store.notifier.notify(self.store.notifier.KINDS)
        # stop taking work, but keep the liveness heartbeat until the drain is over:
        # otherwise other workers would declare us dead and run our activities again
        liveness = [t for t in self._loops if t.get_name() == "perdure-liveness"]
        pollers = [t for t in self._loops if t not in liveness]
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
        # workflow tasks are short: let them commit
        loop = asyncio.get_running_loop()
        drain_until = loop.time() + self.options.graceful_shutdown_timeout + 5
        while self._inflight_workflow_tasks and loop.time() < drain_until:
            await asyncio.sleep(0.01)
        running = [r for r in self._running_activities.values() if r.task is not None]
        if running:
            tasks = [r.task for r in running if r.task is not None]
            _done, pending = await asyncio.wait(
                tasks, timeout=self.options.graceful_shutdown_timeout
            )
            for run in running:
                if run.task in pending:
                    run.shutdown = True
                    run.context.cancelled.set()
                    run.task.cancel()
            if pending:
                # thread activities get the grace period again to notice and return
                await asyncio.wait(
                    pending, timeout=max(5.0, self.options.graceful_shutdown_timeout + 1))
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        for task in liveness:
            task.cancel()
        await asyncio.gather(*liveness, return_exceptions=True)
        self._loop_watch.stop()
        try:
            await self.store.stop_keeping_alive(self.identity)
            await self.store.remove_worker(self.identity)
        except Exception:
            _log.exception("could not deregister worker %s", self.identity)
        if self._own_executor and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._cache.clear()
        self._stopped.set()

    def accepts_eager_start(self, task_queue: str, workflow_type: str) -> bool:
        """Whether a start in this process may hand its first task straight to this worker."""
        return (
            self._started
            and not self._stopping.is_set()
            and task_queue in self.task_queues
            and workflow_type in self.workflows
            and self._inflight_workflow_tasks < self.options.max_concurrent_workflow_tasks
        )

    def prepare_eager_start(
        self, workflow_id: str, run_id: str, workflow_type: str, started_event: bytes,
        now: float,
    ) -> EagerStart | None:
        """Run a new run's first activation before its start commits, so that the start
        and the activation share one transaction. None when it cannot (the ordinary
        eager start then leases the first task to this worker instead)."""
        definition = self.workflows.get(workflow_type)
        if definition is None:
            return None
        reserved: list[ActivityScheduled] = []
        try:
            instance = self._new_instance(definition, workflow_id, run_id)
            instance.stored_size = len(started_event)
            instance.history_limits = (self.options.history_warning_events,
                                       self.options.history_warning_bytes)
            started = decode_event(started_event)
            tail = instance.replay([started], sizes=[len(started_event)])
            instance.history_length = 1 - len(tail)
            commands = instance.activate([event for _, event in tail], now)
            completion = self._plan(workflow_id, run_id, 1, 0, [], commands, now, reserved,
                                    published=instance.published)
        except Exception:
            self._activity_slots -= len(reserved)
            return None
        return EagerStart(instance, workflow_type, completion, reserved, now)

    def finish_eager_start(self, prepared: EagerStart, *, committed: bool) -> None:
        """The start with its first activation committed (or not: then forget it)."""
        if not committed:
            self._activity_slots -= len(prepared.reserved)
            prepared.instance.close()
            return
        self.stats["eager_starts"] += 1
        self.stats["workflow_tasks"] += 1
        self._after_commit(prepared.instance, prepared.workflow_type, prepared.completion,
                           prepared.reserved, prepared.now)

    def run_eager_start(self, claim: WorkflowTaskClaim) -> None:
        """Run a first workflow task that the start transaction leased to this worker."""
        self.stats["eager_starts"] += 1
        self._inflight_workflow_tasks += 1
        self._spawn(self._workflow_task(claim))

    def is_idle(self) -> bool:
        """No workflow task, activity or hand-over in progress (used by time skipping)."""
        return (self._inflight_workflow_tasks == 0 and not self._running_activities
                and not self._tasks)

    async def _supervise(self, loop_fn: Callable[[], Any]) -> None:
        delay = 0.05
        while not self._stopping.is_set():
            try:
                await loop_fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("worker %s: %s failed; retrying in %.2fs",
                               self.identity, loop_fn.__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _idle_wait(self, kinds: Sequence[str], backoff: float) -> float:
        await self.store.notifier.wait(kinds, timeout=backoff)
        return min(backoff * 2, self.options.max_poll_interval)

    # ------------------------------------------------------------------ workflow tasks
    async def _workflow_task_loop(self) -> None:
        backoff = 0.005
        limit = self.options.max_concurrent_workflow_tasks
        while not self._stopping.is_set():
            free = limit - self._inflight_workflow_tasks
            if free <= 0:
                await self.store.notifier.wait(["workflow_task_slot"], timeout=0.05)
                continue
            claims = await self.store.claim_workflow_tasks(
                self.identity, self.task_queues, free, self.options.workflow_task_lease
            )
            if not claims:
                backoff = await self._idle_wait(["workflow_task"], backoff)
                continue
            backoff = 0.005
            for claim in claims:
                self._inflight_workflow_tasks += 1
                self._spawn(self._workflow_task(claim))

    async def _workflow_task(self, claim: WorkflowTaskClaim) -> None:
        try:
            await self._process_workflow_task(claim)
        finally:
            self._inflight_workflow_tasks -= 1
            self.store.notifier.notify(["workflow_task_slot"])

    async def _instance_for(self, claim: WorkflowTaskClaim) -> tuple[WorkflowInstance, list[HistoryEvent]]:
        cached = self._cache.get(claim.run_id)
        if cached is not None and cached.history_length == claim.history_length:
            self._cache.move_to_end(claim.run_id)
            return cached, []
        self._forget(claim.run_id)
        definition = self.workflows.get(claim.workflow_type)
        if definition is None:
            from perdure._errors import UnknownWorkflowTypeError

            raise UnknownWorkflowTypeError(
                f"workflow type {claim.workflow_type!r} is not registered on worker "
                f"{self.identity} (task queue {claim.task_queue!r}; registered: "
                f"{', '.join(sorted(self.workflows)) or 'none'}); pass it in "
                "Worker(workflows=[...]) on a worker serving this queue"
            )
        rows = claim.history
        if rows is None or len(rows) != claim.history_length:
            rows = await self.store.get_history(claim.workflow_id, claim.run_id)
        events = [decode_event(data) for _, _, data in rows]
        instance = self._new_instance(definition, claim.workflow_id, claim.run_id)
        instance.stored_size = sum(len(data) for _, _, data in rows)
        instance.history_limits = (self.options.history_warning_events,
                                   self.options.history_warning_bytes)
        tail = instance.replay(events, sizes=[len(data) for _, _, data in rows])
        # the tail is this task's inbound: like inbox events, not counted in the
        # history_length the activation sees (replay counts it the same way)
        instance.history_length = len(events) - len(tail)
        if len(events) > len(tail):
            self.stats["replays"] += 1  # not for a first task (only inbound events)
        return instance, [event for _, event in tail]

    def _new_instance(self, definition: WorkflowDefinition, workflow_id: str,
                      run_id: str) -> WorkflowInstance:
        return WorkflowInstance(
            definition, workflow_id=workflow_id, run_id=run_id, converter=self.converter,
            determinism_guard=self.options.determinism_guard,
            failure_exception_types=self.options.workflow_failure_exception_types,
        )

    async def _process_workflow_task(self, claim: WorkflowTaskClaim) -> None:
        while True:
            next_claim = await self._run_workflow_task(claim)
            if next_claim is None:
                return
            claim = next_claim

    @contextlib.asynccontextmanager
    async def _activation(self, run_id: str) -> AsyncIterator[None]:
        """One activation of a run at a time in this worker (tasks and fused completions)."""
        gate = self._run_locks.get(run_id)
        if gate is None:
            gate = self._run_locks[run_id] = _RunGate()
        gate.users += 1
        try:
            async with gate.lock:
                yield
        finally:
            gate.users -= 1
            if gate.users == 0 and self._run_locks.get(run_id) is gate:
                del self._run_locks[run_id]

    def _activation_running(self, run_id: str) -> bool:
        gate = self._run_locks.get(run_id)
        return gate is not None and gate.users > 0

    def _on_run_closed(self, run_id: str) -> None:
        """A run closed (here or in another process): stop its activities running here at
        once (a parent's close may have terminated it), and drop its cached instance."""
        self._forget(run_id)
        for key, running in list(self._running_activities.items()):
            if key[1] == run_id and running.invoking:
                self._cancel_running(running)

    def _forget(self, run_id: str, instance: WorkflowInstance | None = None) -> None:
        """Drop a run from the cache (and ``instance``, if it is another copy), closing
        what is dropped."""
        cached = self._cache.pop(run_id, None)
        if cached is not None:
            cached.close()
        if instance is not None and instance is not cached:
            instance.close()

    async def _run_workflow_task(self, claim: WorkflowTaskClaim) -> WorkflowTaskClaim | None:
        async with self._activation(claim.run_id):
            return await self._run_workflow_task_locked(claim)

    async def _run_workflow_task_locked(self, claim: WorkflowTaskClaim) -> WorkflowTaskClaim | None:
        cached = self._cache.get(claim.run_id)
        if cached is not None and cached.history_length > claim.history_length:
            # this worker committed the run further (a fused completion) after the claim
            # was read: that commit released or removed the task; it is claimed afresh
            self.stats["stale_claims"] += 1
            self.store.notifier.notify(["workflow_task"])  # claim it again, fresh
            return None
        reserved: list[ActivityScheduled] = []
        instance: WorkflowInstance | None = None
        try:
            instance, tail = await self._instance_for(claim)
            inbox = [(decode_event(data), data) for _, data in claim.inbox]
            now = self.clock.now()
            commands = instance.activate([*tail, *(e for e, _ in inbox)], now)
            completion = self._plan(
                claim.workflow_id, claim.run_id, claim.history_length,
                claim.inbox[-1][0] if claim.inbox else 0, inbox, commands, now, reserved,
                instance.update_decisions, len(tail), instance.published,
                instance.info is not None and instance.info.continue_as_new_suggested,
            )
        except Exception as exc:
            self._activity_slots -= len(reserved)
            self._forget(claim.run_id, instance)
            await self._fail_workflow_task(claim, exc)
            return None
        try:
            ok = await self.store.complete_workflow_task(completion)
        except Exception as exc:
            # the store failed (busy, I/O): release the task now instead of holding its
            # lease until it expires; if even that fails, the lease expiry takes over
            self._activity_slots -= len(reserved)
            self._forget(claim.run_id, instance)
            with contextlib.suppress(Exception):
                await self._fail_workflow_task(claim, exc)
            return None
        except BaseException:
            self._activity_slots -= len(reserved)
            self._forget(claim.run_id, instance)
            raise
        self.stats["workflow_tasks"] += 1
        if not ok:
            self.stats["rejected_completions"] += 1
            self._activity_slots -= len(reserved)
            self._forget(claim.run_id, instance)
            return None
        self._after_commit(instance, claim.workflow_type, completion, reserved, now)
        return None

    def _plan(
        self, workflow_id: str, run_id: str, expected_history_length: int, inbox_upto: int,
        inbound: list[tuple[HistoryEvent, bytes]], commands: list[HistoryEvent], now: float,
        reserved: list[ActivityScheduled],
        update_decisions: Mapping[str, UpdateAccepted | Failure] | None = None,
        history_tail: int = 0,
        published: Sequence[tuple[str | None, bytes]] = (),
        suggested: bool = False,
    ) -> WorkflowTaskCompletion:
        """The engine's plan for one activation; reserves slots for eager activities."""

        def eager(command: ActivityScheduled) -> bool:
            if (
                self.options.eager_activities
                and not self._stopping.is_set()
                and command.task_queue in self.task_queues
                and command.activity_type in self.activities
                and self._activity_slots < self.options.max_concurrent_activities
            ):
                self._activity_slots += 1
                reserved.append(command)
                return True
            return False

        return plan_workflow_task(
            workflow_id=workflow_id,
            run_id=run_id,
            worker_id=self.identity,
            build_id=self.build_id,
            expected_history_length=expected_history_length,
            inbox_upto=inbox_upto,
            inbound=inbound,
            commands=commands,
            now=now,
            eager=eager,
            sticky_for=self.options.sticky_timeout,
            update_decisions=update_decisions,
            history_tail=history_tail,
            published=published,
            continue_as_new_suggested=suggested,
        )

    def _after_commit(
        self, instance: WorkflowInstance, workflow_type: str, completion: WorkflowTaskCompletion,
        reserved: list[ActivityScheduled], now: float,
    ) -> None:
        """A committed activation: update the cache, stop cancelled work, start eager work."""
        workflow_id, run_id = completion.workflow_id, completion.run_id
        instance.history_length = completion.expected_history_length + len(completion.events)
        instance.stored_size += sum(len(data) for _, data in completion.events)
        instance.history_size = instance.stored_size  # the next activation's view
        if instance.continue_as_new_suggested() and not instance.completed \
                and not instance.size_warned:
            instance.size_warned = True
            _log.warning(
                "workflow %s (run %s, %s) has a long history: %d events, %d bytes (warning "
                "at %d events or %d bytes); continue it as new (workflow.continue_as_new) "
                "to keep replay fast",
                workflow_id, run_id, workflow_type, instance.history_length,
                instance.history_size, *instance.history_limits,
            )
        for seq in completion.cancel_activities:
            running = self._running_activities.get((workflow_id, run_id, seq))
            if running is not None:  # running here: no need to wait for a liveness round
                self._cancel_running(running)
        if instance.completed:
            self._forget(run_id)
            for key, running in list(self._running_activities.items()):
                if key[1] == run_id:
                    self._cancel_running(running)
        else:
            self._cache[run_id] = instance
            self._cache.move_to_end(run_id)
            while len(self._cache) > self.options.max_cached_workflows:
                self._forget(next(iter(self._cache)))
        for command in reserved:
            self.stats["eager_activities"] += 1
            activity_claim = ActivityTaskClaim(
                workflow_id=workflow_id, run_id=run_id, seq=command.seq,
                activity_type=command.activity_type, task_queue=command.task_queue,
                workflow_type=workflow_type, input=bytes(command.input), attempt=1,
                scheduled_at=now, start_to_close_timeout=command.start_to_close_timeout,
                schedule_to_close_timeout=command.schedule_to_close_timeout,
                heartbeat_timeout=command.heartbeat_timeout, heartbeat_details=None,
                retry_policy=b"",
            )
            self._spawn(self._activity_attempt(activity_claim))

    async def _complete_and_advance(self, claim: ActivityTaskClaim, result: bytes) -> bool:
        """Fused path: deliver a result to the cached run and commit both in one transaction.

        Returns False when the ordinary path must record the result instead.
        """
        run_id = claim.run_id
        instance = self._cache.get(run_id)
        if (
            instance is None
            or instance.completed
            or self._activation_running(run_id)
            or self._stopping.is_set()
        ):
            return False
        reserved: list[ActivityScheduled] = []
        async with self._activation(run_id):
            event = ActivityCompleted(seq=claim.seq, result=msgspec.Raw(result),
                                      attempt=claim.attempt)
            data = encode_event(event)
            now = self.clock.now()
            try:
                commands = instance.activate([event], now)
                completion = self._plan(
                    claim.workflow_id, run_id, instance.history_length, 0, [(event, data)],
                    commands, now, reserved, published=instance.published,
                    suggested=instance.info is not None
                    and instance.info.continue_as_new_suggested,
                )
            except Exception:
                self._activity_slots -= len(reserved)
                self._forget(run_id, instance)  # half-advanced: replay it from history
                return False
            try:
                outcome = await self.store.complete_activity_and_workflow_task(
                    claim.seq, claim.attempt, data, completion
                )
            except BaseException:
                self._activity_slots -= len(reserved)
                self._forget(run_id, instance)
                raise
            if outcome != "fused":
                self._activity_slots -= len(reserved)
                self._forget(run_id, instance)
                if outcome == "rejected":  # the attempt was superseded (timed out, reclaimed)
                    self.stats["rejected_activity_results"] += 1
                return True
            self.stats["workflow_tasks"] += 1
            self.stats["fused_completions"] += 1
            self._after_commit(instance, claim.workflow_type, completion, reserved, now)
            return True

    async def _fail_workflow_task(self, claim: WorkflowTaskClaim, exc: BaseException) -> None:
        self._forget(claim.run_id)
        self.stats["task_failures"] += 1
        delay = min(0.5 * 2.0 ** min(claim.attempt - 1, 16), 60.0)  # no overflow at 1,025
        _log.error(
            "workflow task for %s (run %s, attempt %d) failed; retrying in %.1fs (the run "
            "stays running: a deploy that fixes the code resumes it): %s",
            claim.workflow_id, claim.run_id, claim.attempt, delay, exc,
            exc_info=exc if claim.attempt == 1 else None,
        )
        message = task_failure_text(exc)
        await self.store.fail_workflow_task(
            claim.workflow_id, claim.run_id, self.identity, message, self.clock.now() + delay
        )

    # ------------------------------------------------------------------ background duties
    async def _liveness_loop(self) -> None:
        # cancellation requests for running activities; it beats too, but liveness does
        # not depend on it (the store's liveness thread beats while the loop is blocked)
        while True:  # also during shutdown's drain: cancelled just before deregistering
            cancelled = await self.store.worker_heartbeat(self.identity)
            for key in cancelled:
                running = self._running_activities.get(tuple(key))  # type: ignore[arg-type]
                if running is not None:
                    self._cancel_running(running)
            await asyncio.sleep(self.options.liveness_interval)

    async def _due_work_loop(self) -> None:
        decider = _make_timeout_decider(self.clock.now)
        reclaim_every = self.options.liveness_interval
        last_reclaim = -math.inf
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            swept_at = self.clock.now()
            fired = await self.store.fire_due_timers(500)
            expired = await self.store.expire_activities(500, decider)
            now = self.clock.now()
            # liveness is real time: a test clock that jumps or stands still changes nothing
            if loop.time() - last_reclaim >= reclaim_every:
                last_reclaim = loop.time()
                await self.store.reclaim_dead_workers(self.options.dead_worker_timeout, decider)
            if fired >= 500 or expired >= 500:
                continue
            # what was due when this round began was just swept, or is a task that another
            # worker or queue will take: waiting for it would spin, so look only later
            due = await self.store.next_due_time(after=swept_at)
            wait = reclaim_every if due is None else max(0.001, min(due - now, reclaim_every))
            # only work due before our next look wakes us early
            self.store.notifier.next_due = now + wait
            try:
                await self.store.notifier.wait(["timer"], timeout=wait)
            finally:
                self.store.notifier.next_due = -math.inf
            if due is not None and self.clock.now() >= due:
                # a retry or a delayed task became visible: the claim loops look at once
                self.store.notifier.notify(["workflow_task", "activity_task"])

    async def _query_loop(self) -> None:
        backoff = 0.005
        while not self._stopping.is_set():
            claims = await self.store.claim_query_tasks(self.identity, self.task_queues, 16)
            if not claims:
                backoff = await self._idle_wait(["query"], backoff)
                continue
            backoff = 0.005
            for claim in claims:
                await self._answer_query(claim)

    async def _answer_query(self, claim: QueryTaskClaim) -> None:
        try:
            answer = await self._query_answer(claim)
        except Exception as exc:
            await self.store.answer_query(claim.id, None,
                                          storable_text(f"{type(exc).__name__}: {exc}"))
            return
        await self.store.answer_query(claim.id, answer, None)

    async def _query_answer(self, claim: QueryTaskClaim) -> bytes:
        """Answer from the state that holds every event acknowledged before the query.

        The cached instance does, once its run's inbox is empty. While events wait and
        the run is cached here, its workflow task (about to run here) is given a moment
        to take them, as Temporal holds a query behind a workflow task in flight; past
        that, or when the run is not cached here, a throwaway instance replays the
        history and applies the inbox (see :func:`query_instance`)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + QUERY_WAIT_FOR_TASK
        delay = 0.002
        while True:
            snapshot = await self.store.read_snapshot(claim.workflow_id, claim.run_id,
                                                      history=False)
            instance = self._cache.get(claim.run_id)
            if instance is None or loop.time() >= give_up:
                break
            running = self._activation_running(claim.run_id)
            if not running and instance.history_length < snapshot.history_length:
                break  # another worker moved the run on: this copy is stale
            if not snapshot.inbox and not running \
                    and instance.history_length == snapshot.history_length:
                return instance.query(claim.name, claim.args)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        run = await self.store.get_run(claim.workflow_id, claim.run_id)
        definition = self.workflows.get(run.workflow_type)
        if definition is None:
            raise ConfigurationError(
                f"workflow type {run.workflow_type!r} is not registered on worker "
                f"{self.identity}"
            )
        snapshot = await self.store.read_snapshot(claim.workflow_id, claim.run_id,
                                                  history=True)
        throwaway = query_instance(
            definition, workflow_id=claim.workflow_id, run_id=claim.run_id,
            converter=self.converter,
            history=[decode_event(data) for data in snapshot.history or ()],
            pending=[decode_event(data) for _, data in snapshot.inbox],
            now=self.clock.now(), determinism_guard=self.options.determinism_guard,
            failure_exception_types=self.options.workflow_failure_exception_types,
        )
        try:
            return throwaway.query(claim.name, claim.args)
        finally:
            throwaway.close()


def task_failure_text(exc: BaseException) -> str:
    """What ``describe().last_workflow_task_failure`` shows: the error, then where in the
    workflow's code it was raised (the innermost frames, at most about 4,000 characters)."""
    head = f"{type(exc).__name__}: {exc}"
    if exc.__traceback__ is None or isinstance(exc, NondeterminismError):
        return storable_text(head)  # a mismatch already names the line of workflow code
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if not f.filename.startswith(_PACKAGE_DIR)]
    lines = traceback.format_list((own or frames)[-6:])
    # storable as it is: a NUL or a lone surrogate (from untrusted text) is escaped
    return storable_text((head + "\nTraceback (innermost last):\n" + "".join(lines))[:4000])


def _make_timeout_decider(now: Callable[[], float]) -> Callable[[int, str, bytes | None], Any]:
    def decider(seq: int, kind: str, last_failure: bytes | None) -> Any:
        failure = _failure_decoder.decode(last_failure) if last_failure else None
        return activity_timed_out_outcome(seq, kind, failure, now())

    return decider
