"""An activity attempt's task token: what names one attempt to complete it from anywhere.

Opaque to users; inside, a JSON array (a version tag, the workflow id, the run id, the
activity's sequence number and the attempt number), so that it crosses any system an
activity hands it to (a URL, a queue message, a database column) as plain bytes.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from perdure._errors import InvalidArgumentError
from perdure._identifiers import shown

__all__ = ["AttemptRef", "decode_task_token", "encode_task_token"]

_TAG = "perdure-activity/1"

AttemptRef = tuple[str, str, int, int]
"""(workflow id, run id, activity seq, attempt)."""

_decoder = msgspec.json.Decoder(tuple[Literal["perdure-activity/1"], str, str, int, int])


def encode_task_token(workflow_id: str, run_id: str, seq: int, attempt: int) -> bytes:
    """The token of one attempt."""
    return msgspec.json.encode((_TAG, workflow_id, run_id, seq, attempt))


def decode_task_token(token: bytes) -> AttemptRef:
    """The attempt a token names; :class:`InvalidArgumentError` for anything else."""
    try:
        _tag, workflow_id, run_id, seq, attempt = _decoder.decode(token)
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError, UnicodeError):
        raise InvalidArgumentError(
            f"{shown(token, 80)} is not a Perdure activity task token; pass the bytes of "
            "activity.info().task_token unchanged"
        ) from None
    return workflow_id, run_id, seq, attempt
