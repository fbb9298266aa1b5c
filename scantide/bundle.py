"""Algorithm bundles as both sides make them: an algorithm's folder as one canonical tar.gz.

The same files always make the same bytes (names sorted, times and owners fixed, only the
executable bit kept), so the bundle's sha256 says whether two registrations carry the same
content. The server (``service.bundles``) and this client pack with this one function.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

DESCRIPTOR_NAMES = ("scantide-algorithm.yaml", "scantide-algorithm.yml", "scantide-algorithm.json")


def pack(files: dict[str, tuple[bytes, bool]]) -> bytes:
    """The canonical tar.gz of ``{posix path: (content, executable)}``: sorted names, time 0, owner 0,
    mode 644 or 755, so the same files always make the same bytes (and the same sha256)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            data, executable = files[name]
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o755 if executable else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


class FolderTooLarge(ValueError):
    """An algorithm folder past the size or file-count bound."""


def folder_files(folder: Path, max_bytes: int | None = None, max_files: int | None = None
                 ) -> dict[str, tuple[bytes, bool]]:
    """An algorithm folder's files, ``{relative posix path: (content, executable)}``, leaving out
    dot-files and dot-folders, ``__pycache__`` and links; raises ``FolderTooLarge`` past the bounds."""
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder: give the folder that holds {DESCRIPTOR_NAMES[0]}")
    files: dict[str, tuple[bytes, bool]] = {}
    total = 0
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        total += len(data)
        if (max_bytes is not None and total > max_bytes) or (max_files is not None and len(files) >= max_files):
            raise FolderTooLarge(f"{folder} holds more than {max_bytes} bytes or {max_files} files: an algorithm "
                                 "folder should hold code and small assets, not data")
        files[rel.as_posix()] = (data, os.access(path, os.X_OK))
    return files


def pack_folder(folder: Path) -> bytes:
    """``pack`` of an algorithm folder's files (``folder_files``)."""
    files = folder_files(folder)
    if not any(name in files for name in DESCRIPTOR_NAMES):
        raise FileNotFoundError(f"{folder} holds no {' or '.join(DESCRIPTOR_NAMES)} at its top")
    return pack(files)
