"""``@workflow.defn`` and friends: how a workflow class declares itself."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

from perdure._converter import parameter_hints, return_hint
from perdure._errors import ConfigurationError

__all__ = [
    "HandlerDefinition",
    "WorkflowDefinition",
    "defn",
    "get_workflow_definition",
    "init",
    "query",
    "run",
    "signal",
    "update",
    "update_validator",
]

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])

_DEFN = "__perdure_workflow__"
_RUN = "__perdure_run__"
_SIGNAL = "__perdure_signal__"
_QUERY = "__perdure_query__"
_UPDATE = "__perdure_update__"
_VALIDATES = "__perdure_validates__"
_OWNER = "__perdure_owner__"
_INIT = "__perdure_init__"


@dataclasses.dataclass(frozen=True)
class HandlerDefinition:
    """A signal, query or update handler method."""

    name: str
    method: Callable[..., Any]
    is_async: bool
    parameter_hints: list[Any]
    return_hint: Any
    validator: Callable[..., Any] | None = None
    """Updates only: called with the same arguments before the update is accepted; an
    exception rejects the update without a trace in history."""


@dataclasses.dataclass(frozen=True)
class WorkflowDefinition:
    """A workflow class as the runtime sees it."""

    name: str
    cls: type
    run_method: Callable[..., Any]
    run_parameter_hints: list[Any]
    run_return_hint: Any
    signals: dict[str, HandlerDefinition]
    queries: dict[str, HandlerDefinition]
    dynamic_signals: bool = False
    updates: dict[str, HandlerDefinition] = dataclasses.field(default_factory=dict)
    init_takes_arguments: bool = False
    """``__init__`` is marked ``@workflow.init``: it receives the run's arguments."""
    failure_exception_types: tuple[type[BaseException], ...] = ()
    """Exception types that fail a run of this workflow when its code lets them escape
    (besides ``ApplicationError`` and the other failures); any other exception fails
    only the workflow task, which is retried."""


def init(fn: F) -> F:
    """Mark ``__init__`` as taking the workflow's arguments, as ``@workflow.run`` does
    (Temporal's ``@workflow.init``): state can then be set up from the input before any
    signal or update handler runs. Its parameters must match the run method's."""
    if getattr(fn, "__name__", "") != "__init__":
        raise ConfigurationError(
            f"@workflow.init goes on __init__, not on {getattr(fn, '__qualname__', fn)}")
    setattr(fn, _INIT, True)
    return fn


def run(fn: F) -> F:
    """Mark the ``async`` method that runs the workflow; exactly one per class."""
    if not inspect.iscoroutinefunction(fn):
        raise ConfigurationError(f"@workflow.run method {fn.__qualname__} must be 'async def'")
    setattr(fn, _RUN, True)
    return fn


@overload
def signal(fn: F) -> F: ...


@overload
def signal(*, name: str | None = None) -> Callable[[F], F]: ...


def signal(fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
    """Mark a method as a signal handler (sync or async); ``name`` defaults to the method name."""

    def decorate(f: F) -> F:
        setattr(f, _SIGNAL, name or f.__name__)
        return f

    return decorate(fn) if fn is not None else decorate


@overload
def query(fn: F) -> F: ...


@overload
def query(*, name: str | None = None) -> Callable[[F], F]: ...


def query(fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
    """Mark a plain (non-async) method as a query handler: it reads state, never changes it."""

    def decorate(f: F) -> F:
        if inspect.iscoroutinefunction(f):
            raise ConfigurationError(f"@workflow.query method {f.__qualname__} must not be async")
        setattr(f, _QUERY, name or f.__name__)
        return f

    return decorate(fn) if fn is not None else decorate


@overload
def update(fn: F) -> F: ...


@overload
def update(*, name: str | None = None) -> Callable[[F], F]: ...


def update(fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
    """Mark a method (sync or async) as an update handler: a request that changes the
    workflow and returns a value to the caller. ``name`` defaults to the method name.

    Add a validator with ``@workflow.update_validator(handler)`` (or
    ``@handler.validator``): it runs first, and an exception it raises rejects the
    update without leaving a trace in history.
    """

    def decorate(f: F) -> F:
        setattr(f, _UPDATE, name or f.__name__)
        f.validator = update_validator(f)  # type: ignore[attr-defined]
        return f

    return decorate(fn) if fn is not None else decorate


def update_validator(handler: Callable[..., Any]) -> Callable[[F], F]:
    """Declare the decorated plain (non-async) method as the validator of update ``handler``.

    It takes the handler's arguments, must not change state or start anything, and
    raises to reject the update.
    """

    def decorate(f: F) -> F:
        if inspect.iscoroutinefunction(f):
            raise ConfigurationError(f"update validator {f.__qualname__} must not be async")
        setattr(f, _VALIDATES, handler)
        return f

    return decorate


def _handler(name: str, method: Callable[..., Any],
             validator: Callable[..., Any] | None = None) -> HandlerDefinition:
    return HandlerDefinition(
        name=name,
        method=method,
        is_async=inspect.iscoroutinefunction(method),
        parameter_hints=parameter_hints(method, skip_self=True),
        return_hint=return_hint(method),
        validator=validator,
    )


@overload
def defn(cls: C) -> C: ...


@overload
def defn(
    *, name: str | None = None, dynamic_signals: bool = False,
    failure_exception_types: Sequence[type[BaseException]] = (),
) -> Callable[[C], C]: ...


def defn(
    cls: C | None = None, *, name: str | None = None, dynamic_signals: bool = False,
    failure_exception_types: Sequence[type[BaseException]] = (),
) -> C | Callable[[C], C]:
    """Mark a class as a workflow definition.

    ``name`` is the workflow type recorded in history (default: the class name);
    keep it stable once workflows of this type are running. ``dynamic_signals``
    declares that the workflow registers signal handlers at run time, so clients
    must not reject signal names the class does not declare.

    An exception escaping the workflow's code fails the *run* only if it is an
    ``ApplicationError`` (or another Perdure failure, such as an ``ActivityError`` the
    code did not catch) or one of ``failure_exception_types``; any other exception is
    treated as a bug: it fails the workflow *task*, which is retried with back-off and
    shown by ``describe()``, until a deploy that fixes the code lets the run go on.
    """
    for exc_type in failure_exception_types:
        if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
            raise ConfigurationError(
                f"failure_exception_types must be exception classes, not {exc_type!r}")

    def decorate(c: C) -> C:
        run_method = None
        signals: dict[str, HandlerDefinition] = {}
        queries: dict[str, HandlerDefinition] = {}
        updates: dict[str, HandlerDefinition] = {}
        validators: dict[Any, Callable[..., Any]] = {}
        for attr_name in dir(c):
            member = getattr(c, attr_name, None)
            target = getattr(member, _VALIDATES, None)
            if target is not None:
                validators[target] = member  # type: ignore[assignment]
        for attr_name in dir(c):
            member = getattr(c, attr_name, None)
            if member is None or not callable(member):
                continue
            if getattr(member, _RUN, False):
                if run_method is not None:
                    raise ConfigurationError(
                        f"workflow {c.__qualname__} has more than one @workflow.run method"
                    )
                run_method = member
            if (sig_name := getattr(member, _SIGNAL, None)) is not None:
                signals[sig_name] = _handler(sig_name, member)
            if (q_name := getattr(member, _QUERY, None)) is not None:
                queries[q_name] = _handler(q_name, member)
            if (u_name := getattr(member, _UPDATE, None)) is not None:
                updates[u_name] = _handler(u_name, member, validators.pop(member, None))
        for target in list(validators):
            # a subclass overrode the handler and inherits its validator: same name
            for u_name, handler in updates.items():
                if handler.validator is None and getattr(handler.method, "__name__", None) \
                        == getattr(target, "__name__", ""):
                    updates[u_name] = dataclasses.replace(handler,
                                                          validator=validators.pop(target))
                    break
        if validators:
            orphan = next(iter(validators.values()))
            raise ConfigurationError(
                f"update validator {orphan.__qualname__} validates "
                f"{next(iter(validators)).__qualname__}, which is not an @workflow.update "
                f"method of {c.__qualname__}"
            )
        if run_method is None:
            raise ConfigurationError(
                f"workflow {c.__qualname__} has no @workflow.run method; mark its async entry "
                "point with @workflow.run"
            )
        constructor = next((k.__dict__["__init__"] for k in c.__mro__
                            if "__init__" in k.__dict__), None)
        init_takes_arguments = bool(getattr(constructor, _INIT, False))
        if init_takes_arguments:
            assert constructor is not None
            init_params = list(inspect.signature(constructor).parameters.values())[1:]
            run_params = list(inspect.signature(run_method).parameters.values())[1:]
            if [(p.name, p.kind) for p in init_params] != [(p.name, p.kind)
                                                            for p in run_params]:
                raise ConfigurationError(
                    f"the @workflow.init __init__ of {c.__qualname__} must take the same "
                    f"parameters as its @workflow.run method {run_method.__name__}"
                    f"{inspect.signature(run_method)}")
        definition = WorkflowDefinition(
            name=name or c.__name__,
            cls=c,
            run_method=run_method,
            run_parameter_hints=parameter_hints(run_method, skip_self=True),
            run_return_hint=return_hint(run_method),
            signals=signals,
            queries=queries,
            dynamic_signals=dynamic_signals,
            updates=updates,
            failure_exception_types=tuple(failure_exception_types),
            init_takes_arguments=init_takes_arguments,
        )
        setattr(c, _DEFN, definition)
        for method in [run_method, *(h.method for h in signals.values()),
                       *(h.method for h in queries.values()),
                       *(h.method for h in updates.values())]:
            if getattr(method, "__qualname__", "").startswith(c.__qualname__ + "."):
                setattr(method, _OWNER, definition)
        return c

    return decorate(cls) if cls is not None else decorate


def get_workflow_definition(obj: Any) -> WorkflowDefinition | None:
    """The definition of a workflow class, or of the class owning a method given."""
    definition = getattr(obj, _DEFN, None)
    if isinstance(definition, WorkflowDefinition):
        return definition
    owner = getattr(obj, _OWNER, None)
    return owner if isinstance(owner, WorkflowDefinition) else None


def handler_name(method: Any, kind: str) -> str | None:
    """The signal, query or update name a method was registered under."""
    attr = {"signal": _SIGNAL, "query": _QUERY, "update": _UPDATE}[kind]
    return getattr(method, attr, None)
