"""A worker's cache of fetched inputs: each remote input is downloaded once per machine.

Pipelines run several steps on one scan, each a task that fetches the same scan and its upstream
outputs; the second fetch is a hit. Layout under ``root``:

- ``blobs/<sha256>``: the files, named by the sha256 of their bytes (computed when written), mode
  0444. A blob is never handed to a task to keep: the caller copies it into the task's own folder.
- ``index.db``: SQLite in WAL mode, shared by the worker processes of one machine. ``sources``
  maps a source key (what the caller knows the input by: a URI and its version) to a blob;
  ``blobs`` holds each blob's size and when it was last used; ``counters`` the hits, misses and
  evictions that ``scantide status`` shows (``stats``).
- ``tmp/``: downloads in progress, moved into ``blobs/`` when whole.

Every change is one ``BEGIN IMMEDIATE`` transaction, and a blob enters or leaves ``blobs/`` only
inside one, so the files and the index agree whatever the processes do at once. Two workers
missing the same key both download it; the second to finish replaces the first's blob with the
same bytes (last writer wins). ``last_used`` is a logical clock (the cache's use count), not a
time, so least-recently-used order is exact however close together two uses come.

A blob is checked by its size when used, not rehashed (hashing gigabytes per use would cost more
than the download it saves): a blob shrunk, grown or removed behind the cache is dropped and
fetched anew. Its name is the sha256 its bytes had when it was written.

The cache holds at most ``max_bytes``: after each new blob the least recently used others go
first. An input larger than ``max_bytes`` on its own is not kept: ``get`` returns the download
itself, a file in ``tmp/`` that the caller owns (``holds(path)`` is False) and must move or delete.

Standard library only, so that ``scantide status`` can read the counters without the worker's
dependencies.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path

from service.backends.embedded_db import transaction

log = logging.getLogger(__name__)

INDEX = "index.db"
COUNTERS = ("hits", "misses", "evictions")
_SCHEMA_VERSION = 1
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS blobs (sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, last_used INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS blobs_by_use ON blobs (last_used)",
    "CREATE TABLE IF NOT EXISTS sources (key TEXT PRIMARY KEY, sha256 TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS sources_by_blob ON sources (sha256)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)
_BUSY_TIMEOUT_S = 30.0
_STALE_TMP_S = 24 * 3600.0  # a download this old was left by a killed worker


class InputCacheError(Exception):
    """The cache itself failed (its index or its folder); the caller can still fetch uncached."""


class InputCache:
    """Content-addressed files under ``root``, at most ``max_bytes`` (bytes) of them."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive (a cap of 0 means: no cache, so build none)")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self._ready = False

    def get(self, key: str, fetch: Callable[[Path], int]) -> Path:
        """The file cached for ``key``, fetched on a miss by ``fetch(path)`` (which writes the input to
        ``path`` and returns its size, bytes).

        Returns a blob, read-only and shared: copy it, never move or change it. An input over
        ``max_bytes`` comes back uncached, as a file of the caller's own (``holds`` tells which).
        Errors raised by ``fetch`` pass through unchanged; the cache's own are ``InputCacheError``.
        """
        with _cache_errors(self.root):
            self._open()
            found = self._hit(key)
        if found is not None:
            return found
        with _cache_errors(self.root):
            self._sweep_tmp()
            dest = self.tmp / f"{os.getpid()}-{uuid.uuid4().hex}"
        try:
            fetch(dest)
            with _cache_errors(self.root):
                return self._keep(key, dest)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    def holds(self, path: Path) -> bool:
        """Whether ``path`` is one of the cache's blobs (shared), not a download the caller owns."""
        return path.parent == self.blobs

    # -- the two paths ---------------------------------------------------------------------------
    def _hit(self, key: str) -> Path | None:
        with self._write() as db:
            row = db.execute("SELECT b.sha256, b.size FROM sources s JOIN blobs b ON b.sha256 = s.sha256 "
                             "WHERE s.key = ?", (key,)).fetchone()
            if row is None:
                return None
            sha, size = row
            path = self.blobs / sha
            try:
                intact = path.stat().st_size == size
            except FileNotFoundError:
                intact = False
            if not intact:
                # Changed or removed behind the index: forget it, and this lookup is a miss.
                log.warning("input_cache_blob_damaged sha256=%s expected_bytes=%d", sha, size)
                self._drop(db, sha)
                return None
            db.execute("UPDATE blobs SET last_used = ? WHERE sha256 = ?", (self._tick(db), sha))
            _count(db, "hits")
        log.info("input_cache_hit sha256=%s bytes=%d", sha, size)
        return path

    def _keep(self, key: str, download: Path) -> Path:
        size = download.stat().st_size  # the file, not fetch's word for it
        with open(download, "rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        if size > self.max_bytes:
            with self._write() as db:
                _count(db, "misses")
            log.info("input_cache_too_large sha256=%s bytes=%d max_bytes=%d", sha, size, self.max_bytes)
            return download
        download.chmod(0o444)
        blob = self.blobs / sha
        with self._write() as db:
            db.execute("INSERT INTO blobs (sha256, size, last_used) VALUES (?, ?, ?) ON CONFLICT (sha256) "
                       "DO UPDATE SET size = excluded.size, last_used = excluded.last_used",
                       (sha, size, self._tick(db)))
            db.execute("INSERT INTO sources (key, sha256) VALUES (?, ?) ON CONFLICT (key) "
                       "DO UPDATE SET sha256 = excluded.sha256", (key, sha))
            _count(db, "misses")
            evicted = self._evict(db, keep=sha)
            os.replace(download, blob)  # last, so a failure before it leaves nothing recorded
        log.info("input_cache_miss sha256=%s bytes=%d evicted=%d", sha, size, evicted)
        return blob

    def _evict(self, db: sqlite3.Connection, keep: str) -> int:
        """Drop the least recently used blobs (never ``keep``) until the total is within the cap."""
        total = db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0]
        evicted = 0
        if total <= self.max_bytes:
            return evicted
        for sha, size in db.execute("SELECT sha256, size FROM blobs WHERE sha256 != ? ORDER BY last_used",
                                    (keep,)).fetchall():
            if total <= self.max_bytes:
                break
            self._drop(db, sha)
            total -= size
            evicted += 1
        if evicted:
            _count(db, "evictions", evicted)
        return evicted

    def _drop(self, db: sqlite3.Connection, sha: str) -> None:
        db.execute("DELETE FROM sources WHERE sha256 = ?", (sha,))
        db.execute("DELETE FROM blobs WHERE sha256 = ?", (sha,))
        # A worker copying it now keeps reading (the file lives while open); one about to open it
        # finds it gone and asks again.
        (self.blobs / sha).unlink(missing_ok=True)

    def _tick(self, db: sqlite3.Connection) -> int:
        """The next value of the cache's use clock."""
        return int(_count(db, "clock"))

    # -- files and the index ---------------------------------------------------------------------
    def _open(self) -> None:
        if self._ready:
            return
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        with self._write() as db:
            if db.execute("PRAGMA user_version").fetchone()[0] < _SCHEMA_VERSION:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        self._ready = True

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the lock up front, so readers of a row never race
        its writers. A connection per transaction: a task makes a handful."""
        with closing(sqlite3.connect(self.root / INDEX, timeout=_BUSY_TIMEOUT_S, isolation_level=None)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            with transaction(db, nullcontext()):
                yield db

    def _sweep_tmp(self) -> None:
        """Remove downloads left behind by killed workers."""
        cutoff = time.time() - _STALE_TMP_S
        for entry in os.scandir(self.tmp):
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass  # another worker swept it first


def stats(root: Path) -> dict[str, int]:
    """The cache's counters (``hits``, ``misses``, ``evictions``) and what it holds (``bytes``,
    ``blobs``); all 0 where there is no cache yet. Read-only: creates nothing. Raises
    ``InputCacheError`` when the index cannot be read."""
    out = dict.fromkeys((*COUNTERS, "bytes", "blobs"), 0)
    index = Path(root) / INDEX
    if not index.is_file():
        return out
    with _cache_errors(Path(root)):
        uri = f"{index.resolve().as_uri()}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_S)) as db:
            if db.execute("PRAGMA user_version").fetchone()[0] < _SCHEMA_VERSION:
                return out  # created, not yet set up
            for name, value in db.execute("SELECT name, value FROM counters"):
                if name in out:
                    out[name] = int(value)
            out["bytes"], out["blobs"] = db.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM blobs").fetchone()
    return out


def _count(db: sqlite3.Connection, name: str, by: int = 1) -> int:
    """Add ``by`` to counter ``name``; its new value."""
    return db.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) "
                      "DO UPDATE SET value = value + excluded.value RETURNING value", (name, by)).fetchall()[0][0]


@contextmanager
def _cache_errors(root: Path) -> Iterator[None]:
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise InputCacheError(f"input cache {root}: {exc}") from exc
