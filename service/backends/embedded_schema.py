"""The embedded store's schema, its migrations, and the mapping between rows and domain types."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from service.domain import JobState, TaskError, TaskInfo, Template

# Bump SCHEMA_VERSION with every schema change and add the statements that upgrade the previous
# version to MIGRATIONS[new version]; SCHEMA always holds the newest schema in full.
SCHEMA_VERSION = 6
MODEL_TABLES = """
CREATE TABLE IF NOT EXISTS models (
    algorithm TEXT NOT NULL, version TEXT NOT NULL, uri TEXT NOT NULL, sha256 TEXT NOT NULL,
    size INTEGER NOT NULL, notes TEXT NOT NULL, registered_at REAL NOT NULL, registered_by TEXT NOT NULL,
    promoted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (algorithm, version)
);
-- At most one promoted version per algorithm; enqueue reads it by this index.
CREATE UNIQUE INDEX IF NOT EXISTS models_promoted ON models (algorithm) WHERE promoted = 1;
CREATE TABLE IF NOT EXISTS model_audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, algorithm TEXT NOT NULL, action TEXT NOT NULL,
    from_version TEXT, to_version TEXT, by TEXT NOT NULL, at REAL NOT NULL
);
"""
ALGORITHM_TABLES = """
CREATE TABLE IF NOT EXISTS algorithms (
    name TEXT NOT NULL, version TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, uri TEXT NOT NULL,
    queue TEXT NOT NULL, descriptor TEXT NOT NULL, registered_at REAL NOT NULL, registered_by TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
"""
MIGRATIONS: dict[int, list[str]] = {
    # v2: fewer indexes to write per submit (the old inline UNIQUE stays in migrated stores).
    2: ["CREATE UNIQUE INDEX IF NOT EXISTS tasks_scan ON tasks (scan_id, algorithm)",
        "DROP INDEX IF EXISTS tasks_by_scan",
        "DROP INDEX IF EXISTS tasks_running",
        "CREATE INDEX IF NOT EXISTS tasks_lease ON tasks (lease_until) WHERE state = 'running'"],
    # v3: the model registry and its audit trail.
    3: [],  # filled below from MODEL_TABLES
    # v4: the algorithm registry; each task's own attempt limit (its algorithm's resources.max_attempts).
    4: ["ALTER TABLE tasks ADD COLUMN max_attempts INTEGER"],  # and ALGORITHM_TABLES, below
    # v5: retrying a failed task: the runs it had before (history), and the attempts that came before
    # the retry (attempt_base), which the attempt limit does not count.
    5: ["ALTER TABLE tasks ADD COLUMN history TEXT",
        "ALTER TABLE tasks ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0"],
    # v6: the id of the request that submitted the task, which the logs of its run carry.
    6: ["ALTER TABLE tasks ADD COLUMN request_id TEXT"],
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS templates (
    name TEXT PRIMARY KEY, entry_point TEXT NOT NULL, queue TEXT NOT NULL,
    params TEXT NOT NULL, max_runtime_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, algorithm TEXT NOT NULL, scan_id TEXT NOT NULL, queue TEXT NOT NULL,
    state TEXT NOT NULL, params TEXT NOT NULL, output_uri TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0, worker_id TEXT, lease_until REAL,
    created_at REAL NOT NULL, queued_at REAL, started_at REAL, finished_at REAL,
    result TEXT, error TEXT, progress REAL, heartbeat_at REAL, max_attempts INTEGER, history TEXT,
    attempt_base INTEGER NOT NULL DEFAULT 0, request_id TEXT,
    UNIQUE (scan_id, algorithm)  -- the idempotency key, and the index for lookups by scan
);
CREATE INDEX IF NOT EXISTS tasks_by_queue ON tasks (queue, state, queued_at);
-- Partial: inserting a queued task does not touch it; reaping reads only running tasks.
CREATE INDEX IF NOT EXISTS tasks_lease ON tasks (lease_until) WHERE state = 'running';
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL, state TEXT NOT NULL,
    attempt INTEGER NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY, queue TEXT NOT NULL, task_id TEXT, last_seen REAL NOT NULL,
    idle_since REAL, draining INTEGER NOT NULL DEFAULT 0
);
""" + MODEL_TABLES + ALGORITHM_TABLES

TASK_COLUMNS = (
    "id, algorithm, scan_id, queue, state, params, output_uri, attempt, worker_id, "
    "created_at, queued_at, started_at, finished_at, result, error, progress, heartbeat_at, history, request_id"
)


def statements(script: str) -> list[str]:
    """Split a schema script into statements (``--`` comments dropped: no literal in it holds one)."""
    code = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    return [s for s in code.split(";") if s.strip()]


MIGRATIONS[3] = statements(MODEL_TABLES)
MIGRATIONS[4] += statements(ALGORITHM_TABLES)


def prefixed(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in TASK_COLUMNS.split(","))


def dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def template_from_row(row: sqlite3.Row) -> Template:
    return Template(name=row["name"], entry_point=row["entry_point"], queue=row["queue"],
                    params=json.loads(row["params"]), max_runtime_s=row["max_runtime_s"])


def task_from_row(row: sqlite3.Row) -> TaskInfo:
    error = json.loads(row["error"]) if row["error"] else None
    return TaskInfo(
        task_id=row["id"], algorithm=row["algorithm"], scan_id=row["scan_id"], queue=row["queue"],
        state=JobState(row["state"]), params=json.loads(row["params"]), output_uri=row["output_uri"],
        attempt=row["attempt"], worker_id=row["worker_id"], created_at=row["created_at"],
        queued_at=row["queued_at"], started_at=row["started_at"], finished_at=row["finished_at"],
        result=json.loads(row["result"]) if row["result"] else None,
        error=TaskError(**error) if error else None,
        progress=row["progress"],
        heartbeat_at=row["heartbeat_at"],
        history=json.loads(row["history"]) if row["history"] else [],
        request_id=row["request_id"],
    )
