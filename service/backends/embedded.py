"""Embedded task backend: one SQLite file (WAL, synchronous=FULL) shared by the API and workers.

Every write is one short ``BEGIN IMMEDIATE`` transaction, so concurrent processes serialise on
SQLite's write lock: a claim reads and takes a task under that lock, and no two workers can get
the same one. Each state change appends a row to ``changes``, whose INTEGER PRIMARY KEY is the
monotonic sequence ``changes()`` pages on.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

from service.backends import embedded_models
from service.backends.base import TaskBackend
from service.domain import (
    Change,
    ChangePage,
    JobState,
    QueueStats,
    Submission,
    SubmitItem,
    TaskError,
    TaskInfo,
    Template,
    WorkerInfo,
)
from service.backends.embedded_schema import (
    MIGRATIONS,
    SCHEMA,
    SCHEMA_VERSION,
    TASK_COLUMNS,
    dump,
    prefixed,
    statements,
    task_from_row,
    template_from_row,
)
from service.errors import (
    BackendUnavailable,
    ConfigError,
    InvalidRequest,
    LeaseLost,
    ScantideError,
    TaskNotFound,
    UnknownAlgorithm,
)
from service.models import AuditEntry, ModelVersion

_NO_LOCK = nullcontext()


class EmbeddedBackend(TaskBackend):
    """``TaskBackend`` over a SQLite file. Safe to share between threads and processes."""

    def __init__(self, path: str | Path, *, max_attempts: int = 2, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.max_attempts = max_attempts
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        # Threads of one process queue here rather than in SQLite's busy handler, which sleeps in
        # 1-100 ms steps and would dominate tail latency; other processes still meet the file lock.
        self._write_lock = threading.Lock()
        self._registry_writes = 0  # promotes and rollbacks through this object (promoted_model's cache)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    # -- connections -----------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")  # a 202 means the task survives a crash
            except sqlite3.Error as exc:
                raise BackendUnavailable(f"cannot open task store {self.path}: {exc}") from exc
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction; IMMEDIATE for writes so the write lock is taken up front."""
        db = self._conn()
        lock = self._write_lock if write else _NO_LOCK
        try:
            with lock:
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise BackendUnavailable(f"task store {self.path} is unavailable: {exc}") from exc

    def _migrate(self) -> None:
        """Create the schema, or upgrade an older store, in one transaction."""
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(f"task store {self.path} has schema version {version}, newer than this "
                                  f"scantide's {SCHEMA_VERSION}: upgrade scantide")
            if version == 0:
                for statement in statements(SCHEMA):
                    db.execute(statement)
            else:
                for v in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[v]:
                        db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()

    # -- templates -------------------------------------------------------------------------
    def register_template(self, template: Template) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO templates VALUES (?, ?, ?, ?, ?)",
                (template.name, template.entry_point, template.queue, json.dumps(template.params),
                 template.max_runtime_s),
            )

    def ensure_templates(self, templates: list[Template]) -> None:
        """Register each template that does not exist yet; never overwrites."""
        with self._tx() as db:
            for t in templates:
                db.execute(
                    "INSERT OR IGNORE INTO templates VALUES (?, ?, ?, ?, ?)",
                    (t.name, t.entry_point, t.queue, json.dumps(t.params), t.max_runtime_s),
                )

    def get_template(self, algorithm: str) -> Template:
        with self._tx(write=False) as db:
            row = db.execute("SELECT * FROM templates WHERE name = ?", (algorithm,)).fetchone()
        if row is None:
            known = ", ".join(t.name for t in self.templates()) or "none"
            raise UnknownAlgorithm(f"unknown algorithm {algorithm!r}; registered: {known}")
        return template_from_row(row)

    def templates(self) -> list[Template]:
        with self._tx(write=False) as db:
            return [template_from_row(r) for r in db.execute("SELECT * FROM templates ORDER BY name")]

    # -- platform side ---------------------------------------------------------------------
    def submit(self, algorithm: str, scan_id: str, params: dict[str, Any], output_uri: str) -> Submission:
        (outcome,) = self.submit_many([SubmitItem(algorithm, scan_id, params, output_uri)])
        if isinstance(outcome, ScantideError):
            raise outcome
        return outcome

    def submit_many(self, items: list[SubmitItem]) -> list[Submission | ScantideError]:
        """All items in one transaction: one durable commit for the whole batch."""
        now = time.time()
        out: list[Submission | ScantideError] = []
        with self._tx() as db:
            templates: dict[str, Template | None] = {}
            for item in items:
                if item.algorithm not in templates:
                    row = db.execute("SELECT * FROM templates WHERE name = ?", (item.algorithm,)).fetchone()
                    templates[item.algorithm] = template_from_row(row) if row else None
                template = templates[item.algorithm]
                if template is None:
                    known = ", ".join(r[0] for r in db.execute("SELECT name FROM templates ORDER BY name")) or "none"
                    out.append(UnknownAlgorithm(f"unknown algorithm {item.algorithm!r}; registered: {known}"))
                    continue
                try:
                    encoded = json.dumps({**template.params, **item.params})
                except (TypeError, ValueError) as exc:
                    out.append(InvalidRequest(f"task parameters are not JSON-serialisable: {exc}"))
                    continue
                task_id = new_task_id()
                row = db.execute(
                    "INSERT INTO tasks (id, algorithm, scan_id, queue, state, params, output_uri, created_at,"
                    " queued_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?) ON CONFLICT (scan_id, algorithm) DO NOTHING"
                    f" RETURNING {TASK_COLUMNS}",
                    (task_id, item.algorithm, item.scan_id, template.queue, encoded, item.output_uri, now, now),
                ).fetchone()
                if row is not None:
                    _record(db, task_id, JobState.queued, 0, now)
                    out.append(Submission(task=task_from_row(row), created=True))
                    continue
                row = db.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE algorithm = ? AND scan_id = ?",
                                 (item.algorithm, item.scan_id)).fetchone()
                out.append(Submission(task=task_from_row(row), created=False))
        return out

    def get_task(self, task_id: str) -> TaskInfo:
        with self._tx(write=False) as db:
            row = db.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(f"no task {task_id!r}")
        return task_from_row(row)

    def tasks_for_scan(self, scan_id: str) -> list[TaskInfo]:
        with self._tx(write=False) as db:
            rows = db.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE scan_id = ? ORDER BY created_at, rowid", (scan_id,)
            ).fetchall()
        return [task_from_row(r) for r in rows]

    def list_tasks(self, state: JobState | None = None, limit: int = 50) -> list[TaskInfo]:
        where, args = ("WHERE state = ?", [state.value]) if state else ("", [])
        with self._tx(write=False) as db:
            rows = db.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [task_from_row(r) for r in rows]

    def changes(self, cursor: str | None, limit: int = 500) -> ChangePage:
        after = _parse_cursor(cursor)
        with self._tx(write=False) as db:
            rows = db.execute(
                f"SELECT c.seq, c.state AS c_state, c.attempt AS c_attempt, c.at, {prefixed('t')}"
                " FROM changes c JOIN tasks t ON t.id = c.task_id WHERE c.seq > ? ORDER BY c.seq LIMIT ?",
                (after, limit + 1),
            ).fetchall()
        more = len(rows) > limit
        changes = [
            Change(cursor=str(r["seq"]), task_id=r["id"], state=JobState(r["c_state"]), attempt=r["c_attempt"],
                   at=r["at"], task=task_from_row(r))
            for r in rows[:limit]
        ]
        return ChangePage(changes=changes, cursor=changes[-1].cursor if changes else cursor, more=more)

    def queue_stats(self, queue: str) -> QueueStats:
        now = time.time()
        with self._tx(write=False) as db:
            row = db.execute(
                "SELECT SUM(state = 'queued') AS pending, SUM(state = 'running') AS running,"
                " MIN(CASE WHEN state = 'queued' THEN queued_at END) AS oldest, COUNT(*) AS total"
                " FROM tasks WHERE queue = ?",
                (queue,),
            ).fetchone()
        oldest = row["oldest"]
        return QueueStats(queue=queue, pending=row["pending"] or 0, running=row["running"] or 0,
                          oldest_queued_age_s=max(0.0, now - oldest) if oldest else 0.0,
                          enqueued_total=row["total"])

    def queues(self) -> list[str]:
        with self._tx(write=False) as db:
            rows = db.execute("SELECT queue FROM templates UNION SELECT DISTINCT queue FROM tasks").fetchall()
        return sorted(r[0] for r in rows)

    def workers(self, queue: str | None = None) -> list[WorkerInfo]:
        where, args = ("WHERE queue = ?", (queue,)) if queue else ("", ())
        with self._tx(write=False) as db:
            rows = db.execute(f"SELECT * FROM workers {where} ORDER BY id", args).fetchall()
        return [
            WorkerInfo(worker_id=r["id"], queue=r["queue"], task_id=r["task_id"], last_seen=r["last_seen"],
                       idle_since=r["idle_since"], draining=bool(r["draining"]))
            for r in rows
        ]

    def request_drain(self, worker_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE workers SET draining = 1 WHERE id = ?", (worker_id,))

    # -- agent side ------------------------------------------------------------------------
    def register_worker(self, worker_id: str, queue: str) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO workers (id, queue, last_seen, idle_since) VALUES (?, ?, ?, ?)"
                # A worker registering again (an instance started from the warm pool) starts afresh.
                " ON CONFLICT (id) DO UPDATE SET queue = excluded.queue, last_seen = excluded.last_seen,"
                " idle_since = excluded.idle_since, task_id = NULL, draining = 0",
                (worker_id, queue, now, now),
            )

    def unregister_worker(self, worker_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def claim(self, queue: str, worker_id: str, lease_s: float) -> TaskInfo | None:
        now = time.time()
        with self._tx() as db:
            self._reap(db, now)
            worker = db.execute("SELECT draining FROM workers WHERE id = ?", (worker_id,)).fetchone()
            if worker is not None and worker["draining"]:
                return None
            row = db.execute(
                f"UPDATE tasks SET state = 'running', attempt = attempt + 1, worker_id = ?, lease_until = ?,"
                f" started_at = ?, heartbeat_at = ?, progress = 0 WHERE id = (SELECT id FROM tasks"
                f" WHERE queue = ? AND state = 'queued' ORDER BY queued_at, rowid LIMIT 1) RETURNING {TASK_COLUMNS}",
                (worker_id, now + lease_s, now, now, queue),
            ).fetchone()
            if row is None:
                db.execute("UPDATE workers SET last_seen = ? WHERE id = ?", (now, worker_id))
                return None
            task = task_from_row(row)
            _record(db, task.task_id, JobState.running, task.attempt, now)
            db.execute(
                "UPDATE workers SET task_id = ?, idle_since = NULL, last_seen = ? WHERE id = ?",
                (task.task_id, now, worker_id),
            )
        return task

    def heartbeat(self, worker_id: str, task_id: str | None, lease_s: float, progress: float | None = None) -> bool:
        now = time.time()
        with self._tx() as db:
            if task_id is not None:
                cur = db.execute(
                    "UPDATE tasks SET lease_until = ?, heartbeat_at = ?, progress = COALESCE(?, progress)"
                    " WHERE id = ? AND worker_id = ? AND state = 'running'",
                    (now + lease_s, now, progress, task_id, worker_id),
                )
                if cur.rowcount == 0:
                    raise LeaseLost(f"worker {worker_id} no longer holds task {task_id}")
            row = db.execute(
                "UPDATE workers SET last_seen = ? WHERE id = ? RETURNING draining", (now, worker_id)
            ).fetchone()
        return bool(row and row["draining"])

    def finish(
        self, task_id: str, worker_id: str, *, result: dict[str, Any] | None = None, error: TaskError | None = None
    ) -> TaskInfo:
        if (result is None) == (error is None):
            raise ValueError("finish() takes exactly one of result or error")
        now = time.time()
        state = JobState.completed if error is None else JobState.failed
        with self._tx() as db:
            row = db.execute(
                f"UPDATE tasks SET state = ?, finished_at = ?, lease_until = NULL, result = ?, error = ?,"
                f" progress = CASE WHEN ? = 'completed' THEN 1 ELSE progress END"
                f" WHERE id = ? AND worker_id = ? AND state = 'running' RETURNING {TASK_COLUMNS}",
                (state.value, now, dump(result), dump(asdict(error) if error else None), state.value, task_id,
                 worker_id),
            ).fetchone()
            if row is None:
                raise LeaseLost(f"worker {worker_id} no longer holds task {task_id}; its result was not recorded")
            task = task_from_row(row)
            _record(db, task_id, state, task.attempt, now)
            db.execute(
                "UPDATE workers SET task_id = NULL, idle_since = ?, last_seen = ? WHERE id = ?",
                (now, now, worker_id),
            )
        return task

    def reap_expired(self) -> list[TaskInfo]:
        with self._tx() as db:
            return self._reap(db, time.time())

    def _reap(self, db: sqlite3.Connection, now: float) -> list[TaskInfo]:
        """Inside a write transaction: re-queue (or fail) tasks whose lease ran out."""
        expired = db.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'running' AND lease_until < ?", (now,)
        ).fetchall()
        changed = []
        for row in expired:
            task = task_from_row(row)
            if task.attempt < self.max_attempts:
                # queued_at stays: the re-queued task goes back to the front of the queue.
                new = db.execute(
                    f"UPDATE tasks SET state = 'queued', worker_id = NULL, lease_until = NULL, started_at = NULL,"
                    f" progress = NULL"
                    f" WHERE id = ? RETURNING {TASK_COLUMNS}", (task.task_id,)
                ).fetchone()
                _record(db, task.task_id, JobState.queued, task.attempt, now)
            else:
                err = TaskError.make(
                    "worker_lost",
                    f"the worker running this task stopped responding (attempt {task.attempt} of "
                    f"{self.max_attempts}); the task was not retried again",
                )
                new = db.execute(
                    f"UPDATE tasks SET state = 'failed', lease_until = NULL, finished_at = ?, error = ?"
                    f" WHERE id = ? RETURNING {TASK_COLUMNS}", (now, dump(asdict(err)), task.task_id)
                ).fetchone()
                _record(db, task.task_id, JobState.failed, task.attempt, now)
            db.execute("UPDATE workers SET task_id = NULL WHERE id = ? AND task_id = ?", (task.worker_id, task.task_id))
            changed.append(task_from_row(new))
        return changed

    # -- model registry (embedded_models) --------------------------------------------------
    def register_model(self, model: ModelVersion) -> ModelVersion:
        with self._tx() as db:
            return embedded_models.register(db, model)

    def model_version(self, algorithm: str, version: str) -> ModelVersion | None:
        with self._tx(write=False) as db:
            return embedded_models.get(db, algorithm, version)

    def list_models(self, algorithm: str | None = None) -> list[ModelVersion]:
        with self._tx(write=False) as db:
            return embedded_models.listing(db, algorithm)

    def promoted_model(self, algorithm: str) -> ModelVersion | None:
        """Cached per connection, and exact: the cache holds only while ``PRAGMA data_version``
        (which changes when another connection, in any process, commits) and this backend's own
        registry writes (which do not change it for the connection that made them) stand still.
        Enqueue asks once per batch; a hit costs one pragma instead of a read transaction."""
        db = self._conn()
        key = (db.execute("PRAGMA data_version").fetchone()[0], self._registry_writes)
        cache = self._local.__dict__.setdefault("promoted", {})
        hit = cache.get(algorithm)
        if hit is not None and hit[0] == key:
            return hit[1]
        with self._tx(write=False) as db:
            model = embedded_models.promoted(db, algorithm)
        cache[algorithm] = (key, model)
        return model

    def promote_model(self, algorithm: str, version: str, by: str) -> AuditEntry | None:
        try:
            with self._tx() as db:
                return embedded_models.promote(db, algorithm, version, by)
        finally:
            self._registry_writes += 1

    def rollback_model(self, algorithm: str, by: str) -> AuditEntry:
        try:
            with self._tx() as db:
                return embedded_models.rollback(db, algorithm, by)
        finally:
            self._registry_writes += 1

    def model_history(self, algorithm: str | None = None) -> list[AuditEntry]:
        with self._tx(write=False) as db:
            return embedded_models.history(db, algorithm)


def new_task_id() -> str:
    """32 hex characters: milliseconds since the epoch, then 80 random bits. Ids sort by creation,
    so inserts append to the primary-key B-tree instead of landing all over it."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


def _record(db: sqlite3.Connection, task_id: str, state: JobState, attempt: int, now: float) -> None:
    db.execute("INSERT INTO changes (task_id, state, attempt, at) VALUES (?, ?, ?, ?)",
               (task_id, state.value, attempt, now))


def _parse_cursor(cursor: str | None) -> int:
    if cursor in (None, ""):
        return 0
    try:
        return int(cursor)
    except ValueError as exc:
        raise InvalidRequest(f"invalid change cursor {cursor!r}") from exc
