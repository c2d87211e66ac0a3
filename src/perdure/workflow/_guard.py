"""Determinism guards: workflow code that reads the clock, draws random numbers or does I/O
fails its workflow task at once, with a message that names the call, the line and the
workflow-safe alternative, instead of diverging from its history later.

How it works, and why this way
==============================

While a :class:`WorkflowInstance` runs workflow code (an activation, a query, an update
validator), :class:`DeterminismGuard` installs a profile function (``sys.setprofile``) on
that thread, and removes it afterwards (restoring, and chaining to, a Python-level profile
function that was installed before; a profiler installed in C, such as cProfile, is left
alone and the activation is not guarded). The profile function looks only at ``c_call``
events, when a C function is about to be called: the callable is looked up in a dict of
forbidden builtins (``time.time``, ``datetime.datetime.now``, the C methods of ``random``'s
hidden global ``Random``, ``os.urandom``, ``open``, ``_thread.start_new_thread``, the
functions that start a process, ``socket.getaddrinfo``, ...), and socket methods by the
type of their ``__self__``. A bound builtin method hashes and compares by (``__self__``,
C function), so ``datetime.now`` and ``random.random`` match however they were imported,
and ``workflow.random()``'s own ``Random`` (another ``__self__``) does not. Python-level
functions are caught by the C function they end in: ``uuid.uuid4`` by ``os.urandom``,
``subprocess.Popen`` by ``fork_exec``, ``threading.Thread.start`` by
``start_new_thread``, ``random.randint`` by ``getrandbits``.

A hit is then judged by walking the caller frames (see :func:`_locate`): a call that the
runtime makes on the workflow's behalf (Perdure itself, ``logging`` for
``workflow.logger``, ``asyncio``, ``linecache``, an import) is allowed; otherwise the
nearest frame of workflow code is reported, and the call is named as the workflow code
made it (``uuid.uuid4()``, not the ``os.urandom()`` inside it).

Patching module attributes (``time.time = guarded``) would cost nothing while workflow code
runs, but it cannot patch ``datetime.datetime.now`` or ``date.today`` (methods of a C type),
misses every ``from time import time`` or ``from random import random`` executed before the
patch (isort puts ``import uuid`` before ``import perdure``), and changes the functions for
every thread of the process, activities included. The profile function sees every call,
however it was bound, only on the activation's thread and only during the activation. Its
cost is that CPython 3.11 runs the guarded code without its specialising interpreter and
calls the hook twice per call (most of the cost: a hook that does nothing costs 80 % of
this one). ``benchmarks/guard_overhead.py`` measures it: about 2.3 times the activation
time (13 µs more per activation of a realistic workflow, 2 times for a replay), 1.1 times
for an end-to-end workflow task on SQLite (see ``benchmarks/README.md``). It is paid only
while workflow code runs; ``determinism_guard="off"`` removes it.

An exception raised from a profile function turns profiling off for the rest of the
activation and propagates into the workflow code, which might swallow it
(``except Exception``); the guard therefore also keeps the first violation, and the
instance fails the workflow task with it regardless.
"""

from __future__ import annotations

import _socket
import _thread
import builtins
import dataclasses
import datetime
import gc
import logging
import os
import random
import secrets
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import types
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from perdure._errors import NondeterminismError

if TYPE_CHECKING:
    from perdure.workflow._instance import WorkflowInstance

__all__ = ["GUARD_MODES", "DeterminismGuard"]

GUARD_MODES = ("raise", "warn", "off")

_log = logging.getLogger("perdure.workflow")

_CLOCK = "reads the real clock", "workflow.now() (the time the current activation began)"
_SLEEP = (
    "blocks the worker and is not durable",
    "await workflow.sleep(...) or await asyncio.sleep(...) (a durable timer)",
)
_RANDOM = (
    "draws from the process-wide random generator",
    "workflow.random() (a random.Random seeded from the run id)",
)
_OS_RANDOM = (
    "reads the operating system's randomness",
    "workflow.random() or workflow.uuid4() (and an activity for real secrets)",
)
_UUID = "is random (or reads the clock)", "workflow.uuid4()"
_ACTIVITY = "an activity (its result is recorded in the history and replayed)"
_FILE = "does file I/O", _ACTIVITY
_NETWORK = "does network I/O", _ACTIVITY
_PROCESS = "runs another process", _ACTIVITY
_THREAD = (
    "starts a thread",
    "asyncio tasks on the workflow's own loop (asyncio.create_task, asyncio.gather), or an "
    "activity for blocking work",
)


@dataclasses.dataclass(frozen=True)
class _Target:
    name: str
    """How the call is named in messages, without the parentheses."""
    why: str
    alternative: str


def _c_targets() -> dict[Any, _Target]:
    def add(fn: Any, name: str, kind: tuple[str, str]) -> None:
        targets[fn] = _Target(name, *kind)

    targets: dict[Any, _Target] = {}
    for name in ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter",
                 "perf_counter_ns", "process_time", "process_time_ns", "thread_time",
                 "thread_time_ns", "clock_gettime", "clock_gettime_ns"):
        if hasattr(time, name):
            add(getattr(time, name), f"time.{name}", _CLOCK)
    add(time.sleep, "time.sleep", _SLEEP)
    for cls in (datetime.datetime, datetime.date):
        for name in ("now", "utcnow", "today"):
            if hasattr(cls, name):
                add(getattr(cls, name), f"datetime.{cls.__name__}.{name}", _CLOCK)
    # random's module-level functions are bound methods of one hidden Random instance;
    # every one of them ends in one of these C methods of that instance
    shared = random._inst  # type: ignore[attr-defined]
    add(shared.random, "random.random", _RANDOM)
    add(shared.getrandbits, "random.getrandbits", _RANDOM)
    base = super(random.Random, shared)
    for name in ("seed", "getstate", "setstate"):
        add(getattr(base, name), f"random.{name}", _RANDOM)
    # SystemRandom, secrets and uuid4 end in os.urandom; uuid1 in one of these
    add(os.urandom, "os.urandom", _OS_RANDOM)
    if hasattr(os, "getrandom"):
        add(os.getrandom, "os.getrandom", _OS_RANDOM)
    generate_time_safe = getattr(uuid, "_generate_time_safe", None)
    if generate_time_safe is not None:
        add(generate_time_safe, "_uuid.generate_time_safe", _UUID)
    add(builtins.open, "open", _FILE)  # io.open is the same function
    add(os.open, "os.open", _FILE)
    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        add(getattr(_socket, name), f"socket.{name}", _NETWORK)
    add(os.system, "os.system", _PROCESS)
    # subprocess.Popen starts its process with one of these
    fork_exec = getattr(subprocess, "_fork_exec", None)
    if fork_exec is not None:
        add(fork_exec, "_posixsubprocess.fork_exec", _PROCESS)
    for name in ("posix_spawn", "posix_spawnp", "fork", "execv", "execve"):
        if hasattr(os, name):
            add(getattr(os, name), f"os.{name}", _PROCESS)
    add(_thread.start_new_thread, "_thread.start_new_thread", _THREAD)  # Thread.start
    return targets


_C_TARGETS = _c_targets()

_SOCKET_TYPES: frozenset[type] = frozenset({socket.socket, _socket.socket})
"""Types whose C methods below are network I/O (an ``ssl.SSLSocket`` is connected
through ``socket.create_connection`` or ``socket.socket.connect`` first)."""
_SOCKET_METHODS = {
    name: _Target(f"socket.socket.{name}", *_NETWORK)
    for name in ("connect", "connect_ex", "send", "sendall", "sendto", "sendmsg", "recv",
                 "recv_into", "recvfrom", "recvfrom_into", "recvmsg", "recvmsg_into",
                 "accept")
}


_BY_FUNCTION = {"uuid.uuid1": _UUID, "uuid.uuid4": _UUID, "threading.Thread.start": _THREAD}
_BY_MODULE = {"subprocess": _PROCESS, "socket": _NETWORK}
"""Functions named as such, without the C function they end in (``subprocess.run()``,
whose first forbidden call may be ``open()`` for its pipes; ``uuid.uuid4()``)."""


def _target(callable_: Any) -> _Target | None:
    target = _C_TARGETS.get(callable_)
    if target is None and type(callable_.__self__) in _SOCKET_TYPES:
        target = _SOCKET_METHODS.get(callable_.__name__)
    return target


# ------------------------------------------------------------------ who made the call

_USER, _STDLIB, _THIRD_PARTY, _RUNTIME, _DRIVER, _IMPORT = range(6)
"""Kinds of frames. ``_RUNTIME`` frames act on the workflow's behalf (Perdure's API, its
converter, ``logging``, ``linecache``; not ``perdure.agents``, which is a library). ``_DRIVER`` frames run workflow code (Perdure's
instance and event loop, ``asyncio``): they are the runtime too, and they also say that
the library code they call directly is workflow code."""


def _directory(module: types.ModuleType) -> str:
    return os.path.dirname(os.path.abspath(module.__file__ or "")) + os.sep


_PERDURE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_DRIVER_FILES = frozenset(
    os.path.join(_PERDURE_DIR, "workflow", name) for name in ("_instance.py", "_loop.py")
)
_PREFIXES: list[tuple[str, int]] = []


def _prefixes() -> list[tuple[str, int]]:
    import asyncio
    import importlib
    import linecache

    def both(path: str) -> set[str]:
        return {path, os.path.realpath(path)}

    out: list[tuple[str, int]] = []
    for path in both(_PERDURE_DIR.rstrip(os.sep)):
        out.append((path + os.sep, _RUNTIME))
        # perdure.agents is a library on the public API, with a workflow of its own:
        # workflow code, not the runtime
        out.append((os.path.join(path, "agents") + os.sep, _THIRD_PARTY))
    for module, kind in ((asyncio, _DRIVER), (logging, _RUNTIME), (importlib, _IMPORT)):
        for path in both(_directory(module).rstrip(os.sep)):
            out.append((path + os.sep, kind))
    for path in both(os.path.abspath(linecache.__file__ or "linecache")):
        out.append((path, _RUNTIME))
    out.append(("<frozen importlib", _IMPORT))
    sites = set(site.getsitepackages()) if hasattr(site, "getsitepackages") else set()
    sites |= {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    user_site = site.getusersitepackages() if hasattr(site, "getusersitepackages") else ""
    if user_site:
        sites.add(user_site)
    for directory in sites:
        for path in both(directory):
            out.append((path + os.sep, _THIRD_PARTY))
    out.append(("<frozen ", _STDLIB))
    stdlib = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib")}
    stdlib.add(_directory(os).rstrip(os.sep))
    for directory in stdlib:
        for path in both(directory):
            out.append((path + os.sep, _STDLIB))
    # longest prefix first: site-packages may sit inside the standard library's directory
    out.sort(key=lambda item: len(item[0]), reverse=True)
    return out


_kinds: dict[str, int] = {}


def _kind(filename: str) -> int:
    kind = _kinds.get(filename)
    if kind is None:
        if not _PREFIXES:
            _PREFIXES.extend(_prefixes())
        kind = _USER
        for prefix, prefix_kind in _PREFIXES:
            if filename.startswith(prefix):
                kind = prefix_kind
                break
        if kind == _RUNTIME and filename in _DRIVER_FILES:
            kind = _DRIVER
        _kinds[filename] = kind
    return kind


def _is_logging(frame: types.FrameType) -> bool:
    return str(frame.f_globals.get("__name__", "")).partition(".")[0] == "logging"


def _locate(frame: types.FrameType | None) -> tuple[types.FrameType, types.FrameType | None] | None:
    """Judge a forbidden call made from ``frame``: None if the runtime made it on the
    workflow's behalf, else (the workflow code's frame, the frame it called, if the
    forbidden function was not called directly)."""
    below: types.FrameType | None = None
    library: tuple[types.FrameType, types.FrameType | None] | None = None
    location: tuple[types.FrameType, types.FrameType | None] | None = None
    while frame is not None:
        kind = _kind(frame.f_code.co_filename)
        if kind == _USER:
            location = frame, below
            break
        if kind == _THIRD_PARTY:
            if library is None:
                library = frame, below
        elif kind in (_RUNTIME, _IMPORT):
            return None  # the runtime's own call (or a library it called)
        elif kind == _DRIVER:
            if library is None:
                return None
            location = library  # workflow code installed as a package
            break
        below = frame
        frame = frame.f_back
    if location is None:
        if library is None:
            return None
        location = library
    # workflow code's frame found: is it itself run by logging (a handler, a filter, a
    # formatter of the application's) or by an import (module-level code)?
    first = True
    caller = location[0].f_back
    while caller is not None:
        kind = _kind(caller.f_code.co_filename)
        if kind == _IMPORT:
            return None
        if first and kind in (_RUNTIME, _DRIVER):
            if _is_logging(caller):
                return None
            first = False
        caller = caller.f_back
    return location


def _interrupts(frame: types.FrameType | None, location: types.FrameType) -> bool:
    """Whether a frame from ``frame`` up to ``location`` runs a garbage collector callback
    or a signal handler: code that interrupted the workflow code below it, not code that
    it called."""
    codes: set[int] = set()
    handlers: list[Any] = list(gc.callbacks)
    if threading.current_thread() is threading.main_thread():
        for number in signal.valid_signals():
            try:
                handlers.append(signal.getsignal(number))
            except (OSError, ValueError):  # pragma: no cover - platform-specific
                continue
    for handler in handlers:
        function = getattr(handler, "__func__", handler)
        code = getattr(function, "__code__", None)
        if code is None:
            code = getattr(type(handler).__dict__.get("__call__"), "__code__", None)
        if code is not None:
            codes.add(id(code))
    while frame is not None:
        if id(frame.f_code) in codes:
            return True
        if frame is location:
            return False
        frame = frame.f_back
    return False


def _function_name(frame: types.FrameType) -> str:
    """A library function as workflow code called it: ``random.randint``, ``uuid.uuid4``,
    ``subprocess.Popen`` (for its ``__init__``)."""
    code = frame.f_code
    qualname: str = getattr(code, "co_qualname", code.co_name)
    if "." in qualname:
        owner = frame.f_locals.get("self")
        if owner is random._inst:  # type: ignore[attr-defined]
            return f"random.{code.co_name}"
        if owner is getattr(secrets, "_sysrand", None):
            return f"secrets.{code.co_name}"
        if code.co_name == "__init__":
            qualname = qualname.rpartition(".")[0]
    return f"{frame.f_globals.get('__name__', '?')}.{qualname}"


_warned: set[tuple[str, str, int]] = set()
"""Call sites already logged in ``warn`` mode (once per process)."""


class DeterminismGuard:
    """Catches non-deterministic calls while one instance runs workflow code."""

    __slots__ = ("instance", "mode", "violation")

    def __init__(self, instance: WorkflowInstance, mode: str = "raise") -> None:
        if mode not in GUARD_MODES:
            raise ValueError(
                f"determinism_guard must be one of {', '.join(map(repr, GUARD_MODES))}, "
                f"not {mode!r}"
            )
        self.instance = instance
        self.mode = mode
        self.violation: NondeterminismError | None = None
        """The first violation since :meth:`start` (raise mode)."""

    # ------------------------------------------------------------------ on / off
    def start(self) -> Any:
        """Install the guard on this thread; pass the result to :meth:`stop`."""
        if self.mode == "off":
            return _NOT_STARTED
        previous = sys.getprofile()
        if previous is None:
            _active.guard = self
            sys.setprofile(_profile)
            return None
        if getattr(previous, "_perdure_guard", False):
            return _NOT_STARTED  # already guarded (a validator inside an activation)
        if isinstance(previous, types.FunctionType | types.MethodType):
            _active.guard = self
            sys.setprofile(_chained(previous))
            return previous
        # a profiler installed in C (cProfile, pyinstrument) cannot be chained to, nor
        # restored through sys.setprofile: leave it alone, unguarded
        return _NOT_STARTED

    def stop(self, token: Any) -> NondeterminismError | None:
        """Remove the guard (restoring the previous profile function); return the first
        violation seen since :meth:`start`, if this call started the guard."""
        if token is _NOT_STARTED:
            return None
        sys.setprofile(token)
        _active.guard = None
        violation, self.violation = self.violation, None
        return violation

    # ------------------------------------------------------------------ a hit
    def _hit(self, frame: types.FrameType, callable_: Any) -> None:
        try:
            error = self._judge(frame, callable_)
        except Exception:  # a bug of the guard's must not break workflow code
            _log.exception("determinism guard: could not judge a call to %r", callable_)
            return
        if error is not None:
            if self.violation is None:
                self.violation = error
            raise error

    def _judge(self, frame: types.FrameType, callable_: Any) -> NondeterminismError | None:
        """The error for a forbidden call from workflow code (None: allowed, or warned)."""
        target = _target(callable_)
        if target is None:
            return None
        found = _locate(frame)
        if found is None:
            return None
        location, below = found
        code = location.f_code
        where = f"{code.co_filename}:{location.f_lineno} in {code.co_name}"
        name, why, alternative = target.name, target.why, target.alternative
        called = f"{name}()"
        if below is not None:
            outer = _function_name(below)
            kind = _BY_FUNCTION.get(outer) or _BY_MODULE.get(outer.partition(".")[0])
            if kind is not None:
                called = f"{outer}()"
                why, alternative = kind
            elif outer != name:
                called = f"{outer}() (which calls {name}())"
            name = outer
        site_key = (name, code.co_filename, location.f_lineno)
        if self.mode == "warn" and site_key in _warned:
            return None
        if _interrupts(frame, location):
            return None
        instance = self.instance
        message = (
            f"workflow {instance.definition.name!r} (id {instance.workflow_id!r}, run "
            f"{instance.run_id}) called {called} at {where}: it {why}, so the workflow "
            f"would not be deterministic (it runs again from its history after a restart). "
            f"Use {alternative} instead."
        )
        if self.mode == "warn":
            _warned.add(site_key)
            _log.warning("%s (determinism_guard='warn': logged once per call site)", message)
            return None
        return NondeterminismError(
            message + " WorkerOptions(determinism_guard='warn') only logs this.",
            produced=called, location=where,
        )


_NOT_STARTED = object()
_active = threading.local()
"""``guard``: the :class:`DeterminismGuard` whose workflow code runs on this thread."""


def _profile(frame: types.FrameType, event: str, arg: Any) -> None:
    # the hot path, run twice for every call while guarded: keep it small (module
    # globals are the fastest lookups here, and a C function's __self__ is cheap)
    if event == "c_call" and (arg in _C_TARGETS or type(arg.__self__) in _SOCKET_TYPES):
        guard = getattr(_active, "guard", None)
        if guard is not None:
            guard._hit(frame, arg)


def _chained(
    previous: Callable[[types.FrameType, str, Any], object],
) -> Callable[[types.FrameType, str, Any], None]:
    """The hook, after a Python-level profile function that was there before."""

    def profile(frame: types.FrameType, event: str, arg: Any) -> None:
        previous(frame, event, arg)
        _profile(frame, event, arg)

    profile._perdure_guard = True  # type: ignore[attr-defined]
    return profile


_profile._perdure_guard = True  # type: ignore[attr-defined]
