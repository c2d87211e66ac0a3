"""What the database refuses reaches the caller as Perdure's typed error, never as the
driver's (sqlite3, psycopg), and nothing of the call is committed.

Perdure's own checks keep unstorable values out; this is the net behind them. The
refusal here is real: a trigger in the test's database rejects one workflow type with a
data exception, as PostgreSQL rejects a value it cannot store."""

from __future__ import annotations

import sqlite3
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pytest

from perdure import Client, InvalidArgumentError, WorkflowNotFoundError
from tests._digest import database_digest


def _refuse_type(url: str, workflow_type: str) -> None:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.split("://", 1)[1][1:])
        with conn:
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON workflow_runs "
                f"WHEN NEW.workflow_type = '{workflow_type}' BEGIN "
                "SELECT RAISE(ABORT, 'value refused by the database'); END")
        conn.close()
        return
    import psycopg

    parts = urlsplit(url)
    schema = dict(parse_qsl(parts.query))["schema"]
    with psycopg.connect(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
                         autocommit=True) as conn:
        conn.execute(
            f'CREATE FUNCTION "{schema}".refuse() RETURNS trigger AS $$ BEGIN '
            f"IF NEW.workflow_type = '{workflow_type}' THEN RAISE EXCEPTION "
            "'value refused by the database' USING ERRCODE = 'string_data_right_truncation';"
            " END IF; RETURN NEW; END $$ LANGUAGE plpgsql")
        conn.execute(f'CREATE TRIGGER refuse BEFORE INSERT ON "{schema}".workflow_runs '
                     f'FOR EACH ROW EXECUTE FUNCTION "{schema}".refuse()')


async def test_a_value_the_database_refuses_is_a_typed_error(database_url: str) -> None:
    client = await Client.connect(database_url)
    try:
        await client.start_workflow("Accepted", id="kept", task_queue="q")
        _refuse_type(database_url, "Refused")
        before = database_digest(database_url)
        with pytest.raises(InvalidArgumentError, match="value refused by the database") as info:
            await client.start_workflow("Refused", id="refused", task_queue="q")
        assert "cannot store a value of this call" in str(info.value)
        assert info.value.__cause__ is not None  # the driver's error, for whoever debugs
        assert database_digest(database_url) == before
        with pytest.raises(WorkflowNotFoundError):
            await client.get_workflow_handle("refused").describe()
        await client.start_workflow("Accepted", id="after", task_queue="q")  # still fine
    finally:
        await client.close()
