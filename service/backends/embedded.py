"""Embedded task backend: one SQLite file (WAL, synchronous=FULL) shared by the API and workers.

Every write is one short ``BEGIN IMMEDIATE`` transaction, so concurrent processes serialise on
SQLite's write lock: a claim reads and takes a task under that lock, and no two workers can get
the same one. Each state change appends a row to ``changes``, whose INTEGER PRIMARY KEY is the
monotonic sequence ``changes()`` pages on.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from service.backends.base import TaskBackend
from service.backends.embedded_algorithms import EmbeddedAlgorithms
from service.backends.embedded_db import Database
from service.backends.embedded_models import EmbeddedModels
from service.backends.embedded_schema import (
    TASK_COLUMNS,
    dump,
    prefixed,
    task_from_row,
    template_from_row,
)
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
    ended_run,
    iso,
)
from service.doorbell import CHANGES, QUEUE, Doorbell, Listener
from service.errors import (
    InvalidRequest,
    LeaseLost,
    ScantideError,
    TaskNotCancellable,
    TaskNotFound,
    TaskNotRetryable,
    UnknownAlgorithm,
)

log = logging.getLogger(__name__)


class EmbeddedBackend(TaskBackend):
    """``TaskBackend`` over a SQLite file. Safe to share between threads and processes."""

    def __init__(self, path: str | Path, *, max_attempts: int = 2, busy_timeout_s: float = 30.0,
                 worker_expiry_s: float = 60.0, wake_ups: bool = True) -> None:
        """worker_expiry_s: a worker silent this long is gone (killed, its machine lost): its
        registration is dropped, as its task's lease runs out. wake_ups: ring the doorbell on each
        queued task and change (False: every waiter polls)."""
        self.db = Database(path, busy_timeout_s)
        self.path = self.db.path
        self.max_attempts = max_attempts
        self.worker_expiry_s = worker_expiry_s
        self.models = EmbeddedModels(self.db)
        self.algorithms = EmbeddedAlgorithms(self.db)
        # Processes on this machine waiting for work or changes are rung after each commit.
        self.bell = Doorbell(self.path.with_name(self.path.name + ".bells") if wake_ups else None)

    def close(self) -> None:
        self.db.close()
        self.bell.close()

    def listener(self, topic: str) -> Listener:
        return self.bell.listener(topic)

    # -- templates -------------------------------------------------------------------------
    def register_template(self, template: Template) -> None:
        with self.db.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO templates VALUES (?, ?, ?, ?, ?)",
                (template.name, template.entry_point, template.queue, json.dumps(template.params),
                 template.max_runtime_s),
            )

    def ensure_templates(self, templates: list[Template]) -> None:
        """Register each template that does not exist yet; never overwrites."""
        with self.db.tx() as db:
            for t in templates:
                db.execute(
                    "INSERT OR IGNORE INTO templates VALUES (?, ?, ?, ?, ?)",
                    (t.name, t.entry_point, t.queue, json.dumps(t.params), t.max_runtime_s),
                )

    def get_template(self, algorithm: str) -> Template:
        with self.db.tx(write=False) as db:
            row = db.execute("SELECT * FROM templates WHERE name = ?", (algorithm,)).fetchone()
        if row is None:
            known = ", ".join(t.name for t in self.templates()) or "none"
            raise UnknownAlgorithm(f"unknown algorithm {algorithm!r}; registered: {known}")
        return template_from_row(row)

    def templates(self) -> list[Template]:
        with self.db.tx(write=False) as db:
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
        with self.db.tx() as db:
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
                    " queued_at, max_attempts, request_id) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)"
                    f" ON CONFLICT (scan_id, algorithm) DO NOTHING RETURNING {TASK_COLUMNS}",
                    (task_id, item.algorithm, item.scan_id, item.queue or template.queue, encoded, item.output_uri,
                     now, now, item.max_attempts, item.request_id),
                ).fetchone()
                if row is not None:
                    _record(db, task_id, JobState.queued, 0, now)
                    out.append(Submission(task=task_from_row(row), created=True))
                    continue
                row = db.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE algorithm = ? AND scan_id = ?",
                                 (item.algorithm, item.scan_id)).fetchone()
                out.append(Submission(task=task_from_row(row), created=False))
        if any(isinstance(o, Submission) and o.created for o in out):
            self.bell.ring(QUEUE, CHANGES)
        return out

    def get_task(self, task_id: str) -> TaskInfo:
        with self.db.tx(write=False) as db:
            row = db.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(f"no task {task_id!r}")
        return task_from_row(row)

    def tasks_for_scan(self, scan_id: str) -> list[TaskInfo]:
        with self.db.tx(write=False) as db:
            rows = db.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE scan_id = ? ORDER BY created_at, rowid", (scan_id,)
            ).fetchall()
        return [task_from_row(r) for r in rows]

    def list_tasks(self, state: JobState | None = None, limit: int = 50) -> list[TaskInfo]:
        where, args = ("WHERE state = ?", [state.value]) if state else ("", [])
        with self.db.tx(write=False) as db:
            rows = db.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [task_from_row(r) for r in rows]

    def changes(self, cursor: str | None, limit: int = 500) -> ChangePage:
        after = _parse_cursor(cursor)
        with self.db.tx(write=False) as db:
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

    def cancel(self, task_id: str) -> TaskInfo:
        now = time.time()
        error = dump(asdict(TaskError.make("cancelled", "cancelled by the submitter before a worker took it")))
        with self.db.tx() as db:
            row = db.execute(
                f"UPDATE tasks SET state = 'stopped', finished_at = ?, error = ? WHERE id = ? AND state = 'queued'"
                f" RETURNING {TASK_COLUMNS}", (now, error, task_id)).fetchone()
            if row is not None:
                _record(db, task_id, JobState.stopped, row["attempt"], now)
            state = db.execute("SELECT state FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is not None:
            self.bell.ring(CHANGES)
            return task_from_row(row)
        if state is None:
            raise TaskNotFound(f"no task {task_id!r}")
        raise TaskNotCancellable(f"task {task_id} is {state['state']}: only a queued task can be cancelled")

    def retry(self, task_id: str) -> TaskInfo:
        now = time.time()
        with self.db.tx() as db:
            row = db.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                raise TaskNotFound(f"no task {task_id!r}")
            task = task_from_row(row)
            if task.state not in (JobState.failed, JobState.stopped):
                raise TaskNotRetryable(f"task {task_id} is {task.state.value}: only a failed or stopped task runs again")
            history = [*task.history, ended_run(task)]
            row = db.execute(
                f"UPDATE tasks SET state = 'queued', attempt_base = attempt, worker_id = NULL, lease_until = NULL,"
                f" queued_at = ?, started_at = NULL, finished_at = NULL, result = NULL, error = NULL, progress = NULL,"
                f" heartbeat_at = NULL, history = ? WHERE id = ? RETURNING {TASK_COLUMNS}",
                (now, dump(history), task_id)).fetchone()
            _record(db, task_id, JobState.queued, task.attempt, now)
        self.bell.ring(QUEUE, CHANGES)
        return task_from_row(row)

    def queue_stats(self, queue: str) -> QueueStats:
        now = time.time()
        with self.db.tx(write=False) as db:
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
        with self.db.tx(write=False) as db:
            rows = db.execute("SELECT queue FROM templates UNION SELECT DISTINCT queue FROM tasks").fetchall()
        return sorted(r[0] for r in rows)

    def workers(self, queue: str | None = None) -> list[WorkerInfo]:
        """Workers heard from within ``worker_expiry_s``; a silent one is gone, registered or not."""
        where, args = "WHERE last_seen >= ?", [time.time() - self.worker_expiry_s]
        if queue:
            where, args = f"{where} AND queue = ?", [*args, queue]
        with self.db.tx(write=False) as db:
            rows = db.execute(f"SELECT * FROM workers {where} ORDER BY id", args).fetchall()
        return [
            WorkerInfo(worker_id=r["id"], queue=r["queue"], task_id=r["task_id"], last_seen=r["last_seen"],
                       idle_since=r["idle_since"], draining=bool(r["draining"]))
            for r in rows
        ]

    def request_drain(self, worker_id: str) -> None:
        with self.db.tx() as db:
            db.execute("UPDATE workers SET draining = 1 WHERE id = ?", (worker_id,))

    # -- agent side ------------------------------------------------------------------------
    def register_worker(self, worker_id: str, queue: str) -> None:
        now = time.time()
        with self.db.tx() as db:
            db.execute(
                "INSERT INTO workers (id, queue, last_seen, idle_since) VALUES (?, ?, ?, ?)"
                # A worker registering again (an instance started from the warm pool) starts afresh.
                " ON CONFLICT (id) DO UPDATE SET queue = excluded.queue, last_seen = excluded.last_seen,"
                " idle_since = excluded.idle_since, task_id = NULL, draining = 0",
                (worker_id, queue, now, now),
            )

    def unregister_worker(self, worker_id: str) -> None:
        with self.db.tx() as db:
            db.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def claim(self, queue: str, worker_id: str, lease_s: float) -> TaskInfo | None:
        now = time.time()
        with self.db.tx() as db:
            reaped = self._reap(db, now)
            worker = db.execute("SELECT draining FROM workers WHERE id = ?", (worker_id,)).fetchone()
            if worker is not None and worker["draining"]:
                row = None
            else:
                row = db.execute(
                    f"UPDATE tasks SET state = 'running', attempt = attempt + 1, worker_id = ?, lease_until = ?,"
                    f" started_at = ?, heartbeat_at = ?, progress = 0 WHERE id = (SELECT id FROM tasks"
                    f" WHERE queue = ? AND state = 'queued' ORDER BY queued_at, rowid LIMIT 1)"
                    f" RETURNING {TASK_COLUMNS}",
                    (worker_id, now + lease_s, now, now, queue),
                ).fetchone()
            task = task_from_row(row) if row is not None else None
            if task is None:
                db.execute("UPDATE workers SET last_seen = ? WHERE id = ?", (now, worker_id))
            else:
                _record(db, task.task_id, JobState.running, task.attempt, now)
                db.execute(
                    "UPDATE workers SET task_id = ?, idle_since = NULL, last_seen = ? WHERE id = ?",
                    (task.task_id, now, worker_id),
                )
        if reaped:
            self.bell.ring(QUEUE, CHANGES)
        elif task is not None:
            self.bell.ring(CHANGES)
        return task

    def heartbeat(self, worker_id: str, task_id: str | None, lease_s: float, progress: float | None = None) -> bool:
        now = time.time()
        with self.db.tx() as db:
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
        with self.db.tx() as db:
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
        self.bell.ring(CHANGES)
        return task

    def hand_back(self, task_id: str, worker_id: str, reason: TaskError) -> TaskInfo:
        """Back to the front of its queue (``queued_at`` stays); ``attempt_base`` grows with the run, so
        the attempt limit does not count it; the worker holds no task and is draining."""
        now = time.time()
        with self.db.tx() as db:
            row = db.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ? AND worker_id = ? AND state = 'running'",
                             (task_id, worker_id)).fetchone()
            if row is None:
                raise LeaseLost(f"worker {worker_id} no longer holds task {task_id}")
            task = task_from_row(row)
            run = {"attempt": task.attempt, "state": JobState.stopped.value, "error": asdict(reason),
                   "finished_at": iso(now)}
            row = db.execute(
                f"UPDATE tasks SET state = 'queued', attempt_base = attempt_base + 1, worker_id = NULL,"
                f" lease_until = NULL, started_at = NULL, progress = NULL, heartbeat_at = NULL, history = ?"
                f" WHERE id = ? RETURNING {TASK_COLUMNS}", (dump([*task.history, run]), task_id)).fetchone()
            _record(db, task_id, JobState.queued, task.attempt, now)
            db.execute("UPDATE workers SET task_id = NULL, idle_since = ?, last_seen = ?, draining = 1 WHERE id = ?",
                       (now, now, worker_id))
        self.bell.ring(QUEUE, CHANGES)
        return task_from_row(row)

    def reap_expired(self) -> list[TaskInfo]:
        """Re-queue or fail tasks whose lease ran out, and drop the registrations of silent workers."""
        with self.db.tx() as db:
            now = time.time()
            gone = db.execute("DELETE FROM workers WHERE last_seen < ? RETURNING id", (now - self.worker_expiry_s,))
            for row in gone.fetchall():
                log.warning("worker_expired worker=%s silent_s>%.0f", row["id"], self.worker_expiry_s)
            reaped = self._reap(db, now)
        if reaped:
            self.bell.ring(QUEUE, CHANGES)
        return reaped

    def _reap(self, db: sqlite3.Connection, now: float) -> list[TaskInfo]:
        """Inside a write transaction: re-queue (or fail) tasks whose lease ran out."""
        expired = db.execute(
            f"SELECT {TASK_COLUMNS}, max_attempts AS task_max_attempts, attempt_base FROM tasks"
            " WHERE state = 'running' AND lease_until < ?", (now,)
        ).fetchall()
        changed = []
        for row in expired:
            task = task_from_row(row)
            limit = row["task_max_attempts"] or self.max_attempts
            if task.attempt - row["attempt_base"] < limit:  # runs since the last retry
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
                    f"{limit}); the task was not retried again",
                )
                new = db.execute(
                    f"UPDATE tasks SET state = 'failed', lease_until = NULL, finished_at = ?, error = ?"
                    f" WHERE id = ? RETURNING {TASK_COLUMNS}", (now, dump(asdict(err)), task.task_id)
                ).fetchone()
                _record(db, task.task_id, JobState.failed, task.attempt, now)
            db.execute("UPDATE workers SET task_id = NULL WHERE id = ? AND task_id = ?", (task.worker_id, task.task_id))
            changed.append(task_from_row(new))
        return changed


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
