"""Activity code's API: the ``defn`` decorator, attempt info, heartbeats, cancellation.

Activities are where side effects live (LLM calls, tool runs, provisioning).
They run at least once; retries follow the caller's ``RetryPolicy``.

How cancellation reaches an attempt. The worker learns that an attempt must stop when
its workflow cancels it or closes (at once on the worker that ran that activation,
otherwise at the attempt's next heartbeat or the worker's next liveness round), when
its start-to-close or schedule-to-close time is up, when a heartbeat finds that it was
superseded (timed out, retried), or when the worker shuts down and its grace period
ends. Then:

- an ``async def`` activity's task gets ``asyncio.CancelledError`` at the ``await`` it
  is in, as any asyncio task;
- a plain ``def`` activity runs in a thread, which Python cannot interrupt: the attempt
  is *told*. ``is_cancelled()`` turns true, ``wait_for_cancelled_sync()`` returns, and
  the next ``heartbeat()`` raises :class:`perdure.CancelledFailure` (Temporal's
  ``CancelledError``), so that a loop that heartbeats stops by itself. The worker waits
  for the thread to return (up to ``WorkerOptions.graceful_shutdown_timeout``, then it
  logs a warning naming the activity) before it frees the slot and reports.
"""

from perdure.activity._context import (
    ActivityInfo,
    RatePermit,
    heartbeat,
    heartbeat_details,
    info,
    is_cancelled,
    load_payloads,
    logger,
    payload_ref,
    publish,
    raise_complete_async,
    rate_limit,
    store_payloads,
    wait_for_cancelled,
    wait_for_cancelled_sync,
)
from perdure.activity._definition import ActivityDefinition, defn

__all__ = [
    "ActivityDefinition",
    "ActivityInfo",
    "RatePermit",
    "defn",
    "heartbeat",
    "heartbeat_details",
    "info",
    "is_cancelled",
    "load_payloads",
    "logger",
    "payload_ref",
    "publish",
    "raise_complete_async",
    "rate_limit",
    "store_payloads",
    "wait_for_cancelled",
    "wait_for_cancelled_sync",
]
