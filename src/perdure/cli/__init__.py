"""The ``perdure`` command line: database administration (``perdure db ...``)."""

from perdure.cli._main import main

__all__ = ["main"]
