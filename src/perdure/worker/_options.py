"""How a worker behaves: concurrency, cache, leases, timeouts, guards."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from perdure._errors import ConfigurationError
from perdure.workflow._guard import GUARD_MODES

__all__ = ["WorkerOptions"]

_COUNTS = {  # field: least value
    "max_concurrent_workflow_tasks": 1, "max_concurrent_activities": 1,
    "max_cached_workflows": 0, "history_warning_events": 1, "history_warning_bytes": 1,
}
_DURATIONS = {  # field: whether 0 is allowed
    "workflow_task_lease": False, "liveness_interval": False, "dead_worker_timeout": False,
    "sticky_timeout": True, "max_poll_interval": False, "graceful_shutdown_timeout": True,
    "max_heartbeat_interval": False, "loop_stall_timeout": False,
}


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """Tuning knobs of a :class:`Worker`; the defaults suit most deployments."""

    max_concurrent_workflow_tasks: int = 64
    """Workflow activations processed at once."""
    max_concurrent_activities: int = 100
    """Activity attempts running at once (async and thread-pool together)."""
    max_cached_workflows: int = 1000
    """Running workflows kept in memory (LRU); others are replayed when they wake."""
    workflow_task_lease: float = 60.0
    """Seconds a claimed workflow task stays ours without completion."""
    liveness_interval: float = 0.5
    """Seconds between liveness heartbeats."""
    dead_worker_timeout: float = 2.0
    """A worker silent this long is dead; its tasks are reclaimed. The heartbeat is
    beaten from a thread of its own, so a worker falls silent when its process does
    (crashed, frozen, cut off from the database), not while its event loop is busy or
    blocked, up to ``loop_stall_timeout``."""
    loop_stall_timeout: float = 60.0
    """Seconds this worker's event loop may go without running (workflow code or an
    async activity blocking it, a starved machine) before the worker stops its liveness
    heartbeat, so that other workers take over its work. Until then a slow or blocked
    loop does not make it look dead."""
    sticky_timeout: float = 5.0
    """Seconds a run's next workflow task waits for this worker (its cache) first."""
    max_poll_interval: float = 0.25
    """Longest wait between polls when no in-process wake-up arrives."""
    graceful_shutdown_timeout: float = 10.0
    """On shutdown, running activities get this long to finish before being handed back."""
    eager_activities: bool = True
    """Run activities this worker can serve at once, without a claim round trip."""
    max_heartbeat_interval: float = 1.0
    """Longest delay before a recorded activity heartbeat reaches the database."""
    history_warning_events: int = 10_000
    """A run's history this long (events) is logged as a warning, once per run, and
    ``workflow.info().continue_as_new_suggested`` turns true: time to continue as new."""
    history_warning_bytes: int = 10 * 1024 * 1024
    """The same, for the history's size in bytes."""
    determinism_guard: str = "raise"
    """What happens when workflow code (a run, a signal or query handler, an update
    validator) calls the real clock (``time.time``, ``datetime.now``), the global
    ``random``, ``uuid.uuid4``, ``os.urandom``, ``secrets``, file or network I/O, threads or
    subprocesses: ``"raise"`` fails the workflow task with a ``NondeterminismError`` that
    names the call, its line and the workflow-safe alternative (the run stays running; its
    task is retried), ``"warn"`` logs a warning once per call site and lets the call
    through, ``"off"`` does not check. The check makes activations about twice as slow
    (some 13 µs more per activation of a realistic workflow; see ``benchmarks/README.md``)."""
    workflow_failure_exception_types: Sequence[type[BaseException]] = ()
    """Exception types that fail a run when they escape workflow code, for every workflow
    this worker runs (Temporal's ``workflow_failure_exception_types``), besides
    ``ApplicationError`` and the other failures and each workflow's own
    ``@workflow.defn(failure_exception_types=...)``. Any other exception fails the
    workflow task, which is retried until a deploy fixes the code. Pass ``Exception``
    to fail runs on any exception."""

    def __post_init__(self) -> None:
        """Refuse values that could only fail, or misbehave, once the worker runs."""
        for name, least in _COUNTS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigurationError(
                    f"WorkerOptions.{name} must be a whole number >= {least}, not {value!r}"
                )
        for name, zero_ok in _DURATIONS.items():
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok)):
                raise ConfigurationError(
                    f"WorkerOptions.{name} must be a finite number of seconds "
                    f"{'>= 0' if zero_ok else '> 0'}, not {value!r}"
                )
        if self.dead_worker_timeout <= self.liveness_interval:
            raise ConfigurationError(
                f"WorkerOptions.dead_worker_timeout ({self.dead_worker_timeout!r}s) must be "
                f"longer than liveness_interval ({self.liveness_interval!r}s), or live workers "
                "are declared dead between two heartbeats; a few intervals is usual"
            )
        if not isinstance(self.eager_activities, bool):
            raise ConfigurationError(
                f"WorkerOptions.eager_activities must be True or False, not "
                f"{self.eager_activities!r}"
            )
        for exc_type in self.workflow_failure_exception_types:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise ConfigurationError(
                    "WorkerOptions.workflow_failure_exception_types must be exception "
                    f"classes, not {exc_type!r}")
        if self.determinism_guard not in GUARD_MODES:
            raise ConfigurationError(
                f"WorkerOptions.determinism_guard must be one of {', '.join(GUARD_MODES)}, "
                f"not {self.determinism_guard!r}"
            )
