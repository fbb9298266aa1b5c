"""Algorithm bundles: an algorithm's folder (its descriptor and files) as one canonical tar.gz.

The same files always make the same bytes (``scantide.bundle.pack``, which the client packs with
too), so the bundle's sha256 says whether two registrations carry the same content, however the
folder was packed for upload. An upload is read defensively: regular files
and folders only, no absolute or ``..`` paths, bounded member count and size. Pure: bytes in,
bytes out; ``unpack`` is the one function that writes, into a folder it creates.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from scantide import bundle
from service.catalog import DESCRIPTOR_NAMES, AlgorithmDescriptor, load_descriptor
from service.errors import InvalidBundle, InvalidDescriptor

MAX_FILES = 1000


def folder_files(folder: Path, max_bytes: int) -> dict[str, tuple[bytes, bool]]:
    """The files of a local algorithm folder (``scantide.bundle.folder_files``), bounded."""
    try:
        return bundle.folder_files(folder, max_bytes, MAX_FILES)
    except (NotADirectoryError, bundle.FolderTooLarge) as exc:
        raise InvalidBundle(str(exc)) from None


def read_upload(data: bytes, max_bytes: int) -> dict[str, tuple[bytes, bool]]:
    """The files of an uploaded tar.gz (or plain tar). A descriptor at the top, or in the one folder
    at the top (``tar czf x.tgz frame_stats/``), marks the algorithm's folder."""
    files: dict[str, tuple[bytes, bool]] = {}
    total = members = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for member in tar:
                members += 1
                total += max(member.size, 0)
                if total > max_bytes or members > MAX_FILES:
                    raise InvalidBundle(f"the folder unpacks to more than {max_bytes} bytes or {MAX_FILES} entries")
                if member.isdir():
                    continue
                name = _safe_name(member.name)
                if not member.isfile():
                    raise InvalidBundle(f"{member.name}: only regular files and folders may be uploaded "
                                        "(no links or devices)")
                if name in files:
                    raise InvalidBundle(f"{name}: the upload holds this path twice")
                content = tar.extractfile(member)
                files[name] = (content.read() if content else b"", bool(member.mode & 0o111))
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise InvalidBundle(f"the upload is not a readable tar.gz of the algorithm's folder: {exc}") from None
    clash = next((n for n in files if any(p in files for p in _parents(n))), None)
    if clash is not None:
        raise InvalidBundle(f"{clash}: a file of the upload has the same path as this file's folder")
    return _rooted(files)


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _safe_name(name: str) -> str:
    path = PurePosixPath(name)
    parts = [p for p in path.parts if p not in ("", ".")]
    if path.is_absolute() or ".." in parts or not parts:
        raise InvalidBundle(f"{name}: a path in the upload must stay inside the folder")
    return "/".join(parts)


def _rooted(files: dict[str, tuple[bytes, bool]]) -> dict[str, tuple[bytes, bool]]:
    if any(n in files for n in DESCRIPTOR_NAMES):
        return files
    tops = {n.split("/", 1)[0] for n in files}
    if len(tops) == 1:
        inner = {n.split("/", 1)[1]: v for n, v in files.items() if "/" in n}
        if any(n in inner for n in DESCRIPTOR_NAMES):
            return inner
    raise InvalidBundle(f"the upload holds no descriptor: put {DESCRIPTOR_NAMES[0]} at the top of the folder")


def descriptor_of(files: dict[str, tuple[bytes, bool]]) -> AlgorithmDescriptor:
    """The folder's descriptor, validated, with the folder's own checks: exactly one descriptor,
    and every ``{here}/…`` file the command names and the ``function`` file present."""
    found = [n for n in DESCRIPTOR_NAMES if n in files]
    if not found:
        raise InvalidBundle(f"no descriptor: the folder needs {DESCRIPTOR_NAMES[0]} (or .json) at its top")
    if len(found) > 1:
        raise InvalidBundle(f"two descriptors ({' and '.join(found)}): keep one")
    descriptor = load_descriptor(files[found[0]][0], found[0])
    missing = [f"command[{i}]: {arg} is not in the folder" for i, arg in enumerate(descriptor.command)
               if arg.startswith("{here}/") and arg.removeprefix("{here}/") not in files]
    if descriptor.function and descriptor.function not in files:
        missing.append(f"function: {descriptor.function} is not in the folder")
    if missing:
        raise InvalidDescriptor(missing, found[0])
    return descriptor


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unpack(bundle: bytes, dest: Path) -> Path:
    """Unpack a bundle into ``dest``, a folder that must not exist yet (removed again on failure)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
            tar.extractall(dest, filter="data")  # refuses links out, absolute paths and devices
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise InvalidBundle(f"the bundle cannot be unpacked: {exc}") from None
    return dest
