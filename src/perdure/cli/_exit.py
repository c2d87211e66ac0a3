"""What the ``perdure`` command's exit status means (``EXIT_STATUSES``, shown at the end
of every ``--help``), and the one place that maps an error to it and to the one line it
prints on standard error: ``report_error``.
"""

from __future__ import annotations

import argparse
import enum
import os
import sqlite3
import sys
import traceback
from typing import Any, NoReturn

from perdure._errors import (
    ActivityNotFoundError,
    ConfigurationError,
    DatabaseUnavailableError,
    InvalidArgumentError,
    PayloadError,
    PerdureError,
    SchemaVersionError,
    UnknownHandlerError,
    UnknownWorkflowTypeError,
    WorkflowNotFoundError,
)

__all__ = ["EXIT_STATUSES", "CommandError", "CommandParser", "ExitStatus", "report_error"]


class ExitStatus(enum.IntEnum):
    """The ``perdure`` command's exit statuses (see the module's docstring)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    UNAVAILABLE = 4
    INTERRUPTED = 130


EXIT_STATUSES = """\
exit status:
  0    done (replay: every history replays; diff: the runs agree)
  1    the answer is no: a history does not replay, the runs differ, db status finds
       another schema version, a followed agent did not complete, the workflow has
       closed, the database refused the change
  2    bad input: arguments, numbers, JSON, a database URL, a file that is not a
       history export, a workflow of the wrong kind
  3    not found: no such workflow, run or file; replay had no history to check
  4    the database cannot be used: unreachable, not a database, or its schema is
       not this Perdure's (run `perdure db migrate`)
  130  interrupted"""


class _Formatter(argparse.HelpFormatter):
    """argparse's, but the exit statuses keep their layout."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("exit status:"):
            return text
        return super()._fill_text(text, width, indent)


class CommandError(PerdureError):
    """A command's own refusal, with the exit status it means (never leaves ``main``)."""

    def __init__(self, message: str, status: ExitStatus) -> None:
        super().__init__(message)
        self.status = status


class CommandParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (not the usage text) and exit status 2,
    returned by ``main`` like any other error rather than raised as ``SystemExit``; every
    command's help ends with the exit statuses."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", EXIT_STATUSES)
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]  # "db prune" of "perdure db prune"
        raise CommandError(f"{command + ': ' if command else ''}{message} "
                           f"(see {self.prog} --help)", ExitStatus.USAGE)


def _database_error(exc: BaseException) -> bool:
    """A driver's error that reached the command: the database could not be used."""
    if isinstance(exc, sqlite3.Error):
        return True
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(exc, psycopg.Error)


def exit_status(exc: BaseException) -> ExitStatus:
    """The exit status an error means."""
    if isinstance(exc, CommandError):
        return exc.status
    if isinstance(exc, KeyboardInterrupt):
        return ExitStatus.INTERRUPTED
    if isinstance(exc, DatabaseUnavailableError | SchemaVersionError) or _database_error(exc):
        return ExitStatus.UNAVAILABLE
    if isinstance(exc, WorkflowNotFoundError | ActivityNotFoundError | FileNotFoundError):
        return ExitStatus.NOT_FOUND
    if isinstance(exc, ConfigurationError | InvalidArgumentError | PayloadError
                  | UnknownHandlerError | UnknownWorkflowTypeError):
        return ExitStatus.USAGE
    return ExitStatus.FAILED


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def report_error(exc: BaseException) -> int:
    """Print what went wrong as one line on standard error; return the exit status.

    A Perdure error is named by its type; an error nobody anticipated (a bug) says so,
    and ``PERDURE_DEBUG=1`` adds its traceback."""
    status = exit_status(exc)
    if isinstance(exc, BrokenPipeError):
        # the reader went away (``perdure workflow export X | head``): nothing to say,
        # and nothing more can be written to standard output
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitStatus.FAILED
    if isinstance(exc, KeyboardInterrupt):
        message = "interrupted"
    elif isinstance(exc, CommandError):
        message = str(exc)
    elif isinstance(exc, PerdureError):
        message = f"{type(exc).__name__}: {exc}"
    elif _database_error(exc):
        message = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    elif isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        message = f"{exc.strerror}:{where}" if where else exc.strerror
    else:
        message = (f"unexpected error (a bug in Perdure; PERDURE_DEBUG=1 shows where): "
                   f"{type(exc).__name__}: {exc}")
    print(f"perdure: {_one_line(message)}", file=sys.stderr)
    if os.environ.get("PERDURE_DEBUG") == "1":
        traceback.print_exception(exc, file=sys.stderr)
    return status
