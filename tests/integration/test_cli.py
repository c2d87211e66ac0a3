"""The ``perdure`` command: ``db migrate`` and ``db status`` on both backends."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from perdure.cli import main
from perdure.store._schema import SCHEMA_VERSION


def test_migrate_creates_then_reports_up_to_date(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "status", "--database-url", database_url]) == 1
    assert "run `perdure db migrate`" in capsys.readouterr().out
    assert main(["db", "migrate", "--database-url", database_url]) == 0
    assert f"migrated from version 0 to {SCHEMA_VERSION}" in capsys.readouterr().out
    assert main(["db", "migrate", "--database-url", database_url]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["db", "status", "--database-url", database_url]) == 0
    assert f"schema version {SCHEMA_VERSION}, up to date" in capsys.readouterr().out


def test_the_installed_command_reads_the_environment_variable(database_url: str) -> None:
    env = dict(os.environ, PERDURE_DATABASE_URL=database_url)
    done = subprocess.run([sys.executable, "-m", "perdure.cli", "db", "migrate"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "migrated" in done.stdout


def test_bad_urls_exit_2_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "migrate", "--database-url", "mysql://x"]) == 2
    err = capsys.readouterr().err
    assert "InvalidDatabaseURLError" in err
    assert "unsupported database URL scheme 'mysql'" in err


def test_no_database_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERDURE_DATABASE_URL", raising=False)
    with pytest.raises(SystemExit, match="PERDURE_DATABASE_URL"):
        main(["db", "migrate"])


def test_passwords_are_not_printed(capsys: pytest.CaptureFixture[str]) -> None:
    from perdure.cli._main import _redact

    assert _redact("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert _redact("postgresql://bob@db/x") == "postgresql://bob@db/x"
    assert _redact("sqlite:///tmp/x.db") == "sqlite:///tmp/x.db"
