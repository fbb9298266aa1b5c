"""The embedded store's algorithm registry: the ``algorithms`` table (schema v4).

A registration inserts the version and makes it the algorithm's template (the queue and time
limit its tasks get) in one transaction; the primary key ``(name, version)`` keeps versions
immutable even when two processes register at once.
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING

from service.algorithms import AlgorithmVersion

if TYPE_CHECKING:
    from service.backends.embedded_db import Database

COLUMNS = "name, version, sha256, size, uri, queue, descriptor, registered_at, registered_by"


def version_from_row(row: sqlite3.Row) -> AlgorithmVersion:
    return AlgorithmVersion(name=row["name"], version=row["version"], sha256=row["sha256"], size=row["size"],
                            uri=row["uri"], queue=row["queue"], descriptor=json.loads(row["descriptor"]),
                            registered_at=row["registered_at"], registered_by=row["registered_by"])


class EmbeddedAlgorithms:
    """The registry over the store's database, one transaction per call."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def register(self, v: AlgorithmVersion) -> tuple[AlgorithmVersion, bool]:
        with self.db.tx() as db:
            row = db.execute(
                f"INSERT INTO algorithms ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
                f" RETURNING {COLUMNS}",
                (v.name, v.version, v.sha256, v.size, v.uri, v.queue, json.dumps(v.descriptor), v.registered_at,
                 v.registered_by),
            ).fetchone()
            if row is None:  # taken: the caller compares contents
                row = db.execute(f"SELECT {COLUMNS} FROM algorithms WHERE name = ? AND version = ?",
                                 (v.name, v.version)).fetchone()
                return version_from_row(row), False
            t = v.template()
            db.execute("INSERT OR REPLACE INTO templates VALUES (?, ?, ?, ?, ?)",
                       (t.name, t.entry_point, t.queue, json.dumps(t.params), t.max_runtime_s))
            return version_from_row(row), True

    def get(self, name: str, version: str) -> AlgorithmVersion | None:
        with self.db.tx(write=False) as db:
            row = db.execute(f"SELECT {COLUMNS} FROM algorithms WHERE name = ? AND version = ?",
                             (name, version)).fetchone()
        return version_from_row(row) if row else None

    def latest(self, name: str) -> AlgorithmVersion | None:
        with self.db.tx(write=False) as db:
            row = db.execute(f"SELECT {COLUMNS} FROM algorithms WHERE name = ? ORDER BY registered_at DESC,"
                             " rowid DESC LIMIT 1", (name,)).fetchone()
        return version_from_row(row) if row else None

    def listing(self, name: str | None = None) -> list[AlgorithmVersion]:
        where, args = ("WHERE name = ?", (name,)) if name else ("", ())
        with self.db.tx(write=False) as db:
            rows = db.execute(f"SELECT {COLUMNS} FROM algorithms {where} ORDER BY name, registered_at, rowid", args)
            return [version_from_row(r) for r in rows]
