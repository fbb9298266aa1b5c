"""Pipeline versions and runs, in one SQLite file beside the control plane (``<state_dir>/pipelines.db``).

A pipeline version is immutable like an algorithm version: ``(name, version)`` names one
descriptor forever. A run is one scan through one pipeline version, unique per (pipeline, scan_id),
with the state of each step. Every write of a run gives it the next ``seq``, a sequence over the
whole file, so the conductor follows changed runs from a cursor as it follows task changes; and
``save_run`` writes only over the ``seq`` it read, so the conductor and a retry never overwrite
each other's change unseen.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from service.backends.embedded_db import Database
from service.catalog.pipeline import PipelineDescriptor, parse_pipeline
from service.domain import iso

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS pipelines (
    name TEXT NOT NULL, version TEXT NOT NULL, sha256 TEXT NOT NULL, descriptor TEXT NOT NULL,
    registered_at REAL NOT NULL, registered_by TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, version TEXT NOT NULL, scan_id TEXT NOT NULL,
    state TEXT NOT NULL, seq INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_key ON runs (pipeline, scan_id);
CREATE UNIQUE INDEX IF NOT EXISTS runs_seq ON runs (seq);
CREATE INDEX IF NOT EXISTS runs_active ON runs (state) WHERE state IN ('queued', 'running');
"""
RUN_STATES = ("queued", "running", "completed", "failed")
STEP_STATES = ("pending", "queued", "running", "completed", "failed", "skipped")
ENDED = frozenset({"completed", "failed", "skipped"})


@dataclass(frozen=True)
class PipelineVersion:
    name: str
    version: str
    sha256: str  # of the canonical descriptor JSON
    descriptor: dict[str, Any] = field(hash=False)  # PipelineDescriptor.to_dict()
    registered_at: float = 0.0
    registered_by: str = ""

    @cached_property
    def spec(self) -> PipelineDescriptor:
        return parse_pipeline(self.descriptor, f"{self.name} {self.version}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "registered_at": iso(self.registered_at)}


@dataclass
class StepRun:
    """One step of a run. ``attempt``: how many times it was submitted (a retry submits it anew);
    ``bytes_moved``: input bytes copied between compute targets for it."""

    algorithm: str
    version: str  # pinned when the run was created
    compute: str
    state: str = "pending"
    task_id: str | None = None
    attempt: int = 0
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    bytes_moved: int = 0


@dataclass
class Run:
    run_id: str
    pipeline: str
    version: str
    scan_id: str
    scan_uri: str
    metadata: dict[str, Any]
    steps: dict[str, StepRun]
    state: str = "queued"
    error: dict[str, Any] | None = None  # {step, code, message, log_tail} of a failed run
    retries: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    seq: int = 0
    request_id: str | None = None  # the request that started it: its steps' tasks keep it (service.logs)

    @property
    def ended(self) -> bool:
        return self.state in ("completed", "failed")

    def body(self) -> str:
        d = asdict(self)
        for key in ("run_id", "pipeline", "version", "scan_id", "state", "seq", "created_at", "updated_at"):
            d.pop(key)
        return json.dumps(d, sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        """The API's view (``GET /v1/runs/{run_id}``)."""
        return {"run_id": self.run_id, "pipeline": self.pipeline, "version": self.version, "scan_id": self.scan_id,
                "scan_uri": self.scan_uri, "state": self.state, "error": self.error, "retries": self.retries,
                "metadata": self.metadata, "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
                "steps": {name: asdict(s) for name, s in self.steps.items()}}


def _run(row: sqlite3.Row) -> Run:
    body = json.loads(row["body"])
    steps = {name: StepRun(**s) for name, s in body.pop("steps").items()}
    return Run(run_id=row["run_id"], pipeline=row["pipeline"], version=row["version"], scan_id=row["scan_id"],
               state=row["state"], seq=row["seq"], created_at=row["created_at"], updated_at=row["updated_at"],
               steps=steps, **body)


def _pipeline(row: sqlite3.Row) -> PipelineVersion:
    return PipelineVersion(name=row["name"], version=row["version"], sha256=row["sha256"],
                           descriptor=json.loads(row["descriptor"]), registered_at=row["registered_at"],
                           registered_by=row["registered_by"])


def new_run_id() -> str:
    return f"run_{uuid.uuid4().hex[:20]}"


class PipelineStore:
    def __init__(self, path: str | Path) -> None:
        self.db = Database(path, schema=SCHEMA, version=SCHEMA_VERSION, migrations={})

    def close(self) -> None:
        self.db.close()

    # -- pipelines -------------------------------------------------------------------------
    def register(self, v: PipelineVersion) -> tuple[PipelineVersion, bool]:
        """Record a version; the stored one and whether it is new (a taken version is returned as it
        is: the caller compares sha256)."""
        with self.db.tx() as db:
            cur = db.execute("INSERT INTO pipelines VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                             (v.name, v.version, v.sha256, json.dumps(v.descriptor), v.registered_at,
                              v.registered_by))
            row = db.execute("SELECT * FROM pipelines WHERE name = ? AND version = ?", (v.name, v.version)).fetchone()
        return _pipeline(row), cur.rowcount == 1

    def get(self, name: str, version: str) -> PipelineVersion | None:
        with self.db.tx(write=False) as db:
            row = db.execute("SELECT * FROM pipelines WHERE name = ? AND version = ?", (name, version)).fetchone()
        return _pipeline(row) if row else None

    def latest(self, name: str) -> PipelineVersion | None:
        with self.db.tx(write=False) as db:
            row = db.execute("SELECT * FROM pipelines WHERE name = ? ORDER BY registered_at DESC, rowid DESC LIMIT 1",
                             (name,)).fetchone()
        return _pipeline(row) if row else None

    def listing(self, name: str | None = None) -> list[PipelineVersion]:
        where, args = ("WHERE name = ?", (name,)) if name else ("", ())
        with self.db.tx(write=False) as db:
            rows = db.execute(f"SELECT * FROM pipelines {where} ORDER BY name, registered_at, rowid", args)
            return [_pipeline(r) for r in rows]

    # -- runs ------------------------------------------------------------------------------
    def create_run(self, run: Run) -> tuple[Run, bool]:
        """Insert ``run``, or return the run already made for its (pipeline, scan_id) and False."""
        now = time.time()
        with self.db.tx() as db:
            row = db.execute("SELECT * FROM runs WHERE pipeline = ? AND scan_id = ?",
                             (run.pipeline, run.scan_id)).fetchone()
            if row is not None:
                return _run(row), False
            run = replace(run, created_at=now, updated_at=now, seq=self._next_seq(db))
            db.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (run.run_id, run.pipeline, run.version, run.scan_id, run.state, run.seq, run.created_at,
                        run.updated_at, run.body()))
        return run, True

    def save_run(self, run: Run) -> Run | None:
        """Write ``run`` over the version it was read at (``run.seq``); the run as saved, or None when
        another writer changed it since (read it again and redo the change)."""
        with self.db.tx() as db:
            seq, now = self._next_seq(db), time.time()
            cur = db.execute("UPDATE runs SET state = ?, seq = ?, updated_at = ?, body = ? WHERE run_id = ? AND seq = ?",
                             (run.state, seq, now, run.body(), run.run_id, run.seq))
        return replace(run, seq=seq, updated_at=now) if cur.rowcount == 1 else None

    @staticmethod
    def _next_seq(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM runs").fetchone()[0])

    def find_run(self, pipeline: str, scan_id: str) -> Run | None:
        """The run of ``pipeline`` on ``scan_id``, or None."""
        with self.db.tx(write=False) as db:
            row = db.execute("SELECT * FROM runs WHERE pipeline = ? AND scan_id = ?", (pipeline, scan_id)).fetchone()
        return _run(row) if row else None

    def get_run(self, run_id: str) -> Run | None:
        with self.db.tx(write=False) as db:
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _run(row) if row else None

    def runs_for_scan(self, scan_id: str) -> list[Run]:
        with self.db.tx(write=False) as db:
            return [_run(r) for r in db.execute("SELECT * FROM runs WHERE scan_id = ? ORDER BY created_at",
                                                (scan_id,))]

    def list_runs(self, state: str | None = None, limit: int = 50) -> list[Run]:
        """Most recently created first, optionally of one state."""
        where, args = ("WHERE state = ?", (state,)) if state else ("", ())
        with self.db.tx(write=False) as db:
            rows = db.execute(f"SELECT * FROM runs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
                              (*args, limit))
            return [_run(r) for r in rows]

    def active_run_ids(self) -> list[str]:
        with self.db.tx(write=False) as db:
            return [r[0] for r in db.execute("SELECT run_id FROM runs WHERE state IN ('queued', 'running')")]

    def changed_since(self, cursor: int, limit: int = 500) -> tuple[list[str], int]:
        """Ids of runs written after ``cursor`` (a ``seq``), oldest first, and the cursor to go on from."""
        with self.db.tx(write=False) as db:
            rows = db.execute("SELECT run_id, seq FROM runs WHERE seq > ? ORDER BY seq LIMIT ?",
                              (cursor, limit)).fetchall()
        return [r["run_id"] for r in rows], (rows[-1]["seq"] if rows else cursor)
