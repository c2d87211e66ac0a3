"""Two hosts on one PostgreSQL, one of them cut off mid-run.

Each "host" is a network namespace with a veth link to the root namespace and
private addresses the test assigns; a worker process runs inside it and reaches
PostgreSQL only across that link, through a small TCP proxy on the root-side end
(PostgreSQL listens on 127.0.0.1 and its configuration is not ours to change; the
proxy gives its host-facing sockets the TCP settings the server would give a direct
connection, see ``ServerSideTcp``). Both hosts run workflows; then host A's end of
its link goes down. Its connections stall (some in the middle of a transaction, with
row locks held), its liveness heartbeat stops, and host B must declare it dead and
rerun the attempts A held, while A is still away. When the link comes back, A's
worker (which kept running, with late completions queued) rejoins: every workflow
completes with the right result, every activity is recorded completed exactly once,
by the attempt that held the lease (never by A's cut-off attempts), and A, alone,
serves new work again.

Needs Linux, root and iproute2. Without them the test skips and says why, unless
``PERDURE_REQUIRE_POSTGRES=1`` (CI), where it fails instead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from perdure import Client
from perdure.history import ActivityCompleted, ActivityScheduled
from tests._databases import POSTGRES_URL, database_url_for, require_postgres

from .netns_workflows import Relay, expected_result

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("netns_worker.py")
QUEUE_A, QUEUE_B = "host-a", "host-b"  # worker a serves QUEUE_A; worker b both queues
WORKFLOWS = 8  # the first half on QUEUE_A, started while only worker a runs
STEPS = 45
STEP_SECONDS = 0.2
OUTAGE = 10.0  # the server drops a silent session after ~5s (perdure's tcp_user_timeout)
DEAD_WORKER_TIMEOUT = 1.5  # netns_worker.py's WorkerOptions
SUBNET_PREFIX = "10.213"  # 10.213.N.0/30 for host a, 10.213.N.4/30 for host b


# --------------------------------------------------------------------------- availability
class NetnsUnavailable(Exception):
    """Network namespaces or veth links cannot be created here."""


def _netns_problem() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "creating network namespaces and veth links needs root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("PERDURE_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PERDURE_REQUIRE_POSTGRES=1 but network namespaces are unavailable: "
                    f"{reason}")
    pytest.skip(f"network namespaces are unavailable: {reason}")


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if proc.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def _free_subnet() -> int:
    """A third octet N such that nothing on this machine uses 10.213.N.x yet."""
    used = _ip("-4", "-o", "addr", "show") + _ip("-4", "route", "show", "table", "all")
    for namespace in _ip("netns", "list").split():
        if namespace.startswith("perdure-"):  # another run's hosts (possibly concurrent)
            with contextlib.suppress(NetnsUnavailable):
                used += _ip("-n", namespace, "-4", "-o", "addr", "show")
    start = os.getpid() % 250
    for step in range(250):
        third = (start + step) % 250 + 1
        if f"{SUBNET_PREFIX}.{third}." not in used:
            return third
    raise NetnsUnavailable(f"no free {SUBNET_PREFIX}.N.0/29 subnet")


# --------------------------------------------------------------------------- the proxy
_SSL_REQUEST, _GSSENC_REQUEST = 80877103, 80877104
_TCP_SETTING = re.compile(  # in -c options, SET ... = / TO ..., set_config('...', '...')
    r"(tcp_user_timeout|tcp_keepalives_idle|tcp_keepalives_interval|tcp_keepalives_count)"
    r"'?\s*(?:=|\bTO\b|,)\s*'?(\d+)", re.IGNORECASE,
)
_SOCKET_OPTION = {
    "tcp_keepalives_idle": socket.TCP_KEEPIDLE,
    "tcp_keepalives_interval": socket.TCP_KEEPINTVL,
    "tcp_keepalives_count": socket.TCP_KEEPCNT,
    "tcp_user_timeout": socket.TCP_USER_TIMEOUT,
}


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed during the startup handshake")
        data += chunk
    return data


class ServerSideTcp:
    """Gives the proxy's socket facing a host the TCP settings that the server would
    give a direct connection from that host.

    The server turns keepalives on for every connection, and a session can ask for
    ``tcp_user_timeout`` and ``tcp_keepalives_*`` (in its startup packet's options,
    or by SET / set_config in its first queries). Behind the proxy, the server's
    socket faces the proxy, whose end never goes silent: so the proxy reads those
    settings from the session's first messages and applies them to its own socket
    facing the host. When that socket dies, the proxy closes the server connection,
    which is what the server would then see on a direct connection.
    """

    SCANNED_MESSAGES = 16  # settings come with the session's setup, not later

    def __init__(self, sock: socket.socket, startup: bytes) -> None:
        self.sock = sock
        self.settings: dict[str, int] = {}
        self._buffer = b""
        self._messages = 0
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        fields = startup[8:].split(b"\0")
        params = dict(zip(fields[0::2], fields[1::2], strict=False))
        self._apply(params.get(b"options", b""))

    def _apply(self, text: bytes) -> None:
        for name, value in _TCP_SETTING.findall(text.decode(errors="replace")):
            name = name.lower()
            self.settings[name] = int(value)
            if int(value):  # 0: the system's default
                self.sock.setsockopt(socket.IPPROTO_TCP, _SOCKET_OPTION[name], int(value))

    def feed(self, data: bytes) -> None:
        """Messages from the host: type byte, length, body; queries (Q) and parses (P)
        are searched for settings."""
        if self._messages >= self.SCANNED_MESSAGES:
            return
        self._buffer += data
        while len(self._buffer) >= 5 and self._messages < self.SCANNED_MESSAGES:
            kind = self._buffer[:1]
            (length,) = struct.unpack("!i", self._buffer[1:5])
            if len(self._buffer) < 1 + length:
                return
            body, self._buffer = self._buffer[5:1 + length], self._buffer[1 + length:]
            self._messages += 1
            if kind in (b"Q", b"P"):
                self._apply(body)
        if self._messages >= self.SCANNED_MESSAGES:
            self._buffer = b""


class TcpProxy:
    """Forwards every connection accepted on the root-side link addresses to PostgreSQL.

    PostgreSQL listens on 127.0.0.1 only, and its configuration is not ours to
    change. The proxy stands in for a direct connection: it declines TLS (answering
    the request itself, so that it can read the session's setup) and gives its socket
    facing the host the server-side TCP settings the session asked for (see
    :class:`ServerSideTcp`). ``cut_when`` times a cut to land inside a transaction.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self.accepted = 0
        self.sessions: list[ServerSideTcp] = []
        self._trap: tuple[str, bytes, Callable[[], None], threading.Event] | None = None

    def cut_when(self, address: str, marker: bytes, cut: Callable[[], None]) -> threading.Event:
        """The next time a host behind ``address`` sends bytes containing ``marker``,
        forward them, then run ``cut`` before the server's answer can reach the host:
        as if the link had failed just after those bytes went through, so that the
        host's transaction stays open on the server, with its locks. The event is set
        once ``cut`` has run."""
        done = threading.Event()
        self._trap = (address, marker, cut, done)
        return done

    def _sprung(self, address: str, data: bytes) -> Callable[[], None] | None:
        with self._lock:
            trap = self._trap
            if trap is None or trap[0] != address or trap[1] not in data:
                return None
            self._trap = None
        _address, _marker, cut, done = trap

        def spring() -> None:
            try:
                cut()
            finally:
                done.set()

        return spring

    def listen(self, address: str) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, 0))
        sock.listen(64)
        self._track(sock)
        threading.Thread(target=self._accept, args=(sock, address), daemon=True,
                         name=f"proxy-accept-{address}").start()
        return int(sock.getsockname()[1])

    def _track(self, *socks: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                for sock in socks:
                    sock.close()
                return False
            self._sockets.update(socks)
            return True

    def _accept(self, listener: socket.socket, address: str) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self._track(client):
                threading.Thread(target=self._serve, args=(client, address), daemon=True,
                                 name="proxy-conn").start()

    def _serve(self, client: socket.socket, address: str) -> None:
        try:
            client.settimeout(10)
            while True:
                header = _recv_exactly(client, 8)
                length, code = struct.unpack("!ii", header)
                if length == 8 and code in (_SSL_REQUEST, _GSSENC_REQUEST):
                    client.sendall(b"N")  # no TLS through the proxy: go on in plain text
                    continue
                startup = header + _recv_exactly(client, length - 8)
                break
            client.settimeout(None)
            session = ServerSideTcp(client, startup)
            self.sessions.append(session)
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
            for sock in (client, upstream):  # as libpq and the server do: no Nagle delays
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, struct.error):
            self._close(client)
            return
        if not self._track(upstream):
            self._close(client)
            return
        try:
            upstream.sendall(startup)
        except OSError:
            self._close(client, upstream)
            return
        answers = threading.Event()  # cleared: the server's answers wait (for a cut)
        answers.set()
        threading.Thread(target=self._pump_down, args=(upstream, client, answers),
                         daemon=True, name="proxy-down").start()
        try:
            while data := client.recv(65536):
                session.feed(data)
                spring = self._sprung(address, data)
                if spring is not None:
                    answers.clear()
                upstream.sendall(data)
                if spring is not None:
                    spring()
                    answers.set()
        except OSError:
            pass
        finally:  # either side gone: end both directions (the protocol never half-closes)
            self._close(client, upstream)

    def _pump_down(self, upstream: socket.socket, client: socket.socket,
                   answers: threading.Event) -> None:
        try:
            while data := upstream.recv(65536):
                answers.wait()
                client.sendall(data)
        except OSError:
            pass
        finally:
            self._close(upstream, client)

    def _close(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            with self._lock:
                self._sockets.discard(sock)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            socks, self._sockets = list(self._sockets), set()
        self._close(*socks)


# --------------------------------------------------------------------------- the hosts
@dataclasses.dataclass
class Host:
    name: str
    netns: str
    veth_root: str
    veth_ns: str
    root_addr: str
    ns_addr: str
    log: Path
    queues: str = ""
    url: str = ""
    proc: subprocess.Popen[str] | None = None
    identity: str = ""

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Network:
    """Namespaces, veth links, the proxy and the worker processes; ``close`` removes
    all of it, whatever state a failure left it in."""

    def __init__(self, tmp_path: Path, database_url: str, executions: Path) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.executions = executions
        target = urlsplit(POSTGRES_URL)
        self.proxy = TcpProxy((target.hostname or "127.0.0.1", target.port or 5432))
        self.hosts: dict[str, Host] = {}
        self._created_netns: list[str] = []
        self._created_links: list[str] = []

    def add_host(self, name: str, subnet: int, offset: int, queues: str) -> Host:
        tag = f"{name}{os.getpid()}"
        host = Host(
            name=name, netns=f"perdure-{name}-{os.getpid()}", veth_root=f"pdr{tag}",
            veth_ns=f"pdn{tag}", root_addr=f"{SUBNET_PREFIX}.{subnet}.{offset + 1}",
            ns_addr=f"{SUBNET_PREFIX}.{subnet}.{offset + 2}",
            log=self.tmp_path / f"worker-{name}.log", queues=queues,
        )
        for leftover in (("netns", "del", host.netns), ("link", "del", host.veth_root)):
            with contextlib.suppress(NetnsUnavailable):  # a killed run with our pid's
                _ip(*leftover)
        _ip("netns", "add", host.netns)
        self._created_netns.append(host.netns)
        _ip("link", "add", host.veth_root, "type", "veth", "peer", "name", host.veth_ns)
        self._created_links.append(host.veth_root)
        _ip("link", "set", host.veth_ns, "netns", host.netns)
        _ip("addr", "add", f"{host.root_addr}/30", "dev", host.veth_root)
        _ip("link", "set", host.veth_root, "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        _ip("-n", host.netns, "addr", "add", f"{host.ns_addr}/30", "dev", host.veth_ns)
        _ip("-n", host.netns, "link", "set", host.veth_ns, "up")
        port = self.proxy.listen(host.root_addr)
        parts = urlsplit(self.database_url)
        userinfo = parts.username or ""
        if parts.password:
            userinfo += f":{parts.password}"
        netloc = f"{userinfo}@{host.root_addr}:{port}" if userinfo else f"{host.root_addr}:{port}"
        # the proxy declines TLS (it reads the session's setup): ask for none
        query = [(k, v) for k, v in parse_qsl(parts.query)
                 if not k.startswith(("ssl", "gssenc"))] + [("sslmode", "disable")]
        host.url = urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))
        self.hosts[name] = host
        return host

    def _spawn_worker(self, host: Host) -> subprocess.Popen[str]:
        env = dict(os.environ, PERDURE_TEST_EXECUTIONS=str(self.executions),
                   PERDURE_TEST_HOST=host.name, PERDURE_TEST_STEP_SECONDS=str(STEP_SECONDS))
        with host.log.open("w") as log:
            return subprocess.Popen(
                ["ip", "netns", "exec", host.netns, sys.executable, str(WORKER), host.url,
                 host.queues],
                stdout=subprocess.PIPE, stderr=log, text=True, env=env,
            )

    async def start_worker(self, host: Host) -> None:
        host.proc = self._spawn_worker(host)
        assert host.proc.stdout is not None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(host.proc.stdout.readline), 30)
        except TimeoutError:
            line = ""
        if not line.startswith("ready "):
            raise AssertionError(f"worker on host {host.name} did not start: {line!r}\n"
                                 f"{host.log_tail()}")
        host.identity = line.split(" ", 1)[1].strip()

    def cut(self, host: Host) -> None:
        """Host ``host`` loses its network: its end of the link goes down (not the
        root's end, whose route would go with it: the proxy's packets to the host would
        then follow the root namespace's default route out of this machine)."""
        _ip("-n", host.netns, "link", "set", host.veth_ns, "down")

    def restore(self, host: Host) -> None:
        _ip("-n", host.netns, "link", "set", host.veth_ns, "up")

    def check_alive(self) -> None:
        for host in self.hosts.values():
            if host.proc is not None and host.proc.poll() is not None:
                raise AssertionError(
                    f"worker on host {host.name} exited ({host.proc.returncode}):\n"
                    f"{host.log_tail()}"
                )

    async def stop_worker(self, host: Host, timeout: float = 30) -> dict[str, Any]:
        """SIGTERM (graceful shutdown); the worker's stats."""
        proc = host.proc
        assert proc is not None and proc.stdout is not None
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(asyncio.to_thread(proc.communicate), timeout)
        assert proc.returncode == 0, f"host {host.name}: exit {proc.returncode}\n{host.log_tail()}"
        for line in out.splitlines():
            if line.startswith("stats "):
                return dict(json.loads(line[6:]))
        raise AssertionError(f"host {host.name} printed no stats: {out!r}")

    def close(self) -> None:
        for host in self.hosts.values():
            if host.proc is not None and host.proc.poll() is None:
                host.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    host.proc.wait(timeout=10)
        self.proxy.close()
        for link in self._created_links:  # deleting one end removes its peer too
            with contextlib.suppress(NetnsUnavailable, subprocess.TimeoutExpired):
                _ip("link", "del", link)
        for namespace in self._created_netns:
            with contextlib.suppress(NetnsUnavailable, subprocess.TimeoutExpired):
                _ip("netns", "del", namespace)
        self._created_links.clear()
        self._created_netns.clear()


# --------------------------------------------------------------------------- observation
@dataclasses.dataclass(frozen=True)
class Execution:
    phase: str  # "start" or "end"
    host: str
    pid: int
    workflow_id: str
    seq: int
    attempt: int
    index: int
    at: float


def _executions(path: Path) -> list[Execution]:
    if not path.exists():
        return []
    result = []
    for line in path.read_text().splitlines():
        phase, host, pid, workflow_id, seq, attempt, index, at = line.split()
        result.append(Execution(phase, host, int(pid), workflow_id, int(seq), int(attempt),
                                int(index), float(at)))
    return result


class Database:
    """Direct, read-only looks at the store's tables (from the root namespace)."""

    def __init__(self, schema: str) -> None:
        import psycopg

        self.conn = psycopg.connect(POSTGRES_URL, autocommit=True)
        self.conn.execute(f'SET search_path TO "{schema}"')

    def activity_leases(self, owner: str) -> set[tuple[str, int, int]]:
        rows = self.conn.execute(
            "SELECT workflow_id, seq, attempt FROM activity_tasks WHERE lease_owner = %s",
            (owner,),
        ).fetchall()
        return {(str(w), int(s), int(a)) for w, s, a in rows}

    def workflow_task_leases(self, owner: str) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM workflow_tasks WHERE lease_owner = %s", (owner,)
        ).fetchone()
        return int(row[0]) if row else 0

    def heartbeat(self, worker_id: str) -> float | None:
        row = self.conn.execute(
            "SELECT heartbeat_at FROM workers WHERE worker_id = %s", (worker_id,)
        ).fetchone()
        return float(row[0]) if row else None

    def sessions(self) -> str:
        """The server's sessions on this database (for failure messages)."""
        rows = self.conn.execute(
            "SELECT pid, client_port, state, wait_event_type, wait_event, "
            "round(extract(epoch FROM now() - state_change)::numeric, 1), "
            "pg_blocking_pids(pid), left(query, 100) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() ORDER BY pid"
        ).fetchall()
        return "\n".join(" | ".join(str(c) for c in row) for row in rows)

    def close(self) -> None:
        self.conn.close()


async def _until(predicate: Callable[[], bool], timeout: float,
                 what: str | Callable[[], str], network: Network, db: Database) -> float:
    """Wait for ``predicate``; how long it took."""
    started = time.monotonic()
    while not predicate():
        network.check_alive()
        if time.monotonic() - started > timeout:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for "
                f"{what if isinstance(what, str) else what()}; server sessions:\n"
                f"{db.sessions()}\nhost a's log:\n{network.hosts['a'].log_tail()}\n"
                f"host b's log:\n{network.hosts['b'].log_tail()}"
            )
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@contextlib.contextmanager
def _network(tmp_path: Path, database_url: str, executions: Path) -> Iterator[Network]:
    problem = _netns_problem()
    if problem is not None:
        _unavailable(problem)
    network = Network(tmp_path, database_url, executions)
    try:
        try:
            subnet = _free_subnet()
            network.add_host("a", subnet, 0, QUEUE_A)
            network.add_host("b", subnet, 4, f"{QUEUE_A},{QUEUE_B}")
        except NetnsUnavailable as exc:
            network.close()
            _unavailable(str(exc))
        yield network
    finally:
        network.close()


# --------------------------------------------------------------------------- the test
async def test_cut_off_host_is_reclaimed_and_rejoins_without_double_completion(
    tmp_path: Path, report: Callable[[str], None],
) -> None:
    require_postgres()
    executions_path = tmp_path / "executions.log"
    with database_url_for("postgres", tmp_path) as url, \
            _network(tmp_path, url, executions_path) as network:
        schema = dict(parse_qsl(urlsplit(url).query))["schema"]
        client = await Client.connect(url)  # creates the schema before the workers come
        db = Database(schema)
        try:
            await _run_scenario(network, client, db, executions_path, report)
        finally:
            db.close()
            await client.close()


async def _run_scenario(network: Network, client: Client, db: Database,
                        executions_path: Path, report: Callable[[str], None]) -> None:
    a, b = network.hosts["a"], network.hosts["b"]
    t0 = time.time()
    marks: dict[str, float] = {}
    # host a takes the first half (alone: it is the only worker when they start), then
    # host b comes and takes the second half: both hosts busy
    await network.start_worker(a)
    half = WORKFLOWS // 2
    handles = [
        await client.start_workflow(Relay.run, n, STEPS, id=f"relay-{n}",
                                    task_queue=QUEUE_A)
        for n in range(half)
    ]

    def started_by(host: str) -> set[str]:
        return {e.workflow_id for e in _executions(executions_path)
                if e.phase == "start" and e.host == host}

    await _until(lambda: len(started_by("a")) == half, 30,
                 lambda: f"host a to start its workflows (started: {started_by('a')})",
                 network, db)
    await network.start_worker(b)
    marks["workers ready"] = time.time()
    handles += [
        await client.start_workflow(Relay.run, n, STEPS, id=f"relay-{n}", task_queue=QUEUE_B)
        for n in range(half, WORKFLOWS)
    ]

    # both hosts busy, and A holding activity leases: then pull A's cable
    def a_is_busy() -> bool:
        runs = _executions(executions_path)
        return (sum(e.phase == "start" and e.host == "a" for e in runs) >= 6
                and sum(e.phase == "start" and e.host == "b" for e in runs) >= 6
                and len(db.activity_leases(a.identity)) >= 2)

    await _until(a_is_busy, 30, lambda: "both hosts to run activities (attempts started: "
                 f"{collections.Counter(e.host for e in _executions(executions_path))}, "
                 f"leases of host a: {len(db.activity_leases(a.identity))})", network, db)
    # the cut lands inside one of A's liveness heartbeats (every 0.25s): A's session
    # keeps its transaction open on the server, holding the lock on A's own liveness
    # row, which B's reclaim must wait for until the server gives up on A
    cut_times: list[float] = []

    def cut_a() -> None:  # on the proxy's thread
        network.cut(a)
        cut_times.append(time.time())

    cut_done = network.proxy.cut_when(a.root_addr, b"INSERT INTO workers", cut_a)
    await _until(cut_done.is_set, 10, "a heartbeat of host a to cut", network, db)
    assert cut_times, "cutting host a's link failed"
    cut_at = marks["cut"] = cut_times[0]
    await asyncio.sleep(0.3)  # whatever A sent before the cut has reached the server
    held_at_cut = {(w, s): attempt for w, s, attempt in db.activity_leases(a.identity)}
    assert held_at_cut, "host a held no lease when cut off"

    # B declares A dead, takes back A's leases and runs them again, all while A is away
    reclaim_took = await _until(lambda: db.heartbeat(a.identity) is None,
                                cut_at + OUTAGE - time.time(), "host b to declare host a dead",
                                network, db)

    def retried_by_b() -> bool:
        return any(e.phase == "start" and e.host == "b"
                   and e.attempt > held_at_cut.get((e.workflow_id, e.seq), 1 << 30)
                   for e in _executions(executions_path))

    await _until(retried_by_b, cut_at + OUTAGE - time.time(),
                 "host b to retry an attempt host a held", network, db)
    retried_at = time.time()
    await asyncio.sleep(max(0.0, cut_at + OUTAGE - time.time()))
    network.check_alive()  # A's worker rides out the outage
    assert not db.activity_leases(a.identity), "host a still holds activity leases"
    assert db.workflow_task_leases(a.identity) == 0, "host a still holds workflow tasks"
    b_during_outage = sum(e.phase == "start" and e.host == "b" and e.at > cut_at
                          for e in _executions(executions_path))

    network.restore(a)
    back_at = marks["restored"] = time.time()

    def a_heartbeats_again() -> bool:
        heartbeat = db.heartbeat(a.identity)
        return heartbeat is not None and heartbeat > back_at

    rejoin_took = await _until(a_heartbeats_again, 30, "host a to heartbeat again", network, db)

    results = [await handle.result(timeout=60) for handle in handles]
    assert results == [expected_result(n, STEPS) for n in range(WORKFLOWS)]
    finished_at = marks["workflows done"] = time.time()

    # every activity completed exactly once, by the attempt that held the lease
    runs = _executions(executions_path)
    starts = collections.Counter(
        (e.workflow_id, e.seq, e.attempt) for e in runs if e.phase == "start"
    )
    ran_twice = [key for key, n in starts.items() if n > 1]
    assert not ran_twice, f"one attempt started more than once: {ran_twice}"
    ends = {(e.workflow_id, e.seq, e.attempt): e for e in runs if e.phase == "end"}
    ended_behind_the_cut = {
        key for key, e in ends.items() if e.host == "a" and cut_at <= e.at < back_at
    }
    for n, handle in enumerate(handles):
        workflow_id = f"relay-{n}"
        history = await handle.fetch_history()
        scheduled = {e.seq for e in history.events if isinstance(e, ActivityScheduled)}
        completed = [(e.seq, e.attempt) for e in history.events
                     if isinstance(e, ActivityCompleted)]
        seqs = [seq for seq, _ in completed]
        assert len(scheduled) == STEPS, (workflow_id, len(scheduled))
        assert sorted(seqs) == sorted(scheduled), f"{workflow_id}: completions {seqs}"
        for seq, attempt in completed:
            key = (workflow_id, seq, attempt)
            assert key in ends, f"completion of {key} came from no finished execution"
            # what A finished behind the cut was rejected when it got through: B's retry won
            assert key not in ended_behind_the_cut, f"host a's late completion {key} counted"
            held = held_at_cut.get((workflow_id, seq))
            assert held is None or attempt > held, (
                f"host a's attempt {held} of {workflow_id} seq {seq}, leased when it was cut "
                f"off, was recorded as completed (attempt {attempt})"
            )
    activities = collections.Counter((e.workflow_id, e.seq) for e in runs if e.phase == "start")
    twice = sorted(key for key, n in activities.items() if n > 1)
    # only what A held when it was cut off may run again
    assert set(twice) <= set(held_at_cut), (twice, held_at_cut)

    # A is fully back: with B gone, it alone finishes new work
    b_stats = await network.stop_worker(b)
    marks["b stopped"] = time.time()
    extra = await client.start_workflow(Relay.run, 99, 3, id="relay-after",
                                        task_queue=QUEUE_A)
    assert await extra.result(timeout=30) == expected_result(99, 3)
    extra_hosts = {e.host for e in _executions(executions_path)
                   if e.workflow_id == "relay-after"}
    assert extra_hosts == {"a"}, extra_hosts
    marks["extra done"] = time.time()
    a_stats = await network.stop_worker(a)
    marks["a stopped"] = time.time()
    # every connection of A came back, none waits forever on one that died in the outage
    assert a_stats["lingering_threads"] == [], a_stats

    a_after = sum(e.phase == "start" and e.host == "a" and back_at <= e.at < finished_at
                  for e in runs)
    report(
        f"\nheld by host a when cut: {len(held_at_cut)} activity leases; host b declared it "
        f"dead after {reclaim_took + 0.3:.2f}s, retried one of its attempts after "
        f"{retried_at - cut_at:.2f}s and started {b_during_outage} attempts during the "
        f"{OUTAGE:.0f}s outage; host a heartbeat again {rejoin_took:.2f}s after the link "
        f"returned and then started {a_after} attempts; attempts host a finished behind the cut "
        f"(rejected): {len(ended_behind_the_cut)}; activities run more than once: {len(twice)}; "
        f"proxy connections: {network.proxy.accepted}; server-side TCP settings asked for: "
        f"{ {tuple(sorted(x.settings.items())) for x in network.proxy.sessions} }\nhost a stats: {a_stats}\n"
        f"host b stats: {b_stats}\n"
        + ", ".join(f"{k} {v - t0:.1f}s" for k, v in marks.items())
    )
