"""Input the Lambda refused, kept for the monitor to announce (``scan.rejected``).

The Lambda consumes bad input once (a retry would be refused the same way) and, where it can reach
the control plane (``SCANTIDE_CONTROL_PLANE_URL``), reports each refusal to ``POST /v1/rejections``;
the API keeps it here, in ``<state_dir>/rejections.db``, once per ``ref`` (a redelivered record is
not a second rejection), and the monitor follows the rows by their sequence, as it follows task
changes, and sends each as a signed ``scan.rejected`` event.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service.backends.embedded_db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS rejections (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ref TEXT NOT NULL UNIQUE, source TEXT NOT NULL, scan_id TEXT,
    scan_uri TEXT, code TEXT NOT NULL, message TEXT NOT NULL, at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Rejection:
    ref: str  # what was refused, stable across redeliveries: s3://bucket/key@etag, sqs:<message id>
    source: str  # s3 | sqs
    code: str
    message: str
    scan_id: str | None = None
    scan_uri: str | None = None
    at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RejectionStore:
    def __init__(self, path: str | Path) -> None:
        self.db = Database(path, schema=SCHEMA, version=1, migrations={})

    def record(self, rejection: Rejection) -> bool:
        """Keep ``rejection``; False when its ``ref`` was reported already."""
        with self.db.tx() as db:
            cur = db.execute("INSERT INTO rejections (ref, source, scan_id, scan_uri, code, message, at)"
                             " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (ref) DO NOTHING",
                             (rejection.ref, rejection.source, rejection.scan_id, rejection.scan_uri, rejection.code,
                              rejection.message, rejection.at or time.time()))
        return cur.rowcount == 1

    def since(self, cursor: int, limit: int = 500) -> tuple[list[Rejection], int]:
        """Rejections kept after ``cursor`` (a sequence number), oldest first, and the cursor after them."""
        with self.db.tx(write=False) as db:
            rows = db.execute("SELECT * FROM rejections WHERE seq > ? ORDER BY seq LIMIT ?", (cursor, limit)).fetchall()
        found = [Rejection(ref=r["ref"], source=r["source"], code=r["code"], message=r["message"],
                           scan_id=r["scan_id"], scan_uri=r["scan_uri"], at=r["at"]) for r in rows]
        return found, (rows[-1]["seq"] if rows else cursor)

    def close(self) -> None:
        self.db.close()
