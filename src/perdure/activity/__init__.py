"""Activity code's API: the ``defn`` decorator, attempt info, heartbeats, cancellation.

Activities are where side effects live (LLM calls, tool runs, provisioning).
They run at least once; retries follow the caller's ``RetryPolicy``.
"""

from perdure.activity._context import (
    ActivityInfo,
    RatePermit,
    heartbeat,
    heartbeat_details,
    info,
    is_cancelled,
    load_payloads,
    payload_ref,
    publish,
    rate_limit,
    store_payloads,
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
    "payload_ref",
    "publish",
    "rate_limit",
    "store_payloads",
]
