"""The embedded store's model registry: the ``models`` and ``model_audit`` tables (schema v3).

Each function runs inside the caller's transaction, so a promote or rollback changes the
promoted version and appends its audit entry atomically; a partial unique index keeps at most
one promoted version per algorithm.
"""

from __future__ import annotations

import sqlite3
import time

from service.errors import ModelVersionExists, ModelVersionNotFound
from service.models import AuditEntry, ModelVersion, rollback_target

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
