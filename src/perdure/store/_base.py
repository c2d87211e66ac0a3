"""The storage interface every backend implements (SQLite now, PostgreSQL next).

Each method is one transaction. The engine decides *what* changes; a store
only knows how to write it atomically and how to find due work.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from perdure._clock import Clock
from perdure.store._records import (
    ActivityDecision,
    ActivityTaskClaim,
    QueryTaskClaim,
    ResetRecord,
    RunRecord,
    RunSnapshot,
    StartWorkflowRecord,
    WorkflowTaskClaim,
    WorkflowTaskCompletion,
)

__all__ = [
    "ASYNC_COMPLETION_OWNER",
    "STOP",
    "StoreNotes",
    "StoreNotifier",
    "TimeoutDecider",
    "WorkflowStore",
    "resolve_batch",
    "take_batch",
]

ASYNC_COMPLETION_OWNER = "(async completion)"
"""The lease owner of an attempt left open by ``activity.raise_complete_async()``: no
worker holds it, so none hands it back when leaving and no sweep reclaims it as a dead
worker's; only its timeouts or an ``AsyncActivityHandle`` end it. (Worker identities
cannot take this name.)"""

TimeoutDecider = Callable[[int, str, bytes | None], ActivityDecision]
"""(activity seq, timeout type, last failure) -> the engine's decision function."""


class StoreNotes:
    """What one committed operation should wake in this process: kinds of new work, the
    earliest new due time (a timer, deadline or retry) it created, and the runs it closed."""

    __slots__ = ("closed_runs", "due", "kinds", "outcomes")

    def __init__(self) -> None:
        self.kinds: set[str] = set()
        self.due = math.inf
        self.closed_runs: list[str] = []
        self.outcomes: dict[str, RunOutcome] = {}

    def run_closed(self, run_id: str, outcome: RunOutcome | None = None) -> None:
        """A run closed: wake whoever waits for its result (and hand it over, if known)."""
        self.kinds.add("closed")
        self.closed_runs.append(run_id)
        if outcome is not None:
            self.outcomes[run_id] = outcome

    def add(self, kind: str) -> None:
        self.kinds.add(kind)

    def update(self, kinds: Iterable[str]) -> None:
        self.kinds.update(kinds)

    def due_at(self, when: float | None) -> None:
        """Something becomes due at ``when``; the due-work sweep wakes if that is sooner."""
        if when is not None and when < self.due:
            self.due = when


RunOutcome = tuple[str, "bytes | None", "bytes | None"]
"""(status, result, failure) of a closed run."""


class RunWatch:
    """A waiter for one run's close: ``event`` is set when it closes; ``outcome`` is its
    (status, result, failure) when the close was committed by this process."""

    __slots__ = ("event", "outcome", "watchers")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.outcome: RunOutcome | None = None
        self.watchers = 0


class StoreNotifier:
    """In-process wake-ups: a committed change wakes the workers of this process at once.

    Kinds: ``workflow_task``, ``activity_task``, ``timer``, ``closed``, ``query``,
    ``query_answer``. Other processes fall back to bounded back-off polling (or
    LISTEN/NOTIFY on PostgreSQL).
    """

    KINDS = ("workflow_task", "activity_task", "timer", "closed", "query", "query_answer",
             "update", "stream")

    ALL_RUNS = "*"
    """In ``closed_runs``: some runs closed, which ones is not known (wake every waiter)."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._run_watches: dict[str, RunWatch] = {}
        self.version = 0
        self.first_poll = 0.01
        """The first of those polls' back-off waits."""
        self.poll_interval = 0.5
        """Longest wait between polls for a change no notification may announce (another
        process's commit on a shared SQLite file); PostgreSQL's NOTIFY allows longer."""
        self.next_due = -math.inf
        """When the due-work sweep will next look; earlier new due times wake it."""
        self.close_listeners: list[Callable[[str], None]] = []
        """Called with each run id reported closed (not for ``ALL_RUNS``): a worker stops
        activities of a run that another transaction closed (a parent's close policy)."""

    def event(self, kind: str) -> asyncio.Event:
        event = self._events.get(kind)
        if event is None:
            event = self._events[kind] = asyncio.Event()
        return event

    def notify(self, kinds: Iterable[str], due: float = math.inf,
               closed_runs: Iterable[str] = (),
               outcomes: dict[str, RunOutcome] | None = None) -> None:
        self.version += 1
        for kind in kinds:
            event = self._events.get(kind)
            if event is not None:
                event.set()
        if due < self.next_due:
            self.event("timer").set()
        for run_id in closed_runs:
            if run_id == self.ALL_RUNS:
                for watch in self._run_watches.values():
                    watch.event.set()
                break
            for listener in self.close_listeners:
                listener(run_id)
            waiting = self._run_watches.get(run_id)
            if waiting is not None:
                if outcomes and run_id in outcomes:
                    waiting.outcome = outcomes[run_id]
                waiting.event.set()

    @contextlib.contextmanager
    def watch_run(self, run_id: str) -> Iterator[RunWatch]:
        """A watch whose event is set when ``run_id`` is reported closed. Watch *before*
        reading the run's status, so that a close committed in between is not missed."""
        watch = self._run_watches.get(run_id)
        if watch is None:
            watch = self._run_watches[run_id] = RunWatch()
        watch.watchers += 1
        try:
            yield watch
        finally:
            watch.watchers -= 1
            if watch.watchers <= 0:
                del self._run_watches[run_id]

    async def wait(self, kinds: Sequence[str], timeout: float) -> None:
        """Wait until one of ``kinds`` is notified, or ``timeout`` seconds pass."""
        events = [self.event(kind) for kind in kinds]
        if any(e.is_set() for e in events):
            for e in events:
                e.clear()
            return
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            for e in events:
                e.clear()


STOP = object()
"""Put in a writer's queue to stop one of its threads."""


def take_batch(q: queue.SimpleQueue[Any], most: int) -> tuple[list[Any], bool]:
    """Block for one queued operation, then take every other one waiting (up to ``most``):
    a group commit's batch. Also whether a :data:`STOP` came (the batch may be empty)."""
    item = q.get()
    if item is STOP:
        return [], True
    batch = [item]
    while len(batch) < most:
        try:
            nxt = q.get_nowait()
        except queue.Empty:
            break
        if nxt is STOP:
            return batch, True
        batch.append(nxt)
    return batch, False


def resolve_batch(items: list[Any], notifier: StoreNotifier) -> None:
    """On the waiting event loop: settle a committed batch's futures, then wake what its
    operations created, in one notification."""
    kinds: set[str] = set()
    due = math.inf
    closed: list[str] = []
    outcomes: dict[str, RunOutcome] = {}
    for future, value, exc, notes in items:
        if notes is not None:
            kinds |= notes.kinds
            due = min(due, notes.due)
            closed.extend(notes.closed_runs)
            outcomes.update(notes.outcomes)
        if future.done():
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)
    if kinds or due < math.inf:
        notifier.notify(kinds, due, closed, outcomes)


class WorkflowStore:
    """Durable state of every workflow; one method, one transaction."""

    clock: Clock
    notifier: StoreNotifier
    url: str

    async def migrate(self) -> None:
        """Create or upgrade the schema; refuse a schema newer than this code."""
        raise NotImplementedError

    async def schema_version(self) -> int:
        """The schema version in the database (0 when Perdure never migrated it)."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    # client side -----------------------------------------------------------
    async def start_workflow(self, record: StartWorkflowRecord) -> str:
        """Create a run; return its run id (an existing one for signal-with-start)."""
        raise NotImplementedError

    async def deliver_event(self, workflow_id: str, run_id: str | None, event: bytes) -> str:
        """Put an inbound event (signal, cancel request) in a running workflow's inbox."""
        raise NotImplementedError

    async def request_update(
        self, workflow_id: str, run_id: str | None, update_id: str, name: str, event: bytes
    ) -> str:
        """Put an update request (an ``UpdateRequested`` event) in the running run's
        inbox; return the run id. Asking again with the same ``update_id`` changes
        nothing."""
        raise NotImplementedError

    async def acquire_permit(
        self, name: str, holder: str, *, concurrency: int | None, per_minute: int | None,
        tokens: int, lease: float,
    ) -> float | None:
        """Take a share of limit ``name`` for ``holder`` if ``concurrency`` (held at once)
        and ``per_minute`` (tokens in the last minute) allow: None if granted, else how
        many seconds to wait before asking again (asking again as the same holder is
        fine)."""
        raise NotImplementedError

    async def release_permit(self, name: str, holder: str, tokens: int) -> None:
        """Give the share back, recording the tokens it really used."""
        raise NotImplementedError

    async def append_stream(self, events: Sequence[tuple[str, str, bytes]]) -> None:
        """Publish (workflow id, run id, JSON) events to those workflows' streams."""
        raise NotImplementedError

    async def read_stream(self, workflow_id: str, after: int, limit: int,
                          ) -> list[tuple[int, str, bytes]]:
        """A workflow's stream events with id > ``after``, in order: (id, run id, JSON)."""
        raise NotImplementedError

    async def put_payloads(self, workflow_id: str, payloads: Sequence[tuple[str, bytes]],
                           ) -> None:
        """Store content by its hash, once (storing it again changes nothing)."""
        raise NotImplementedError

    async def get_payloads(self, workflow_id: str, hashes: Sequence[str]) -> dict[str, bytes]:
        """The stored content of these hashes (missing ones are left out)."""
        raise NotImplementedError

    async def reset_workflow(self, record: ResetRecord) -> str:
        """Reset (or fork) a run: insert the new run with a prefix of the source's history,
        its pending work and re-delivered events; a reset also ends the source run. One
        transaction; returns the new run id."""
        raise NotImplementedError

    async def get_update(
        self, workflow_id: str, update_id: str
    ) -> tuple[str, bytes | None, bytes | None] | None:
        """An update's (state, result, failure); state is requested, accepted, rejected,
        completed or failed."""
        raise NotImplementedError

    async def terminate(
        self, workflow_id: str, run_id: str | None, event: bytes, failure: bytes
    ) -> str:
        """Close a running workflow at once, without running its code."""
        raise NotImplementedError

    async def get_run(self, workflow_id: str, run_id: str | None, *, detail: bool = False) -> RunRecord:
        raise NotImplementedError

    async def get_history(
        self, workflow_id: str, run_id: str, *, after: int = 0
    ) -> list[tuple[int, str, bytes]]:
        raise NotImplementedError

    async def read_snapshot(self, workflow_id: str, run_id: str, *,
                            history: bool) -> RunSnapshot:
        """The run's inbox (and, with ``history``, its history) at one instant: what a
        query must see (every acknowledged inbound event, once)."""
        raise NotImplementedError

    async def list_runs(
        self, *, status: str | None, workflow_type: str | None, limit: int,
        started: tuple[float | None, float | None] = (None, None),
        closed: tuple[float | None, float | None] = (None, None),
        before: tuple[float, str, str] | None = None,
        parent: tuple[str, str | None] | None = None,
        search_attributes: dict[str, Any] | None = None,
    ) -> list[RunRecord]:
        """Runs newest first (by start time, then workflow id, then run id), filtered;
        ``started``/``closed`` are [from, until) ranges; ``before`` is the sort key of the
        last run of the previous page (keyset pagination); ``parent`` is a parent's
        (workflow id, run id or None for any of its runs); ``search_attributes`` keeps
        runs whose attributes equal every given value."""
        raise NotImplementedError

    async def delete_closed_runs(self, closed_before: float, limit: int) -> int:
        """Delete up to ``limit`` runs closed before ``closed_before`` (store clock), with
        their histories; return how many. Retention: running runs are never touched.
        :class:`InvalidArgumentError` for a cutoff that is not a finite time >= 0, or a
        ``limit`` below 1."""
        raise NotImplementedError

    async def enqueue_query(self, workflow_id: str, run_id: str, task_queue: str, name: str,
                            args: bytes) -> int:
        raise NotImplementedError

    async def take_query_answer(self, query_id: int, *, give_up: bool) -> tuple[bool, bytes | None, str | None]:
        """(done, answer, error); ``give_up`` deletes an unanswered query."""
        raise NotImplementedError

    async def workflow_type_interface(self, workflow_type: str) -> tuple[set[str], set[str]] | None:
        """(signal names, query names) that workers registered for a type, if any."""
        raise NotImplementedError

    # worker side ---------------------------------------------------------------
    async def register_worker(
        self, worker_id: str, task_queues: Sequence[str], build_id: str,
        workflow_types: Sequence[tuple[str, list[str], list[str]]],
    ) -> None:
        raise NotImplementedError

    async def worker_heartbeat(self, worker_id: str) -> list[tuple[str, str, int]]:
        """Record liveness; return (workflow_id, run_id, seq) of this worker's
        running activities whose cancellation was requested."""
        raise NotImplementedError

    def keep_alive(self, worker_id: str, interval: float, alive: Callable[[], bool]) -> None:
        """Beat ``worker_id``'s liveness heartbeat every ``interval`` seconds from a thread
        on a connection of the store's own, whether or not the caller's event loop is free,
        for as long as ``alive()`` (called in that thread) is true, until
        :meth:`stop_keeping_alive` or :meth:`close`."""
        raise NotImplementedError

    async def stop_keeping_alive(self, worker_id: str) -> None:
        """Stop beating ``worker_id``; no beat of it lands after this returns."""
        raise NotImplementedError

    async def remove_worker(self, worker_id: str) -> None:
        raise NotImplementedError

    async def claim_workflow_tasks(
        self, worker_id: str, task_queues: Sequence[str], limit: int, lease: float
    ) -> list[WorkflowTaskClaim]:
        raise NotImplementedError

    async def complete_workflow_task(self, completion: WorkflowTaskCompletion) -> bool:
        """Commit a workflow task; False if the run moved on (the cached copy is stale)."""
        raise NotImplementedError

    async def complete_activity_and_workflow_task(
        self, seq: int, attempt: int, event: bytes, completion: WorkflowTaskCompletion
    ) -> str:
        """Record an activity's result and the next activation it caused, in one commit.

        For a worker that has the run cached. Returns ``"fused"`` when both were
        written; ``"accepted"`` when only the result was recorded (the run moved on,
        or another worker holds its task: the cached copy is stale); ``"rejected"``
        when the attempt is no longer current.
        """
        raise NotImplementedError

    async def fail_workflow_task(
        self, workflow_id: str, run_id: str, worker_id: str, error: str, retry_at: float
    ) -> None:
        raise NotImplementedError

    async def claim_activity_tasks(
        self, worker_id: str, task_queues: Sequence[str], limit: int
    ) -> list[ActivityTaskClaim]:
        raise NotImplementedError

    async def finish_activity_attempt(
        self,
        workflow_id: str,
        run_id: str,
        seq: int,
        attempt: int,
        worker_id: str,
        decide: ActivityDecision,
        *,
        claim_workflow_task: bool,
        lease: float,
    ) -> tuple[bool, WorkflowTaskClaim | None]:
        """Record an attempt's end; (accepted, the workflow task if claimed for this worker).

        A completion from an attempt that is no longer current is rejected
        (invariant 3).
        """
        raise NotImplementedError

    async def heartbeat_activity(
        self, workflow_id: str, run_id: str, seq: int, attempt: int, worker_id: str,
        details: bytes | None,
    ) -> bool:
        """Record a heartbeat; True if the attempt should stop (cancelled or superseded)."""
        raise NotImplementedError

    async def release_activity(
        self, workflow_id: str, run_id: str, seq: int, attempt: int, worker_id: str
    ) -> None:
        """Hand an unfinished attempt back (graceful shutdown) without using up an attempt."""
        raise NotImplementedError

    async def await_async_completion(
        self, workflow_id: str, run_id: str, seq: int, attempt: int, worker_id: str
    ) -> bool:
        """Leave an attempt leased to ``worker_id`` open for an :class:`AsyncActivityHandle`
        (its lease passes to :data:`ASYNC_COMPLETION_OWNER`); False if it is no longer
        current (someone completed it already, or it timed out)."""
        raise NotImplementedError

    async def resolve_async_activity(
        self, workflow_id: str, run_id: str | None, seq: int, attempt: int | None,
        decide: Callable[[int], ActivityDecision],
    ) -> bool:
        """End a started attempt from outside its worker (``decide`` maps the attempt
        number to the engine's decision), committed as an attempt's end is: retry, or the
        inbox event and a workflow task. ``run_id`` None: the latest run; ``attempt`` None:
        the current attempt. False when no started attempt matches."""
        raise NotImplementedError

    async def heartbeat_async_activity(
        self, workflow_id: str, run_id: str | None, seq: int, attempt: int | None,
        details: bytes | None,
    ) -> str | None:
        """Record a heartbeat for a started attempt from outside its worker: ``"ok"``,
        ``"cancelled"`` (recorded, but its cancellation was requested), or None when no
        started attempt matches."""
        raise NotImplementedError

    async def fire_due_timers(self, limit: int) -> int:
        raise NotImplementedError

    async def expire_activities(self, limit: int, decider: TimeoutDecider) -> int:
        raise NotImplementedError

    async def reclaim_dead_workers(self, dead_after: float, decider: TimeoutDecider) -> int:
        raise NotImplementedError

    async def claim_query_tasks(
        self, worker_id: str, task_queues: Sequence[str], limit: int
    ) -> list[QueryTaskClaim]:
        raise NotImplementedError

    async def answer_query(self, query_id: int, answer: bytes | None, error: str | None) -> None:
        raise NotImplementedError

    async def next_due_time(self, task_queues: Sequence[str] | None = None, *,
                            after: float | None = None,
                            running_on: Sequence[str] = ()) -> float | None:
        """The earliest time at which anything becomes due (timers, retries, timeouts).

        With ``task_queues``, unclaimed tasks count only on those queues; with ``after``,
        only times later than it (what is overdue already is someone else's to take);
        deadlines of attempts running on the workers ``running_on`` are left out.
        """
        raise NotImplementedError

    async def count_ready_tasks(self, task_queues: Sequence[str] | None = None) -> int:
        """Workflow and activity tasks that a worker could claim now (on ``task_queues``)."""
        raise NotImplementedError
