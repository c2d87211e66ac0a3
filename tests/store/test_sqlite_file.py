"""The SQLite file: Perdure notices when it is deleted or replaced, refuses files that are
not its own to use, and reports what the file system refuses as typed errors, without
changing the file."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from perdure import (
    Client,
    DatabaseUnavailableError,
    InvalidDatabaseURLError,
    PerdureError,
    WorkflowStatus,
)


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def _fingerprint(path: Path) -> str:
    """The bytes of the file and of whatever sits beside it (-wal, -shm)."""
    digest = hashlib.sha256()
    for candidate in sorted(path.parent.glob(path.name + "*")):
        digest.update(candidate.name.encode() + b"\0" + candidate.read_bytes())
    return digest.hexdigest()


async def test_a_deleted_file_stops_the_store_instead_of_losing_acknowledged_work(
    tmp_path: Path,
) -> None:
    path = tmp_path / "perdure.db"
    client = await Client.connect(_url(path))
    try:
        await client.start_workflow("Anything", id="before", task_queue="q")
        path.unlink()
        with pytest.raises(DatabaseUnavailableError, match="was deleted") as info:
            await client.start_workflow("Anything", id="after", task_queue="q")
        assert str(path) in str(info.value)
        # stopped for good: reads fail too, rather than show a file that is gone
        with pytest.raises(DatabaseUnavailableError, match="was deleted"):
            await client.get_workflow_handle("before").describe()
    finally:
        await client.close()
    # a new process does not silently start afresh: the log of the lost file is the sign
    with pytest.raises(DatabaseUnavailableError, match="write-ahead log"):
        await Client.connect(_url(path))
    assert not path.exists()


async def test_a_replaced_file_stops_the_store(tmp_path: Path) -> None:
    path = tmp_path / "perdure.db"
    client = await Client.connect(_url(path))
    try:
        await client.start_workflow("Anything", id="one", task_queue="q")
        other = tmp_path / "restored.db"
        sqlite3.connect(other).close()
        os.replace(other, path)  # say, a backup restored over the live file
        with pytest.raises(DatabaseUnavailableError, match="was replaced by another file"):
            await client.start_workflow("Anything", id="two", task_queue="q")
    finally:
        await client.close()


async def test_another_applications_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.commit()
    conn.close()
    before = _fingerprint(path)
    with pytest.raises(InvalidDatabaseURLError, match="another application") as info:
        await Client.connect(_url(path))
    assert "users" in str(info.value) and "perdure_schema" in str(info.value)
    assert _fingerprint(path) == before  # no WAL switch, no tables, no -wal file
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


async def test_an_empty_url_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PERDURE_DATABASE_URL", raising=False)
    with pytest.raises(InvalidDatabaseURLError, match="malformed database URL ''"):
        await Client.connect("")
    assert os.listdir(tmp_path) == []  # no perdure.db in the working directory


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 100)
    return path


def _corrupt_file(tmp_path: Path) -> Path:
    path = tmp_path / "corrupt.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE perdure_schema (version INTEGER NOT NULL)")
    conn.execute("CREATE TABLE filler (x TEXT)")
    conn.executemany("INSERT INTO filler VALUES (?)", [("x" * 500,)] * 200)
    conn.commit()
    conn.close()
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the schema's page, after the header
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(("make", "expected"), [
    (lambda tmp: tmp, "it is a directory"),
    (lambda tmp: Path("/dev/null"), "not a regular file"),
    (_text_file, "not a SQLite database"),
    (_corrupt_file, "corrupt"),
], ids=["directory", "dev-null", "text-file", "corrupt-file"])
async def test_what_is_no_perdure_database_is_a_typed_error(
    tmp_path: Path, make: object, expected: str,
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    before = _fingerprint(path) if path.is_file() else None
    with pytest.raises(DatabaseUnavailableError) as info:
        await Client.connect(_url(path))
    assert expected in str(info.value)
    assert str(path) in str(info.value)
    if before is not None:
        assert _fingerprint(path) == before


def _unmount(mount: Path) -> None:
    if subprocess.run(["umount", str(mount)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(mount)], check=False)  # still busy: detach


@contextlib.contextmanager
def _read_only(directory: Path) -> Iterator[Path]:
    """``directory``, read-only: a read-only bind mount when we are root (root ignores
    permissions), else permissions taken away."""
    if os.geteuid() == 0:
        mount = directory.parent / (directory.name + "-ro")
        mount.mkdir()
        done = subprocess.run(["mount", "--bind", "-o", "ro", str(directory), str(mount)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make a read-only bind mount: {done.stderr.decode().strip()}")
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True)
            yield mount
        finally:
            _unmount(mount)
            mount.rmdir()
        return
    mode = directory.stat().st_mode
    for child in directory.iterdir():
        child.chmod(0o444)
    directory.chmod(0o555)
    try:
        yield directory
    finally:
        directory.chmod(mode)
        for child in directory.iterdir():
            child.chmod(0o644)


async def test_a_read_only_database_is_a_typed_error(tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.mkdir()
    client = await Client.connect(_url(source / "perdure.db"))
    await client.start_workflow("Anything", id="kept", task_queue="q")
    await client.close()
    before = _fingerprint(source / "perdure.db")
    with _read_only(source) as read_only:
        with pytest.raises(DatabaseUnavailableError) as info:
            client = await Client.connect(_url(read_only / "perdure.db"))
            try:
                await client.start_workflow("Anything", id="refused", task_queue="q")
            finally:
                await client.close()
        assert "read-only" in str(info.value)
    assert _fingerprint(source / "perdure.db") == before


async def test_a_locked_database_is_a_typed_error_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "perdure.db"
    client = await Client.connect(_url(path))
    try:
        await client.start_workflow("Anything", id="first", task_queue="q")

        def short_wait(conn: sqlite3.Connection, notes: object) -> None:
            conn.execute("PRAGMA busy_timeout=200")  # the default waits 30 s

        await client.store._run(short_wait)  # type: ignore[attr-defined]
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(DatabaseUnavailableError, match="locked") as info:
                await client.start_workflow("Anything", id="second", task_queue="q")
            assert isinstance(info.value, PerdureError)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert {d.workflow_id for d in await client.list_workflows()} == {"first"}
        await client.start_workflow("Anything", id="second", task_queue="q")  # free again
    finally:
        await client.close()


_FILL = textwrap.dedent("""
    import asyncio, os, resource, signal, sys
    from perdure import Client

    async def main(path, limit):
        client = await Client.connect("sqlite:///" + path + "?synchronous=normal")
        await client.start_workflow("Anything", "warm up", id="w-0", task_queue="q")
        if limit == "rlimit":  # a file size limit: writes past it fail with EFBIG
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            sizes = [os.path.getsize(path + suffix) for suffix in ("", "-wal")]
            resource.setrlimit(resource.RLIMIT_FSIZE, (max(sizes) + 200_000,) * 2)
        for n in range(1, 1000):
            try:
                await client.start_workflow("Anything", "x" * 50_000, id=f"w-{n}",
                                            task_queue="q")
            except Exception as exc:
                print("ERROR", type(exc).__module__, type(exc).__name__, exc, flush=True)
                break
            print("ACKED", f"w-{n}", flush=True)
        await client.close()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


@contextlib.contextmanager
def _small_disk(tmp_path: Path, limit: str) -> Iterator[Path]:
    """A directory on a disk that fills up: a 1 MiB tmpfs (root only), or any directory
    with a file size limit set in the process that writes (``rlimit``)."""
    if limit == "rlimit":
        yield tmp_path
        return
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield small
    finally:
        _unmount(small)


@pytest.mark.parametrize(("limit", "expected"), [
    ("tmpfs", "database or disk is full"), ("rlimit", "disk I/O error"),
])
async def test_a_full_disk_is_a_typed_error_and_loses_nothing_acknowledged(
    tmp_path: Path, limit: str, expected: str,
) -> None:
    with _small_disk(tmp_path, limit) as directory:
        path = directory / "perdure.db"
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", _FILL, str(path), limit],
            capture_output=True, text=True, timeout=120)
        lines = done.stdout.splitlines()
        errors = [line for line in lines if line.startswith("ERROR")]
        assert errors, (done.stdout, done.stderr)
        assert errors[0].startswith("ERROR perdure._errors DatabaseUnavailableError"), errors
        assert expected in errors[0] and f"at {path} failed" in errors[0], errors
        acked = {line.split()[1] for line in lines if line.startswith("ACKED")}
        # every acknowledged start is there, and nothing half-written is
        client = await Client.connect(_url(path))
        try:
            stored = {d.workflow_id async for d in client.iter_workflows()}
            assert stored == acked | {"w-0"}
            for description in await client.list_workflows():
                assert description.status == WorkflowStatus.RUNNING
        finally:
            await client.close()
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
