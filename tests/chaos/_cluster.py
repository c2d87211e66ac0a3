"""A private, throwaway PostgreSQL cluster (initdb in a temporary directory, its own port),
so that a test may stop and restart the server without disturbing the shared one.

initdb and the server refuse to run as root: as root, the cluster belongs to the
``postgres`` user and every command runs through ``runuser -u postgres --``.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

_SERVER_USER = "postgres"


def _postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (with initdb and pg_ctl)."""
    candidates = []
    for bindir in glob.glob("/usr/lib/postgresql/*/bin"):
        match = re.search(r"/postgresql/(\d+)(?:\.(\d+))?/bin$", bindir)
        if match and all(os.access(Path(bindir, t), os.X_OK) for t in ("initdb", "pg_ctl")):
            candidates.append(((int(match[1]), int(match[2] or 0)), Path(bindir)))
    if candidates:
        return max(candidates)[1]
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    return None


def cluster_problem() -> str | None:
    """Why a private cluster cannot be made here, or None when it can."""
    if _postgres_bindir() is None:
        return "PostgreSQL's initdb/pg_ctl are not installed (/usr/lib/postgresql/*/bin)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root, and runuser (to run initdb as postgres) is missing"
        try:
            pwd.getpwnam(_SERVER_USER)
        except KeyError:
            return f"running as root, and there is no {_SERVER_USER!r} user to own the cluster"
    return None


def require_cluster() -> None:
    """Skip (locally) or fail (CI: PERDURE_REQUIRE_POSTGRES=1) when no cluster can be made."""
    problem = cluster_problem()
    if problem is None:
        return
    if os.environ.get("PERDURE_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PERDURE_REQUIRE_POSTGRES=1 but a private PostgreSQL cluster needs: {problem}")
    pytest.skip(problem)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateCluster:
    """``initdb`` + ``pg_ctl`` on a temporary directory; ``url`` reaches its ``postgres``
    database over TCP on 127.0.0.1 with trust authentication."""

    def __init__(self) -> None:
        bindir = _postgres_bindir()
        assert bindir is not None
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="perdure-pg-"))  # /tmp: postgres can enter
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", _SERVER_USER, "--"]
            user = pwd.getpwnam(_SERVER_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o700)

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        command = [*self._as_user, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if done.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n"
                f"server log:\n{self.server_log()}"
            )

    def server_log(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    def _pg_ctl(self, *args: str, timeout: float = 60.0) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                  "-w", "-t", str(int(timeout)), *args, timeout=timeout + 10)

    def init(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "60",
            "shared_buffers": "32MB",
            "fsync": "on",
            "logging_collector": "off",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# perdure test cluster\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        self._pg_ctl("start")
        self.wait_accepting()

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("stop", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        self._pg_ctl("restart", "-m", mode)
        self.wait_accepting()

    def wait_accepting(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the private cluster does not accept connections:\n"
                                         f"{self.server_log()}") from None
                time.sleep(0.05)

    def destroy(self) -> None:
        """Stop the server at once (if it runs) and remove its directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                subprocess.run(
                    [*self._as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data),
                     "-w", "-t", "30", "stop", "-m", "immediate"],
                    capture_output=True, timeout=40, check=False,
                )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
