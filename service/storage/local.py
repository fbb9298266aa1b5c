"""Local files: plain paths and ``file://`` URIs (embedded mode, one machine)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

from service.storage.base import ObjectNotFound, ObjectTooLarge, Storage, StorageError, partial_path

_CHUNK = 1024 * 1024


def local_path(uri: str) -> Path:
    """The path behind a plain path or a ``file://`` URI (no host, percent-escapes decoded)."""
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"file:// URIs must not name a host, got {parts.netloc!r}")
        return Path(unquote(parts.path))
    if "://" in uri:
        raise StorageError(f"not a local path: {uri}")
    return Path(uri)


class LocalStorage(Storage):
    def fetch(self, uri: str, dest: Path, *, max_bytes: int) -> int:
        src = local_path(uri)
        try:
            size = src.stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(f"no file at {src}") from None
        if not src.is_file():
            raise ObjectNotFound(f"{src} is not a regular file")
        if size > max_bytes:
            raise ObjectTooLarge(f"{src} is {size} bytes, over the {max_bytes} byte limit")
        tmp = partial_path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        copied = 0
        try:
            # Counted while copying: the file may grow after the size check.
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                while chunk := fin.read(_CHUNK):
                    copied += len(chunk)
                    if copied > max_bytes:
                        raise ObjectTooLarge(f"{src} grew past the {max_bytes} byte limit while being read")
                    fout.write(chunk)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return copied

    def put_file(self, local: Path, uri: str) -> None:
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_path(target)
        try:
            shutil.copyfile(local, tmp)
            os.replace(tmp, target)  # readers never see half a file
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, uri: str) -> bool:
        return local_path(uri).is_file()

    def link(self, uri: str, ttl_s: int) -> str:
        return local_path(uri).resolve().as_uri()
