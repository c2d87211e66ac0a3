"""Determinism guards: workflow code that reads the clock, draws random numbers or does
I/O fails its workflow task at the call, naming it, its line and the alternative."""

from __future__ import annotations

import asyncio
import cProfile
import datetime
import gc
import io
import logging
import os
import pathlib
import random
import secrets
import socket
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime as imported_datetime
from pathlib import Path
from random import randint as imported_randint
from time import time as imported_time
from typing import Any
from uuid import uuid4 as imported_uuid4

import msgspec
import pytest

from perdure import workflow
from perdure._errors import NondeterminismError, QueryRejectedError
from perdure.history import UpdateRequested, WorkflowCompleted
from perdure.workflow._definition import get_workflow_definition
from perdure.workflow._instance import WorkflowInstance

from ._harness import Run, args, completed, fired, signal

FILE = Path(__file__).name
CLOCK = "workflow.now()"
RANDOM = "workflow.random()"
UUID = "workflow.uuid4()"
ACTIVITY = "an activity"
TIMER = "await workflow.sleep(...) or await asyncio.sleep(...)"
THREADS = "asyncio tasks"

_pair = socket.socketpair()  # made outside workflow code, used inside it
for _sock in _pair:
    _sock.setblocking(False)  # a guard that let recv() through must not hang the test


def socket_pair() -> tuple[socket.socket, socket.socket]:
    return _pair


@pytest.fixture(scope="module", autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    for sock in _pair:
        sock.close()


def _write_file(path: str) -> object:
    with open(path, "w") as f:
        return f.write("x")


# (what the message names, the alternative it suggests, the call); every call on its own line
CALLS: dict[str, tuple[str, str, Callable[[], Any]]] = {
    "time.time": ("time.time()", CLOCK, lambda: time.time()),
    "time.time_ns": ("time.time_ns()", CLOCK, lambda: time.time_ns()),
    "time.monotonic": ("time.monotonic()", CLOCK, lambda: time.monotonic()),
    "time.monotonic_ns": ("time.monotonic_ns()", CLOCK, lambda: time.monotonic_ns()),
    "time.perf_counter": ("time.perf_counter()", CLOCK, lambda: time.perf_counter()),
    "time.perf_counter_ns": ("time.perf_counter_ns()", CLOCK, lambda: time.perf_counter_ns()),
    "from time import time": ("time.time()", CLOCK, lambda: imported_time()),
    "time.sleep": ("time.sleep()", TIMER, lambda: time.sleep(0)),
    "datetime.now": ("datetime.datetime.now()", CLOCK, lambda: datetime.datetime.now()),
    "datetime.now(tz)": ("datetime.datetime.now()", CLOCK,
                         lambda: imported_datetime.now(tz=datetime.UTC)),
    "datetime.utcnow": ("datetime.datetime.utcnow()", CLOCK,
                        lambda: datetime.datetime.utcnow()),
    "datetime.today": ("datetime.datetime.today()", CLOCK, lambda: imported_datetime.today()),
    "date.today": ("datetime.date.today()", CLOCK, lambda: datetime.date.today()),
    "random.random": ("random.random()", RANDOM, lambda: random.random()),
    "random.randint": ("random.randint() (which calls random.getrandbits())", RANDOM,
                       lambda: random.randint(1, 6)),
    "from random import randint": ("random.randint() (which calls random.getrandbits())", RANDOM, lambda: imported_randint(1, 6)),
    "random.choice": ("random.choice() (which calls random.getrandbits())", RANDOM, lambda: random.choice("abc")),
    "random.shuffle": ("random.shuffle() (which calls random.getrandbits())", RANDOM, lambda: random.shuffle([1, 2, 3])),
    "random.uniform": ("random.uniform() (which calls random.random())", RANDOM, lambda: random.uniform(0, 1)),
    "random.seed": ("random.seed()", RANDOM, lambda: random.seed(1)),
    "SystemRandom": ("random.SystemRandom.random() (which calls os.urandom())", RANDOM,
                     lambda: random.SystemRandom().random()),
    "uuid.uuid1": ("uuid.uuid1()", UUID, lambda: uuid.uuid1()),
    "uuid.uuid4": ("uuid.uuid4()", UUID, lambda: uuid.uuid4()),
    "from uuid import uuid4": ("uuid.uuid4()", UUID, lambda: imported_uuid4()),
    "os.urandom": ("os.urandom()", RANDOM, lambda: os.urandom(4)),
    "os.getrandom": ("os.getrandom()", RANDOM, lambda: os.getrandom(4, os.GRND_NONBLOCK)),
    "secrets.token_hex": ("secrets.token_hex() (which calls os.urandom())", RANDOM,
                          lambda: secrets.token_hex(4)),
    "secrets.choice": ("secrets.choice() (which calls os.urandom())", RANDOM, lambda: secrets.choice("abc")),
    "secrets.randbelow": ("secrets.randbelow() (which calls os.urandom())", RANDOM, lambda: secrets.randbelow(10)),
    "open": ("open()", ACTIVITY, lambda: open(__file__).close()),
    "io.open": ("open()", ACTIVITY, lambda: io.open(__file__).close()),  # noqa: UP020
    "Path.read_text": ("pathlib.Path.read_text() (which calls open())", ACTIVITY,
                       lambda: pathlib.Path(__file__).read_text()),
    "socket.create_connection": ("socket.create_connection()", ACTIVITY,
                                 lambda: socket.create_connection(("127.0.0.1", 9), timeout=1)),
    "socket.send": ("socket.socket.send()", ACTIVITY, lambda: socket_pair()[0].send(b"x")),
    "socket.sendall": ("socket.socket.sendall()", ACTIVITY,
                       lambda: socket_pair()[0].sendall(b"x")),
    "socket.recv": ("socket.socket.recv()", ACTIVITY, lambda: socket_pair()[1].recv(1)),
    "socket.connect": ("socket.socket.connect()", ACTIVITY,
                       lambda: socket_pair()[0].connect(("127.0.0.1", 9))),
    "Thread.start": ("threading.Thread.start()", THREADS,
                     lambda: threading.Thread(target=print).start()),
    "subprocess.run": ("subprocess.run()", ACTIVITY,
                       lambda: subprocess.run(["true"], check=False)),
    "subprocess.Popen": ("subprocess.Popen()", ACTIVITY, lambda: subprocess.Popen(["true"])),
    "subprocess.check_output": ("subprocess.check_output()", ACTIVITY,
                                lambda: subprocess.check_output(["true"])),
    "os.system": ("os.system()", ACTIVITY, lambda: os.system("true")),
}


@workflow.defn
class Calls:
    """Makes the call named by its argument (from ``CALLS``)."""

    @workflow.run
    async def run(self, name: str) -> str:
        return repr(CALLS[name][2]())


def where_lambda(name: str) -> str:
    code = CALLS[name][2].__code__
    return f"{FILE}:{code.co_firstlineno} in <lambda>"


def instance_of(cls: type, mode: str, run_id: str = "run-1") -> WorkflowInstance:
    definition = get_workflow_definition(cls)
    assert definition is not None
    return WorkflowInstance(definition, workflow_id="wf-1", run_id=run_id,
                            determinism_guard=mode)


def run_with(cls: type, mode: str) -> Run:
    run = Run(cls)
    run.instance = instance_of(cls, mode)
    return run


# --------------------------------------------------------------------------- raise (default)


@pytest.mark.parametrize("name", list(CALLS))
def test_a_forbidden_call_fails_the_workflow_task_naming_call_line_and_alternative(
    name: str,
) -> None:
    called, alternative, _ = CALLS[name]
    run = Run(Calls)
    with pytest.raises(NondeterminismError) as caught:
        run.start(name)
    message = str(caught.value)
    assert f"called {called} at " in message
    assert where_lambda(name) in message
    assert f"Use {alternative}" in message
    assert "workflow 'Calls' (id 'wf-1', run run-1)" in message
    assert caught.value.location.endswith(where_lambda(name))
    assert not run.instance.completed  # the task failed; the workflow did not


def test_the_guard_stops_the_call_before_its_side_effect(tmp_path: Path) -> None:
    target = tmp_path / "written.txt"

    @workflow.defn(name="Writes")
    class Writes:
        @workflow.run
        async def run(self) -> object:
            return _write_file(str(target))

    with pytest.raises(NondeterminismError, match=r"called open\(\) at .*in _write_file"):
        Run(Writes).start()
    assert not target.exists()


@workflow.defn
class Swallows:
    @workflow.run
    async def run(self) -> str:
        try:
            time.time()
        except Exception:
            return "carried on"
        return "unreachable"


def test_swallowing_the_error_does_not_save_the_task() -> None:
    run = Run(Swallows)
    with pytest.raises(NondeterminismError, match=r"called time\.time\(\)"):
        run.start()


@workflow.defn
class ClockInSignal:
    def __init__(self) -> None:
        self.seen: list[float] = []

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: bool(self.seen))
        return len(self.seen)

    @workflow.signal
    def ping(self) -> None:
        self.seen.append(time.monotonic())  # signal-clock


def test_a_signal_handler_is_guarded_too() -> None:
    run = Run(ClockInSignal)
    run.start()
    with pytest.raises(NondeterminismError) as caught:
        run.activate(signal("ping"))
    assert "called time.monotonic()" in str(caught.value)
    assert f"{FILE}:" in caught.value.location and caught.value.location.endswith("in ping")


@workflow.defn
class Validated:
    def __init__(self) -> None:
        self.items: list[str] = []

    @workflow.run
    async def run(self) -> list[str]:
        await workflow.wait_condition(lambda: len(self.items) >= 1)
        return self.items

    @workflow.update
    def add(self, item: str) -> int:
        self.items.append(item)
        return len(self.items)

    @workflow.update_validator(add)
    def check_add(self, item: str) -> None:
        if random.random() < 0:  # validator-random
            raise ValueError("never")



def test_an_update_validator_is_guarded_and_fails_the_task() -> None:
    run = Run(Validated)
    run.start()
    request = UpdateRequested(update_id="u1", name="add", args=args("x"))
    with pytest.raises(NondeterminismError, match=r"called random\.random\(\) at .* in check_add"):
        run.activate(request)


@workflow.defn
class Queried:
    def __init__(self) -> None:
        self.items: list[str] = []

    @workflow.run
    async def run(self) -> list[str]:
        await workflow.wait_condition(lambda: len(self.items) >= 1)
        return self.items

    @workflow.signal
    def add(self, item: str) -> None:
        self.items.append(item)

    @workflow.query
    def stamped(self) -> float:
        return time.time()

    @workflow.query
    def stamped_quietly(self) -> str:
        try:
            time.time()
        except Exception:
            return "swallowed"
        return "unreachable"

    @workflow.query
    def count(self) -> int:
        return len(self.items)


def test_a_query_handler_is_guarded_without_failing_the_next_task() -> None:
    run = Run(Queried)
    run.start()
    with pytest.raises(QueryRejectedError, match=r"called time\.time\(\) at .* in stamped"):
        run.instance.query("stamped", b"[]")
    with pytest.raises(QueryRejectedError, match=r"called time\.time\(\)"):
        run.instance.query("stamped_quietly", b"[]")  # swallowed, still rejected
    assert run.instance.query("count", b"[]") == b"0"
    assert sys.getprofile() is None
    # the query's violation is not the run's: its next task goes on
    run.activate(signal("add", "x"))
    assert run.done and run.result == ["x"]


def test_a_query_replayed_by_a_client_is_guarded() -> None:
    run = Run(Queried)
    run.start()
    instance = run.replay()
    with pytest.raises(QueryRejectedError, match=r"time\.time"):
        instance.query("stamped", b"[]")
    assert msgspec.json.decode(instance.query("count", b"[]")) == 0


def test_a_replayed_history_that_now_calls_the_clock_fails_with_the_guards_message() -> None:
    """Recorded with the guard off; replayed (after a restart) with it on: the error names
    the call, not a mismatch of commands later on."""
    run = run_with(Calls, "off")
    run.start("datetime.now")
    assert run.done
    with pytest.raises(NondeterminismError, match=r"called datetime\.datetime\.now\(\)"):
        run.replay()


# --------------------------------------------------------------------------- warn and off


@workflow.defn
class ClockTwice:
    @workflow.run
    async def run(self) -> int:
        total = 0
        for _ in range(3):
            total += int(time.time() > 0)  # warn-site
        return total + int(random.random() >= 0)


def test_warn_mode_logs_once_per_call_site_and_proceeds(caplog: pytest.LogCaptureFixture) -> None:
    run = run_with(ClockTwice, "warn")
    with caplog.at_level(logging.WARNING, logger="perdure.workflow"):
        run.start()
    assert run.done and run.result == 4
    warnings = [r.getMessage() for r in caplog.records if r.name == "perdure.workflow"]
    assert len(warnings) == 2, warnings
    assert "called time.time()" in warnings[0] and "Use workflow.now()" in warnings[0]
    assert "called random.random()" in warnings[1]
    assert all("determinism_guard='warn'" in w and f"{FILE}:" in w for w in warnings)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="perdure.workflow"):
        run_with(ClockTwice, "warn").start()  # another run, the same call sites
    assert not [r for r in caplog.records if r.name == "perdure.workflow"]


def test_off_mode_does_not_check() -> None:
    run = run_with(Calls, "off")
    run.start("random.random")
    assert run.done and isinstance(run.outcome, WorkflowCompleted)


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="determinism_guard"):
        instance_of(Calls, "strict")


# --------------------------------------------------------------------------- allowed


class _ClockHandler(logging.Handler):
    """An application's log handler (not workflow code) that reads the clock and a file."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.stamps.append(time.time())
        with open(__file__) as f:
            f.read(1)


@workflow.defn
class WellBehaved:
    @workflow.run
    async def run(self, module_dir: str) -> dict[str, Any]:
        rng = workflow.random()
        out: dict[str, Any] = {
            "randint": rng.randint(1, 1000),
            "choice": rng.choice("abcdef"),
            "random": rng.random(),
            "sample": rng.sample(range(100), 3),
            "uuid": str(workflow.uuid4()),
            "now": workflow.now().isoformat(),
            "uuid5": str(uuid.uuid5(uuid.NAMESPACE_DNS, "perdure")),
            "seeded": random.Random(7).random(),
            "fromtimestamp": datetime.datetime.fromtimestamp(0, tz=datetime.UTC).year,
        }
        items = list(range(10))
        rng.shuffle(items)
        out["shuffled"] = items
        workflow.logger.info("step %d", 1)
        logging.getLogger("app").warning("plain logging works too")
        try:
            raise ValueError("formatted")
        except ValueError:
            out["traceback"] = "ValueError" in traceback.format_exc()
        sys.path.insert(0, module_dir)
        try:
            import stamped_at_import  # type: ignore[import-not-found]
        finally:
            sys.path.remove(module_dir)
        out["imported"] = stamped_at_import.LOADED_AT > 0
        await asyncio.sleep(1)
        await workflow.sleep(1)
        return out


def test_workflow_safe_apis_logging_tracebacks_and_imports_are_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "stamped_at_import.py").write_text(textwrap.dedent("""
        import random, time
        LOADED_AT = time.time()
        with open(__file__) as f:
            SOURCE = f.read()
        TOKEN = random.random()
    """))
    handler = _ClockHandler()
    logging.getLogger("perdure.workflow.user").addHandler(handler)
    try:
        with caplog.at_level(logging.INFO):
            run = Run(WellBehaved)
            run.start(str(tmp_path))
            run.activate(fired(1))
            run.activate(fired(2))
    finally:
        logging.getLogger("perdure.workflow.user").removeHandler(handler)
        sys.modules.pop("stamped_at_import", None)
    assert run.done
    result = run.result
    assert result["traceback"] is True and result["imported"] is True
    assert len(handler.stamps) == 1
    assert any("step 1" in r.getMessage() for r in caplog.records)
    # and replay reproduces it, with the guard on
    run.assert_replays_identically()


@workflow.defn
class Collects:
    @workflow.run
    async def run(self) -> int:
        garbage: list[Any] = []
        garbage.append(garbage)  # a cycle, for the collector
        del garbage
        return gc.collect() >= 0


def test_a_garbage_collector_callback_is_not_workflow_code() -> None:
    stamps: list[float] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        stamps.append(time.perf_counter())

    gc.callbacks.append(on_gc)
    try:
        run = Run(Collects)
        run.start()
    finally:
        gc.callbacks.remove(on_gc)
    assert run.done and stamps


# --------------------------------------------------------------------------- everything else


@workflow.defn
class Rendezvous:
    """Lets another thread run while the activation is in progress."""

    @workflow.run
    async def run(self) -> bool:
        go.set()
        return done.wait(timeout=10)


go = threading.Event()
done = threading.Event()


def test_other_threads_and_code_outside_workflows_are_not_guarded(tmp_path: Path) -> None:
    results: list[Any] = []
    errors: list[BaseException] = []

    def other_thread() -> None:  # an activity thread, say
        try:
            assert go.wait(timeout=10)
            results.extend([time.time(), random.random(), uuid.uuid4(),
                            datetime.datetime.now(), os.urandom(2)])
            (tmp_path / "from-thread.txt").write_text("ok")
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    run = Run(Rendezvous)
    run.start()
    thread.join(timeout=10)
    assert not errors and len(results) == 5
    assert run.done and run.result is True
    # and on this thread, between activations and after them
    assert time.time() > 0 and random.random() >= 0 and uuid.uuid4()
    assert (tmp_path / "from-thread.txt").read_text() == "ok"


@workflow.defn
class OneActivity:
    @workflow.run
    async def run(self) -> str:
        return str(await workflow.execute_activity("act", start_to_close_timeout=10))


def test_the_previous_profile_function_is_restored_and_still_called() -> None:
    events: list[str] = []

    def profiler(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code is OneActivity.run.__code__:
            events.append(event)

    assert sys.getprofile() is None
    run = Run(OneActivity)
    sys.setprofile(profiler)
    try:
        run.start()
        assert sys.getprofile() is profiler
        run.activate(completed(1, "done"))
        assert sys.getprofile() is profiler
    finally:
        sys.setprofile(None)
    assert run.done and run.result == "done"
    assert events == ["call", "call"]  # the workflow's coroutine, started and resumed
    assert sys.getprofile() is None
    # still guarded under a Python-level profiler
    sys.setprofile(profiler)
    try:
        with pytest.raises(NondeterminismError, match=r"called time\.time\(\)"):
            Run(Calls).start("time.time")
        assert sys.getprofile() is profiler
    finally:
        sys.setprofile(None)


def test_a_profiler_installed_in_c_is_left_alone() -> None:
    profile = cProfile.Profile()
    profile.enable()
    try:
        installed = sys.getprofile()
        run = Run(Calls)
        run.start("time.time")  # unguarded while cProfile runs
        assert sys.getprofile() is installed
    finally:
        profile.disable()
    assert run.done
    assert sys.getprofile() is None


def test_the_guard_is_off_after_an_activation_that_failed() -> None:
    with pytest.raises(NondeterminismError):
        Run(Calls).start("random.random")
    assert sys.getprofile() is None
    assert random.random() >= 0


# --------------------------------------------------------------------------- libraries

LIBRARY = '''
import time

from perdure import workflow


def stamp():
    return time.time()


@workflow.defn(name="Packaged")
class Packaged:
    """Workflow code that is itself installed as a package (in site-packages)."""

    @workflow.run
    async def run(self) -> float:
        return time.time()  # packaged-clock
'''


@pytest.fixture
def fakelib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A module that the guard takes for a third-party library (as if in site-packages)."""
    from perdure.workflow import _guard

    (tmp_path / "fakelib.py").write_text(LIBRARY)
    _guard._kind(__file__)  # (computes the prefixes)
    monkeypatch.setattr(_guard, "_PREFIXES",
                        [(str(tmp_path) + os.sep, _guard._THIRD_PARTY), *_guard._PREFIXES])
    monkeypatch.setattr(_guard, "_kinds", {})
    monkeypatch.syspath_prepend(str(tmp_path))
    import fakelib  # type: ignore[import-not-found]

    yield fakelib
    sys.modules.pop("fakelib", None)


def test_a_library_called_by_workflow_code_is_named_at_the_workflow_line(fakelib: Any) -> None:
    @workflow.defn(name="UsesLibrary")
    class UsesLibrary:
        @workflow.run
        async def run(self) -> float:
            return fakelib.stamp()  # library-call

    with pytest.raises(NondeterminismError) as caught:
        Run(UsesLibrary).start()
    message = str(caught.value)
    assert "called fakelib.stamp() (which calls time.time()) at " in message
    line = next(n for n, text in enumerate(Path(__file__).read_text().splitlines(), 1)
                if text.rstrip().endswith("# library-call"))
    assert f"{FILE}:{line} in run" in message


def test_workflow_code_installed_as_a_package_is_guarded(fakelib: Any) -> None:
    with pytest.raises(NondeterminismError) as caught:
        Run(fakelib.Packaged).start()
    assert "called time.time() at " in str(caught.value)
    assert "fakelib.py:" in caught.value.location
    assert caught.value.location.endswith(" in run")
