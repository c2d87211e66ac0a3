"""What a worker is given, checked when it is made: everything that could only fail once
tasks run (two definitions under one name, annotations the converter cannot decode,
something that is no activity, an executor that cannot run activities) is refused here,
with a :class:`ConfigurationError` that names it and says what to do instead."""

from __future__ import annotations

import concurrent.futures
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any

from perdure._converter import PayloadConverter
from perdure._errors import ConfigurationError
from perdure._identifiers import MAX_NAME_BYTES, name_problem, shown
from perdure.activity._definition import (
    ActivityDefinition,
    executable_definition,
    get_activity_definition,
)
from perdure.workflow._definition import WorkflowDefinition, get_workflow_definition

__all__ = ["check_activity_executor", "register_activities", "register_workflows"]


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None)
    if name is None and getattr(obj, "__func__", None) is not None:
        name = obj.__func__.__qualname__
    if name is None:
        name = f"{type(obj).__qualname__} instance"
    module = getattr(obj, "__module__", None)
    return f"{module}.{name}" if module and module != "builtins" else name


def check_annotations(fn: Callable[..., Any], what: str, converter: PayloadConverter, *,
                      skip_self: bool, check_return: bool = True) -> None:
    """Refuse a function whose arguments (or result) cannot cross the durable boundary:
    an annotation that cannot be resolved or decoded, a required keyword-only parameter
    (arguments travel by position)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:
        raise ConfigurationError(
            f"{what}: its annotations cannot be resolved ({type(exc).__name__}: {exc}); "
            "arguments are decoded by them, so import the types they name at run time "
            "(not only under TYPE_CHECKING)"
        ) from None
    params = list(inspect.signature(fn).parameters.values())
    if skip_self and params:
        params = params[1:]
    for param in params:
        if param.kind is param.KEYWORD_ONLY and param.default is param.empty:
            raise ConfigurationError(
                f"{what}: parameter {param.name!r} is keyword-only and required, but "
                "arguments are passed by position; make it positional or give it a default"
            )
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD) \
                and param.name in hints:
            problem = converter.hint_problem(hints[param.name])
            if problem is not None:
                raise ConfigurationError(
                    f"{what}: parameter {param.name!r} is annotated {_show(hints[param.name])},"
                    f" which the payload converter cannot decode: {problem}"
                )
    if check_return and "return" in hints:
        problem = converter.hint_problem(hints["return"])
        if problem is not None:
            raise ConfigurationError(
                f"{what}: its return annotation {_show(hints['return'])} is one the payload "
                f"converter cannot decode: {problem}"
            )


def check_storable_name(name: str, what: str) -> None:
    """Refuse a name the database could not store (see ``_identifiers``): every task of
    a worker that serves it would fail to commit."""
    problem = name_problem(name) if isinstance(name, str) and name else "is not a non-empty str"
    if problem is not None:
        raise ConfigurationError(
            f"{what} {shown(name)} {problem}; names are at most {MAX_NAME_BYTES} bytes of "
            "UTF-8 without NUL characters")


def _show(hint: Any) -> str:
    return hint.__qualname__ if isinstance(hint, type) else repr(hint)


def register_activities(
    activities: Sequence[Any], converter: PayloadConverter
) -> dict[str, ActivityDefinition]:
    """The activities by name, each checked (see the module's docstring)."""
    registered: dict[str, ActivityDefinition] = {}
    for index, fn in enumerate(activities):
        if not callable(fn):
            raise ConfigurationError(
                f"Worker(activities=[...]) item {index + 1} is {fn!r} (a "
                f"{type(fn).__name__}), which is not callable; pass @activity.defn functions, "
                "bound methods or callable instances"
            )
        definition = executable_definition(fn)
        if definition is None:
            raise ConfigurationError(
                f"{_describe(fn)!r} is not an activity; decorate it with @activity.defn"
            )
        previous = registered.get(definition.name)
        if previous is not None:
            if previous.fn == fn:
                continue  # the same activity twice: harmless
            raise ConfigurationError(
                f"two activities are registered under the name {definition.name!r} on this "
                f"worker: {_describe(previous.fn)} and {_describe(fn)}; give one another "
                "name with @activity.defn(name=...)"
            )
        declared = get_activity_definition(fn)  # the decorated function itself
        assert declared is not None
        check_storable_name(definition.name, "activity name")
        check_annotations(declared.fn, f"activity {definition.name!r} ({_describe(fn)})",
                          converter, skip_self=declared.is_method)
        registered[definition.name] = definition
    return registered


def register_workflows(
    workflows: Sequence[Any], converter: PayloadConverter
) -> dict[str, WorkflowDefinition]:
    """The workflow classes by name, each checked with its handlers."""
    registered: dict[str, WorkflowDefinition] = {}
    for cls in workflows:
        definition = get_workflow_definition(cls) if isinstance(cls, type) else None
        if definition is None:
            raise ConfigurationError(
                f"{getattr(cls, '__qualname__', cls)!r} is not a workflow; decorate the "
                "class with @workflow.defn"
            )
        previous = registered.get(definition.name)
        if previous is not None:
            if previous.cls is definition.cls:
                continue
            raise ConfigurationError(
                f"two workflows are registered under the name {definition.name!r} on this "
                f"worker: {_describe(previous.cls)} and {_describe(definition.cls)}; give "
                "one another name with @workflow.defn(name=...)"
            )
        check_storable_name(definition.name, "workflow name")
        what = f"workflow {definition.name!r} ({_describe(definition.cls)})"
        check_annotations(definition.run_method, f"{what}, its run method", converter,
                          skip_self=True)
        for kind, handlers, returns in (("signal", definition.signals, False),
                                        ("update", definition.updates, True),
                                        ("query", definition.queries, True)):
            for name, handler in handlers.items():
                check_storable_name(name, f"{what}: {kind} name")
                check_annotations(handler.method, f"{what}, {kind} {name!r}", converter,
                                  skip_self=True, check_return=returns)
        registered[definition.name] = definition
    return registered


def check_activity_executor(executor: Any) -> None:
    """Only a thread pool can run plain-``def`` activities: they read their context
    (``activity.info()``, heartbeats) from the worker's process and memory."""
    if executor is None:
        return
    interpreters = getattr(concurrent.futures, "InterpreterPoolExecutor", None)
    if isinstance(executor, concurrent.futures.ProcessPoolExecutor) or (
        interpreters is not None and isinstance(executor, interpreters)
    ):
        raise ConfigurationError(
            f"activity_executor is a {type(executor).__name__}: activities cannot run in "
            "another process or interpreter (their arguments, context and heartbeats live in "
            "the worker's; every attempt would fail to pickle). Pass a ThreadPoolExecutor, "
            "and run CPU-bound work from an async activity with "
            "`await asyncio.get_running_loop().run_in_executor(your_process_pool, fn, *args)`"
        )
    if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
        raise ConfigurationError(
            f"activity_executor must be a concurrent.futures.ThreadPoolExecutor, not a "
            f"{type(executor).__name__}: plain-def activities run on its threads, in the "
            "worker's process"
        )
