"""Ids and names, as both backends store and index them: one rule, checked where they enter.

A workflow id, run id, update id, task queue, workflow or activity type, and a signal,
query or update name is a non-empty ``str`` that PostgreSQL can store in an indexed
``TEXT`` column:

* no NUL character (PostgreSQL's text cannot hold one);
* valid UTF-8: no lone surrogate (``"\\ud800"``), which no encoder accepts;
* at most :data:`MAX_NAME_BYTES` bytes in UTF-8 (a B-tree entry holds about 2,700 bytes,
  and some indexes hold two such names).

SQLite could store more; the rule is the same on both backends, so that what runs on
one runs on the other. The client checks what callers pass, and workflow code's
commands are checked at the call (``start_child_workflow``, ``upsert_search_attributes``,
``ExternalWorkflowHandle.signal``, ...), where the code can catch
:class:`InvalidArgumentError`; nothing unstorable reaches a transaction, where it would
fail the workflow task on every retry. An id built from untrusted text (a model's
tool-call id) should go through a hash, as the agent layer's ids do.
"""

from __future__ import annotations

import reprlib
from typing import Any

from perdure._errors import InvalidArgumentError
from perdure._recorded import replaying_recorded

__all__ = [
    "MAX_NAME_BYTES",
    "check_name",
    "check_optional_name",
    "check_text",
    "name_problem",
    "shown",
    "storable_text",
]

MAX_NAME_BYTES = 1000
"""Longest id or name, in UTF-8 bytes (also the longest string search attribute value)."""


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlong = 3, 60, 60, 40


def shown(value: Any, limit: int = 60) -> str:
    """A short ``repr`` of ``value``, safe to put in an error message whatever it is
    (nested a million deep, a broken ``__repr__``) and to store (repr escapes NUL and
    surrogates)."""
    try:
        text = _repr.repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else f"{text[:limit]}..."


def name_problem(value: str, *, limit: int = MAX_NAME_BYTES) -> str | None:
    """Why the database could not store and index ``value``, or None when it can."""
    if "\x00" in value:
        return "contains a NUL character (\\x00), which PostgreSQL cannot store"
    try:
        size = len(value.encode())
    except UnicodeEncodeError as exc:
        return (f"is not valid UTF-8: a lone surrogate {value[exc.start]!r} at position "
                f"{exc.start}")
    if size > limit:
        return f"is {size} bytes in UTF-8, over the limit of {limit}"
    return None


def check_name(value: Any, what: str) -> str:
    """``value`` if it is a storable id or name; else :class:`InvalidArgumentError` naming
    ``what`` ("workflow id", "task_queue", "child workflow id") and the fix."""
    if not isinstance(value, str):
        raise InvalidArgumentError(
            f"{what} must be a string, not {type(value).__name__} ({shown(value)})")
    if not value:
        raise InvalidArgumentError(f"{what} must be a non-empty string")
    if replaying_recorded():
        return value  # history holds it already (recorded under older, looser rules)
    problem = name_problem(value)
    if problem is not None:
        raise InvalidArgumentError(
            f"{what} {shown(value)} {problem}; ids and names are at most {MAX_NAME_BYTES} "
            "bytes of UTF-8 without NUL characters (derive one from untrusted text with a "
            "hash, such as hashlib.sha256(text.encode()).hexdigest())")
    return value


def check_optional_name(value: Any, what: str) -> str | None:
    """:func:`check_name`, where ``None`` means "not given"."""
    return None if value is None else check_name(value, what)


def check_text(value: Any, what: str, *, limit: int) -> str:
    """Free text recorded in history (a cancel or terminate reason): a ``str`` that
    encodes to UTF-8 (no lone surrogates), at most ``limit`` bytes."""
    if not isinstance(value, str):
        raise InvalidArgumentError(
            f"{what} must be a string, not {type(value).__name__} ({shown(value)})")
    if replaying_recorded():
        return value
    try:
        size = len(value.encode())
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(
            f"{what} is not valid UTF-8: a lone surrogate at position {exc.start}") from None
    if size > limit:
        raise InvalidArgumentError(f"{what} is {size} bytes, over the limit of {limit}")
    return value


def storable_text(text: str) -> str:
    """Free text (an error message) as any TEXT column stores it: NUL characters and lone
    surrogates escaped rather than refused (the message must not be lost)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode()
    return text

