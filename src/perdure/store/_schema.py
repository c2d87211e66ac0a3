"""Versioned schema migrations. Each entry upgrades the schema by one version.

Column and table names are compatibility data: change them only through a new
migration, never by editing an old one.
"""

from __future__ import annotations

__all__ = ["SCHEMA_VERSION", "SQLITE_MIGRATIONS"]

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

SQLITE_MIGRATIONS: list[str] = [_V1]
"""Migration ``i`` takes the schema from version ``i`` to ``i + 1``."""

SCHEMA_VERSION = len(SQLITE_MIGRATIONS)
"""The schema version this code writes and understands."""
