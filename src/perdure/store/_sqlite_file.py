"""The SQLite file: what Perdure agrees to open, and whether it is still the file it opened.

A workflow acknowledged into a file that was deleted (or replaced) is lost: SQLite keeps
writing to the unlinked inode, and the next process finds no file, or another, and
starts afresh. So the writer records the file's identity (device and inode) when it
opens it and checks it before every commit (one ``stat``, about a microsecond); once it
differs, the store stops with :class:`DatabaseUnavailableError` instead of acknowledging
anything more. On opening, a file that is not a database, is not a regular file, or is
another application's database (tables, but no ``perdure_schema``) is refused before
anything is written to it (not even the switch to WAL mode). So is a missing file whose
write-ahead log is still there: the tell-tale of a database deleted while in use.

Errors SQLite reports about its environment (full disk, a lock held too long, I/O, a
read-only or corrupt file) become :class:`DatabaseUnavailableError` naming the file; a
value it cannot store becomes :class:`InvalidArgumentError`.
"""

from __future__ import annotations

import os
import sqlite3
import stat

from perdure._errors import DatabaseUnavailableError, InvalidArgumentError, InvalidDatabaseURLError

__all__ = ["FileIdentity", "check_openable", "refuse_foreign", "typed_error"]

_WHY = {
    "SQLITE_BUSY": "it is locked by another connection for longer than the busy timeout; "
                   "retry later, or find the process that holds it",
    "SQLITE_LOCKED": "it is locked by another connection; retry later",
    "SQLITE_FULL": "the disk (or the file size limit) is full; free space and retry",
    "SQLITE_IOERR": "the operating system reported an I/O error; check the disk",
    "SQLITE_READONLY": "it cannot be written (a read-only file, directory or file system); "
                       "give the process write access to the file and its directory",
    "SQLITE_CANTOPEN": "it cannot be opened (a directory, a missing directory, or no "
                       "permission); point the URL at a file Perdure may create and write",
    "SQLITE_CORRUPT": "the file is corrupt; restore it from a backup",
    "SQLITE_NOTADB": "the file is not a SQLite database; point the URL at Perdure's file",
    "SQLITE_PERM": "access was denied; check the file's permissions",
    "SQLITE_PROTOCOL": "its locking protocol failed (a network file system?); keep the file "
                       "on a local disk",
}


def typed_error(exc: BaseException, path: str) -> BaseException:
    """``exc`` as Perdure's error when it is one SQLite (or its binding) raised about the
    file or a value; anything else unchanged (a bug should show as itself)."""
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError | OverflowError
                  | UnicodeEncodeError):
        typed: BaseException = InvalidArgumentError(
            f"the SQLite database at {path} cannot store a value of this call ({exc})")
    elif isinstance(exc, sqlite3.DatabaseError):
        name = getattr(exc, "sqlite_errorname", "") or ""
        why = _WHY.get("_".join(name.split("_")[:2]))  # SQLITE_IOERR_WRITE: SQLITE_IOERR
        if name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY")) and _read_only(path):
            why = ("the file or its directory is read-only (a read-only file system, or "
                   "permissions), and SQLite writes the database and its -wal and -shm "
                   "files beside it; give the process write access")
        if why is None:
            if "malformed" in str(exc) or "not a database" in str(exc):
                why = _WHY["SQLITE_CORRUPT"]
            elif type(exc) is sqlite3.OperationalError and name in ("", "SQLITE_ERROR"):
                return exc  # SQL that SQLite refused: a bug in Perdure, shown as it is
            else:
                why = "SQLite refused it"
        typed = DatabaseUnavailableError(f"the SQLite database at {path} failed ({exc}): {why}")
    else:
        return exc
    typed.__cause__ = exc
    return typed


def _read_only(path: str) -> bool:
    """Whether the file (if it exists) or its directory cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    return (os.path.exists(path) and not os.access(path, os.W_OK)) or (
        os.path.isdir(directory) and not os.access(directory, os.W_OK))


def check_openable(path: str) -> None:
    """Refuse, before SQLite opens (and maybe creates) it, a path that is no file for a
    database, or whose database was deleted while in use."""
    if path == ":memory:":
        return
    try:
        info = os.stat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise DatabaseUnavailableError(
            f"cannot open the SQLite database at {path}: {exc.strerror}") from exc
    if info is not None and not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise DatabaseUnavailableError(
            f"cannot use {path} as a SQLite database: it is {kind}; point the URL at a file "
            "(sqlite:///path/to/perdure.db)")
    if info is None or info.st_size == 0:
        try:
            wal = os.stat(path + "-wal").st_size
        except OSError:
            wal = 0
        if wal > 0:
            raise DatabaseUnavailableError(
                f"the SQLite database {path} is missing (or empty), but its write-ahead log "
                f"{path}-wal is there: the database was deleted or moved while in use, and "
                "what was committed since its last checkpoint is only in that log. Restore "
                "the database file; to start afresh instead, delete the -wal and -shm files")


def refuse_foreign(conn: sqlite3.Connection, path: str) -> None:
    """Refuse another application's database: tables, but none of them Perdure's schema
    table. Nothing is written to it."""
    tables = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    if tables and "perdure_schema" not in tables:
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise InvalidDatabaseURLError(
            f"the SQLite database at {path} belongs to another application (it has tables "
            f"{shown} and no perdure_schema); Perdure leaves it untouched. Give Perdure a "
            "file of its own")


class FileIdentity:
    """The device and inode of the file a connection opened, checked before each commit."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path) if path != ":memory:" else path
        self._identity = self._read()

    def _read(self) -> tuple[int, int] | None:
        if self.path == ":memory:":
            return None
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_dev, info.st_ino

    def problem(self) -> DatabaseUnavailableError | None:
        """An error when the path no longer names the opened file, else None."""
        if self.path == ":memory:":
            return None
        now = self._read()
        if now == self._identity:
            return None
        what = "was deleted" if now is None else "was replaced by another file"
        return DatabaseUnavailableError(
            f"the SQLite database {self.path} {what} while Perdure had it open; nothing more "
            "is committed to the old file (it would be lost). Restore the file (or keep "
            "the new one), then open a new Client")
