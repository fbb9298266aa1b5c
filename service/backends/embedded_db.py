"""The embedded store's SQLite file: one connection per thread, short transactions, the schema.

WAL with ``synchronous=FULL``: a committed write survives a crash. Writes are ``BEGIN
IMMEDIATE``, so the write lock is taken up front; threads of one process queue on a Python lock
rather than in SQLite's busy handler, which sleeps in 1-100 ms steps and would dominate tail
latency, while other processes still meet the file lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from service.backends.embedded_schema import (
    MIGRATIONS,
    SCHEMA,
    SCHEMA_VERSION,
    statements,
)
from service.errors import BackendUnavailable, ConfigError

_NO_LOCK = nullcontext()


@contextmanager
def transaction(db: sqlite3.Connection, lock: AbstractContextManager[object], begin: str = "BEGIN IMMEDIATE",
                ) -> Iterator[sqlite3.Connection]:
    """One transaction on ``db`` (autocommit mode) under ``lock``: committed when the block
    ends, rolled back when it raises. IMMEDIATE takes the write lock up front."""
    with lock:
        db.execute(begin)
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


class Database:
    """A SQLite file shared by threads and processes; created or upgraded on open."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0, *, schema: str = SCHEMA,
                 version: int = SCHEMA_VERSION, migrations: dict[int, list[str]] | None = None) -> None:
        """schema, version, migrations: the newest schema in full, its number, and the statements
        that upgrade each older number (default: the task store's)."""
        self.path = Path(path)
        self._schema, self._version = schema, version
        self._migrations = MIGRATIONS if migrations is None else migrations
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    def conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
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
    def tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction; IMMEDIATE for writes so the write lock is taken up front."""
        try:
            with transaction(self.conn(), self._write_lock if write else _NO_LOCK,
                             "BEGIN IMMEDIATE" if write else "BEGIN") as db:
                yield db
        except sqlite3.OperationalError as exc:
            raise BackendUnavailable(f"task store {self.path} is unavailable: {exc}") from exc

    def _migrate(self) -> None:
        """Create the schema, or upgrade an older store, in one transaction."""
        with self.tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > self._version:
                raise ConfigError(f"store {self.path} has schema version {version}, newer than this "
                                  f"scantide's {self._version}: upgrade scantide")
            if version == 0:
                for statement in statements(self._schema):
                    db.execute(statement)
            else:
                for v in range(version + 1, self._version + 1):
                    for statement in self._migrations[v]:
                        db.execute(statement)
            db.execute(f"PRAGMA user_version = {self._version}")

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()
