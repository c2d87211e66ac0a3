"""Versioned schema migrations. Each entry upgrades the schema by one version.

Column and table names are compatibility data: change them only through a new
migration, never by editing an old one.
"""

from __future__ import annotations

__all__ = ["POSTGRES_MIGRATIONS", "SCHEMA_VERSION", "SQLITE_MIGRATIONS"]

_V1 = """
CREATE TABLE IF NOT EXISTS perdure_schema (
    version INTEGER NOT NULL
);

CREATE TABLE workflow_runs (
    workflow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    workflow_type TEXT NOT NULL,
    task_queue TEXT NOT NULL,
    status TEXT NOT NULL,
    input BLOB,
    result BLOB,
    failure BLOB,
    history_length INTEGER NOT NULL,
    created_at REAL NOT NULL,
    closed_at REAL,
    execution_timeout REAL,
    sticky_worker TEXT,
    sticky_for REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (workflow_id, run_id)
);
CREATE INDEX workflow_runs_latest ON workflow_runs (workflow_id, created_at);
CREATE INDEX workflow_runs_listing ON workflow_runs (status, workflow_type, created_at);

CREATE TABLE history_events (
    workflow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (workflow_id, run_id, seq)
) WITHOUT ROWID;

CREATE TABLE inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX inbox_run ON inbox (workflow_id, run_id, id);

CREATE TABLE workflow_tasks (
    workflow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    task_queue TEXT NOT NULL,
    visible_at REAL NOT NULL,
    lease_owner TEXT,
    lease_expires_at REAL,
    attempt INTEGER NOT NULL DEFAULT 1,
    last_failure TEXT,
    sticky_worker TEXT,
    sticky_until REAL,
    PRIMARY KEY (workflow_id, run_id)
);
CREATE INDEX workflow_tasks_ready ON workflow_tasks (task_queue, visible_at);
CREATE INDEX workflow_tasks_owner ON workflow_tasks (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE activity_tasks (
    workflow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    activity_type TEXT NOT NULL,
    task_queue TEXT NOT NULL,
    input BLOB NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    scheduled_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    lease_owner TEXT,
    started_at REAL,
    deadline REAL,
    start_to_close_timeout REAL,
    schedule_to_close_timeout REAL,
    schedule_to_start_timeout REAL,
    heartbeat_timeout REAL,
    retry_policy BLOB NOT NULL,
    heartbeat_at REAL,
    heartbeat_details BLOB,
    last_failure BLOB,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (workflow_id, run_id, seq)
);
CREATE INDEX activity_tasks_ready ON activity_tasks (task_queue, visible_at)
    WHERE lease_owner IS NULL;
CREATE INDEX activity_tasks_deadline ON activity_tasks (deadline) WHERE deadline IS NOT NULL;
CREATE INDEX activity_tasks_owner ON activity_tasks (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE timers (
    workflow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    fire_at REAL NOT NULL,
    PRIMARY KEY (workflow_id, run_id, seq)
);
CREATE INDEX timers_due ON timers (fire_at);

CREATE TABLE workers (
    worker_id TEXT PRIMARY KEY,
    task_queues TEXT NOT NULL,
    heartbeat_at REAL NOT NULL,
    started_at REAL NOT NULL,
    build_id TEXT NOT NULL DEFAULT '',
    host TEXT NOT NULL DEFAULT '',
    pid INTEGER
);

CREATE TABLE query_tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    task_queue TEXT NOT NULL,
    name TEXT NOT NULL,
    args BLOB NOT NULL,
    created_at REAL NOT NULL,
    lease_owner TEXT,
    lease_expires_at REAL,
    done INTEGER NOT NULL DEFAULT 0,
    answer BLOB,
    error TEXT
);
CREATE INDEX query_tasks_ready ON query_tasks (task_queue, done);

CREATE TABLE workflow_types (
    workflow_type TEXT NOT NULL,
    task_queue TEXT NOT NULL,
    signals TEXT NOT NULL,
    queries TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (workflow_type, task_queue)
);
"""

_V2 = """
CREATE INDEX workflow_runs_closed ON workflow_runs (closed_at) WHERE closed_at IS NOT NULL;
"""
"""Version 2: retention (``perdure db prune``) finds old closed runs by an index."""

_V3 = """
ALTER TABLE workflow_runs ADD COLUMN parent_workflow_id TEXT;
ALTER TABLE workflow_runs ADD COLUMN parent_run_id TEXT;
ALTER TABLE workflow_runs ADD COLUMN parent_seq INTEGER;
ALTER TABLE workflow_runs ADD COLUMN parent_close_policy TEXT;
ALTER TABLE workflow_runs ADD COLUMN next_run_id TEXT;
ALTER TABLE workflow_runs ADD COLUMN memo {blob};
ALTER TABLE workflow_runs ADD COLUMN search_attributes {json};
ALTER TABLE workflow_runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
ALTER TABLE workflow_runs ADD COLUMN retry_policy {blob};
ALTER TABLE workflow_runs ADD COLUMN run_timeout {real};
ALTER TABLE workflow_runs ADD COLUMN build_id TEXT;
CREATE INDEX workflow_runs_parent ON workflow_runs (parent_workflow_id, parent_run_id)
    WHERE parent_workflow_id IS NOT NULL;
"""
"""Version 3: child workflows and continue-as-new. A child run names its parent run and
the command (seq) that started it; the index finds a closing run's children for its
parent-close policy. A run closed by continue-as-new names the run that continues it.
``build_id``: the build of the worker that ran the run's last workflow task. A run that
fails (or passes its run timeout) under a retry policy is followed by the next
attempt, also named by ``next_run_id``. Memo (JSON, shown, never searched) and search attributes (a JSON object of scalars that
``list_workflows`` filters on; JSONB with a GIN index on PostgreSQL)."""

_V3_UPDATES = """
CREATE TABLE updates (
    workflow_id TEXT NOT NULL,
    update_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    result {blob},
    failure {blob},
    created_at {real} NOT NULL,
    PRIMARY KEY (workflow_id, update_id)
);
CREATE INDEX updates_run ON updates (workflow_id, run_id, state);

CREATE TABLE payloads (
    workflow_id TEXT NOT NULL,
    hash TEXT NOT NULL,
    data {blob} NOT NULL,
    created_at {real} NOT NULL,
    PRIMARY KEY (workflow_id, hash)
);

CREATE TABLE stream_events (
    id {identity},
    workflow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    data {blob} NOT NULL,
    created_at {real} NOT NULL
);
CREATE INDEX stream_events_workflow ON stream_events (workflow_id, id);

CREATE TABLE rate_permits (
    name TEXT NOT NULL,
    holder TEXT NOT NULL,
    tokens INTEGER NOT NULL DEFAULT 0,
    acquired_at {real} NOT NULL,
    expires_at {real} NOT NULL,
    released_at {real},
    PRIMARY KEY (name, holder)
);
CREATE INDEX rate_permits_window ON rate_permits (name, acquired_at);
"""
"""Version 3 also: one row per update request, from requested to accepted, rejected,
completed or failed; the caller waits on it. Keyed by the update id its caller chose,
so that asking again (after a lost connection) finds the same update. ``stream_events``:
progress a workflow and its activities publish for followers (tokens, tool calls), kept
out of history; ids are in commit order per workflow id. ``rate_permits``: who holds or
held (in the last minute) a share of a named limit, shared by every worker. ``payloads``: content
stored once, out of line, by its SHA-256, and referenced from histories (an agent's
conversation); it goes with the workflow id's last run."""

_V4 = """
ALTER TABLE workflow_runs ADD COLUMN cron_schedule TEXT;
ALTER TABLE workflow_runs ADD COLUMN scheduled_at {real};
ALTER TABLE workflow_runs ADD COLUMN last_completion_result {blob};
"""
"""Version 4: cron workflows. ``cron_schedule``: the expression a run of a cron chain
carries (its successor starts at the next tick when it closes); ``scheduled_at``: when the
run's first workflow task became visible (its tick, or its retry's time), from which the
next tick is counted; ``last_completion_result``: the result of the chain's last run that
completed, handed to this run (``workflow.get_last_completion_result``)."""

SQLITE_MIGRATIONS: list[str] = [
    _V1, _V2,
    _V3.format(blob="BLOB", json="TEXT", real="REAL") + _V3_UPDATES.format(blob="BLOB", real="REAL",
                       identity="INTEGER PRIMARY KEY AUTOINCREMENT"),
    _V4.format(blob="BLOB", real="REAL"),
]
"""Migration ``i`` takes the schema from version ``i`` to ``i + 1``."""

_PG_V1 = """
CREATE TABLE IF NOT EXISTS perdure_schema (
    version INTEGER NOT NULL
);

CREATE TABLE workflow_runs (
    workflow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    workflow_type TEXT NOT NULL,
    task_queue TEXT NOT NULL,
    status TEXT NOT NULL,
    input BYTEA,
    result BYTEA,
    failure BYTEA,
    history_length INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    closed_at DOUBLE PRECISION,
    execution_timeout DOUBLE PRECISION,
    sticky_worker TEXT,
    sticky_for DOUBLE PRECISION NOT NULL DEFAULT 0,
    run_no BIGINT GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (workflow_id, run_id)
);
CREATE INDEX workflow_runs_latest ON workflow_runs (workflow_id, created_at);
CREATE INDEX workflow_runs_listing ON workflow_runs (status, workflow_type, created_at);
CREATE UNIQUE INDEX workflow_runs_one_running ON workflow_runs (workflow_id)
    WHERE status = 'running';

CREATE TABLE history_events (
    workflow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (workflow_id, run_id, seq)
);

CREATE TABLE inbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    data BYTEA NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.02);
CREATE INDEX inbox_run ON inbox (workflow_id, run_id, id);

CREATE TABLE workflow_tasks (
    workflow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    task_queue TEXT NOT NULL,
    visible_at DOUBLE PRECISION NOT NULL,
    lease_owner TEXT,
    lease_expires_at DOUBLE PRECISION,
    attempt INTEGER NOT NULL DEFAULT 1,
    last_failure TEXT,
    sticky_worker TEXT,
    sticky_until DOUBLE PRECISION,
    PRIMARY KEY (workflow_id, run_id)
) WITH (autovacuum_vacuum_scale_factor = 0.02);
CREATE INDEX workflow_tasks_ready ON workflow_tasks (task_queue, visible_at);
CREATE INDEX workflow_tasks_owner ON workflow_tasks (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE activity_tasks (
    workflow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    activity_type TEXT NOT NULL,
    task_queue TEXT NOT NULL,
    input BYTEA NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    scheduled_at DOUBLE PRECISION NOT NULL,
    visible_at DOUBLE PRECISION NOT NULL,
    lease_owner TEXT,
    started_at DOUBLE PRECISION,
    deadline DOUBLE PRECISION,
    start_to_close_timeout DOUBLE PRECISION,
    schedule_to_close_timeout DOUBLE PRECISION,
    schedule_to_start_timeout DOUBLE PRECISION,
    heartbeat_timeout DOUBLE PRECISION,
    retry_policy BYTEA NOT NULL,
    heartbeat_at DOUBLE PRECISION,
    heartbeat_details BYTEA,
    last_failure BYTEA,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (workflow_id, run_id, seq)
) WITH (autovacuum_vacuum_scale_factor = 0.02);
CREATE INDEX activity_tasks_ready ON activity_tasks (task_queue, visible_at)
    WHERE lease_owner IS NULL;
CREATE INDEX activity_tasks_deadline ON activity_tasks (deadline) WHERE deadline IS NOT NULL;
CREATE INDEX activity_tasks_owner ON activity_tasks (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE timers (
    workflow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    fire_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (workflow_id, run_id, seq)
);
CREATE INDEX timers_due ON timers (fire_at);

CREATE TABLE workers (
    worker_id TEXT PRIMARY KEY,
    task_queues TEXT NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    build_id TEXT NOT NULL DEFAULT '',
    host TEXT NOT NULL DEFAULT '',
    pid INTEGER
);

CREATE TABLE query_tasks (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    task_queue TEXT NOT NULL,
    name TEXT NOT NULL,
    args BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    lease_owner TEXT,
    lease_expires_at DOUBLE PRECISION,
    done INTEGER NOT NULL DEFAULT 0,
    answer BYTEA,
    error TEXT
);
CREATE INDEX query_tasks_ready ON query_tasks (task_queue, done);

CREATE TABLE workflow_types (
    workflow_type TEXT NOT NULL,
    task_queue TEXT NOT NULL,
    signals TEXT NOT NULL,
    queries TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (workflow_type, task_queue)
);
"""

_PG_V2 = _V2 + """
CREATE TABLE writer_commits (
    writer_id TEXT PRIMARY KEY,
    batch BIGINT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
"""
"""PostgreSQL's version 2 also keeps one commit marker per writer connection: the number
of its last committed batch, read when a COMMIT was cut off (see ``_postgres_writer``)."""

POSTGRES_MIGRATIONS: list[str] = [
    _PG_V1, _PG_V2,
    _V3.format(blob="BYTEA", json="JSONB", real="DOUBLE PRECISION")
    + _V3_UPDATES.format(blob="BYTEA", real="DOUBLE PRECISION",
                         identity="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
    + "CREATE INDEX workflow_runs_search ON workflow_runs USING GIN "
    "(search_attributes jsonb_path_ops);",
    _V4.format(blob="BYTEA", real="DOUBLE PRECISION"),
]
"""The same schema versions in PostgreSQL's types (BYTEA, DOUBLE PRECISION, identities),
plus what many processes need: at most one running run per workflow id."""

SCHEMA_VERSION = len(SQLITE_MIGRATIONS)
"""The schema version this code writes and understands."""

assert len(POSTGRES_MIGRATIONS) == SCHEMA_VERSION, "every schema version exists in both dialects"
