"""The embedded store's model registry: the ``models`` and ``model_audit`` tables (schema v3).

Each function runs inside the caller's transaction, so a promote or rollback changes the
promoted version and appends its audit entry atomically; a partial unique index keeps at most
one promoted version per algorithm.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import TYPE_CHECKING

from service.errors import ModelVersionExists, ModelVersionNotFound
from service.models import AuditEntry, ModelVersion, rollback_target

if TYPE_CHECKING:
    from service.backends.embedded_db import Database

MODEL_COLUMNS = "algorithm, version, uri, sha256, size, notes, registered_at, registered_by, promoted"


def model_from_row(row: sqlite3.Row) -> ModelVersion:
    return ModelVersion(algorithm=row["algorithm"], version=row["version"], uri=row["uri"], sha256=row["sha256"],
                        size=row["size"], notes=row["notes"], registered_at=row["registered_at"],
                        registered_by=row["registered_by"], promoted=bool(row["promoted"]))


def audit_from_row(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(algorithm=row["algorithm"], action=row["action"], from_version=row["from_version"],
                      to_version=row["to_version"], by=row["by"], at=row["at"])


def register(db: sqlite3.Connection, model: ModelVersion) -> ModelVersion:
    row = db.execute(
        f"INSERT INTO models ({MODEL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT DO NOTHING"
        f" RETURNING {MODEL_COLUMNS}",
        (model.algorithm, model.version, model.uri, model.sha256, model.size, model.notes, model.registered_at,
         model.registered_by),
    ).fetchone()
    if row is None:
        raise ModelVersionExists(f"version {model.version!r} of {model.algorithm!r} is already registered; "
                                 "versions are immutable: register under a new version")
    _audit(db, AuditEntry(model.algorithm, "register", None, model.version, model.registered_by,
                          model.registered_at))
    return model_from_row(row)


def get(db: sqlite3.Connection, algorithm: str, version: str) -> ModelVersion | None:
    row = db.execute(f"SELECT {MODEL_COLUMNS} FROM models WHERE algorithm = ? AND version = ?",
                     (algorithm, version)).fetchone()
    return model_from_row(row) if row else None


def listing(db: sqlite3.Connection, algorithm: str | None) -> list[ModelVersion]:
    where, args = ("WHERE algorithm = ?", (algorithm,)) if algorithm else ("", ())
    rows = db.execute(f"SELECT {MODEL_COLUMNS} FROM models {where} ORDER BY algorithm, registered_at, rowid", args)
    return [model_from_row(r) for r in rows]


def promoted(db: sqlite3.Connection, algorithm: str) -> ModelVersion | None:
    row = db.execute(f"SELECT {MODEL_COLUMNS} FROM models WHERE algorithm = ? AND promoted = 1",
                     (algorithm,)).fetchone()
    return model_from_row(row) if row else None


def history(db: sqlite3.Connection, algorithm: str | None) -> list[AuditEntry]:
    where, args = ("WHERE algorithm = ?", (algorithm,)) if algorithm else ("", ())
    return [audit_from_row(r) for r in db.execute(f"SELECT * FROM model_audit {where} ORDER BY seq", args)]


def promote(db: sqlite3.Connection, algorithm: str, version: str, by: str, action: str = "promote") -> AuditEntry | None:
    target = get(db, algorithm, version)
    if target is None:
        known = ", ".join(m.version for m in listing(db, algorithm)) or "none"
        raise ModelVersionNotFound(f"no version {version!r} of {algorithm!r} is registered; registered: {known}")
    current = promoted(db, algorithm)
    if current is not None and current.version == version:
        return None
    db.execute("UPDATE models SET promoted = 0 WHERE algorithm = ? AND promoted = 1", (algorithm,))
    db.execute("UPDATE models SET promoted = 1 WHERE algorithm = ? AND version = ?", (algorithm, version))
    entry = AuditEntry(algorithm, action, current.version if current else None, version, by, time.time())
    _audit(db, entry)
    return entry


def rollback(db: sqlite3.Connection, algorithm: str, by: str) -> AuditEntry:
    _, previous = rollback_target(algorithm, history(db, algorithm))
    entry = promote(db, algorithm, previous, by, action="rollback")
    assert entry is not None  # the stack's last two entries always differ
    return entry


def _audit(db: sqlite3.Connection, e: AuditEntry) -> None:
    db.execute("INSERT INTO model_audit (algorithm, action, from_version, to_version, by, at) VALUES (?, ?, ?, ?, ?, ?)",
               (e.algorithm, e.action, e.from_version, e.to_version, e.by, e.at))


class EmbeddedModels:
    """The registry over the store's database, one transaction per call."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._writes = 0  # promotes and rollbacks through this object (promoted()'s cache key)
        self._local = threading.local()

    def register(self, model: ModelVersion) -> ModelVersion:
        with self.db.tx() as db:
            return register(db, model)

    def get(self, algorithm: str, version: str) -> ModelVersion | None:
        with self.db.tx(write=False) as db:
            return get(db, algorithm, version)

    def listing(self, algorithm: str | None = None) -> list[ModelVersion]:
        with self.db.tx(write=False) as db:
            return listing(db, algorithm)

    def promoted(self, algorithm: str) -> ModelVersion | None:
        """Cached per connection, and exact: the cache holds only while ``PRAGMA data_version``
        (which changes when another connection, in any process, commits) and this object's own
        promotes and rollbacks (which do not change it for the connection that made them) stand
        still. Enqueue asks once per batch; a hit costs one pragma instead of a read transaction."""
        key = (self.db.conn().execute("PRAGMA data_version").fetchone()[0], self._writes)
        cache = self._local.__dict__.setdefault("promoted", {})
        hit = cache.get(algorithm)
        if hit is not None and hit[0] == key:
            return hit[1]
        with self.db.tx(write=False) as db:
            model = promoted(db, algorithm)
        cache[algorithm] = (key, model)
        return model

    def promote(self, algorithm: str, version: str, by: str) -> AuditEntry | None:
        try:
            with self.db.tx() as db:
                return promote(db, algorithm, version, by)
        finally:
            self._writes += 1

    def rollback(self, algorithm: str, by: str) -> AuditEntry:
        try:
            with self.db.tx() as db:
                return rollback(db, algorithm, by)
        finally:
            self._writes += 1

    def history(self, algorithm: str | None = None) -> list[AuditEntry]:
        with self.db.tx(write=False) as db:
            return history(db, algorithm)
