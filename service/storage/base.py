"""The ``Storage`` interface: where scans are read from and outputs are written to.

Implementations: ``LocalStorage`` (paths and ``file://``), ``S3Storage`` (``s3://``) and the
read-only ``HttpsSource`` (``https://`` scans). ``service.storage.storage_for`` picks one by scheme.
URIs are trusted here: scan URIs were validated when the scan was enqueued (``service.scan_uri``),
and output URIs are built by ``service.enqueue``.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from pathlib import Path

from service.errors import BackendUnavailable, InvalidRequest, NotFound, ScantideError


class StorageError(ScantideError):
    """A storage operation failed for a reason retrying will not fix (access denied, bad URI)."""

    code = "storage_error"
    status = 502


class StorageUnavailable(BackendUnavailable):
    """The store cannot be reached right now (connection, throttling, 5xx); retry later."""

    code = "storage_unavailable"


class ObjectNotFound(NotFound):
    code = "object_not_found"


class ObjectTooLarge(InvalidRequest):
    code = "scan_too_large"
    status = 413


class Storage(ABC):
    """One kind of place that holds files, addressed by URI."""

    @abstractmethod
    def fetch(self, uri: str, dest: Path, *, max_bytes: int) -> int:
        """Copy the object at ``uri`` to the local file ``dest`` and return its size in bytes.

        max_bytes: the largest object accepted, bytes. Raises ``ObjectTooLarge`` (``dest`` is then
        absent), ``ObjectNotFound``, ``StorageUnavailable`` or ``StorageError``.
        """

    @abstractmethod
    def put_file(self, local: Path, uri: str) -> None:
        """Store the local file ``local`` at ``uri``, replacing what is there."""

    def put_dir(self, local_dir: Path, uri: str) -> list[str]:
        """Store every file under ``local_dir`` at ``<uri>/<relative path>``; returns the URIs written,
        in sorted order of their relative paths."""
        prefix = uri.rstrip("/")
        written = []
        for rel in files_under(local_dir):
            target = f"{prefix}/{rel}"
            self.put_file(local_dir / rel, target)
            written.append(target)
        return written

    @abstractmethod
    def exists(self, uri: str) -> bool:
        """Whether an object is stored at ``uri``."""

    @abstractmethod
    def link(self, uri: str, ttl_s: int) -> str:
        """A URL the platform can GET the object at ``uri`` with, valid for about ``ttl_s`` seconds
        (local storage: a ``file://`` URL, valid as long as the file is)."""


def files_under(root: Path) -> list[str]:
    """Every regular file under ``root``, as sorted POSIX paths relative to it. Symbolic links are
    left out, and linked folders not entered: what an algorithm links to is not its output (a link to
    a file of the machine's would otherwise be uploaded and passed to the next step)."""
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                out.append(path.relative_to(root).as_posix())
    return sorted(out)


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def partial_path(dest: Path) -> Path:
    """Where a download is written before it is complete and renamed to ``dest``."""
    return dest.with_name(f".{dest.name}.partial")
