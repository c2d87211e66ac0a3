"""``@activity.defn``: marks a function as an activity and records its shape."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

from perdure._converter import parameter_hints, return_hint

__all__ = ["ActivityDefinition", "defn", "get_activity_definition"]

F = TypeVar("F", bound=Callable[..., Any])

_ATTR = "__perdure_activity__"


@dataclasses.dataclass(frozen=True)
class ActivityDefinition:
    """What the worker and the workflow runtime need to know about an activity."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    parameter_hints: list[Any]
    return_hint: Any


@overload
def defn(fn: F) -> F: ...


@overload
def defn(*, name: str | None = None) -> Callable[[F], F]: ...


def defn(fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
    """Mark a function (``async def`` or plain ``def``) as an activity.

    Plain functions run in the worker's thread pool. ``name`` is the activity
    type recorded in history; it defaults to the function's ``__name__``, and
    should stay stable once histories reference it.
    """

    def decorate(f: F) -> F:
        definition = ActivityDefinition(
            name=name or f.__name__,
            fn=f,
            is_async=inspect.iscoroutinefunction(f),
            parameter_hints=parameter_hints(f),
            return_hint=return_hint(f),
        )
        setattr(f, _ATTR, definition)
        return f

    if fn is not None:
        return decorate(fn)
    return decorate


def get_activity_definition(fn: Any) -> ActivityDefinition | None:
    """The definition attached by :func:`defn`, or ``None``."""
    return getattr(fn, _ATTR, None)
