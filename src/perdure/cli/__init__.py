"""The ``perdure`` command line: ``db``, ``replay``, ``workflow`` and ``agent`` commands
(see ``docs/cli.md``; exit statuses in ``_exit``)."""

from perdure.cli._main import main

__all__ = ["main"]
