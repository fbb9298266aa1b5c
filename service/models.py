"""Model versions of an algorithm: register, promote, roll back, and the audit trail of it all.

A version is immutable once registered: ``(algorithm, version)`` names one file forever (its
``sha256`` is recorded). At most one version of an algorithm is *promoted*; enqueue pins it into
every new task's params (``model_version``, ``model_uri``), so tasks already queued or running keep
the version they were given. Every register, promote and rollback appends an ``AuditEntry``.

Rollback returns to the version promoted before the current one. The promotion history is
replayed from the audit trail as a stack: a promote pushes its version, a rollback pops, so
promote 1, promote 2, promote 3, rollback, rollback ends on 1, and a third rollback has nothing
to return to.

The backends store versions and the trail (``TaskBackend.register_model`` …); the files are
placed here, through ``service.storage``: under ``<state_dir>/models`` in embedded mode, under
``<output_root>/models`` (S3 in production) in ClearML mode, as
``<root>/<algorithm>/<version>/<file name>``.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.domain import iso
from service.errors import (
    InvalidModelFile,
    InvalidRequest,
    ModelVersionExists,
    NothingToRollBack,
)

if TYPE_CHECKING:
    from service.backends.base import TaskBackend
    from service.settings import Settings

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
ACTIONS = ("register", "promote", "rollback")


@dataclass(frozen=True)
class ModelVersion:
    algorithm: str
    version: str
    uri: str  # where the weights are: a local path or an s3:// URI
    sha256: str
    size: int  # bytes
    notes: str = ""
    registered_at: float = 0.0  # unix seconds
    registered_by: str = ""
    promoted: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["registered_at"] = iso(self.registered_at)
        return d


@dataclass(frozen=True)
class AuditEntry:
    """One change to an algorithm's registry: who did what, when, from which version to which."""

    algorithm: str
    action: str  # one of ACTIONS
    from_version: str | None  # the promoted version before (register: None)
    to_version: str | None  # the promoted version after (register: the version registered)
    by: str
    at: float  # unix seconds

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["at"] = iso(self.at)
        return d


def check_version(version: str) -> str:
    if not re.match(VERSION_PATTERN, version or ""):
        raise InvalidRequest(f"invalid model version {version!r}: use 1-64 letters, digits, '.', '_', '+' or '-', "
                             "starting with a letter or digit")
    return version


def promotion_stack(trail: list[AuditEntry]) -> list[str]:
    """The promoted versions, oldest first, as the trail (oldest first) leaves them: the last is
    the current one, the one before it is where a rollback goes."""
    stack: list[str] = []
    for entry in trail:
        if entry.action == "promote" and entry.to_version and (not stack or stack[-1] != entry.to_version):
            stack.append(entry.to_version)
        elif entry.action == "rollback" and stack:
            stack.pop()
    return stack


def rollback_target(algorithm: str, trail: list[AuditEntry]) -> tuple[str, str]:
    """``(current, previous)`` promoted versions; raises ``NothingToRollBack``."""
    stack = promotion_stack(trail)
    if not stack:
        raise NothingToRollBack(f"no version of {algorithm!r} is promoted: there is nothing to roll back")
    if len(stack) < 2:
        raise NothingToRollBack(f"version {stack[-1]!r} of {algorithm!r} is the first one promoted: there is no "
                                "earlier version to roll back to (promote one instead)")
    return stack[-1], stack[-2]


def file_digest(path: Path) -> tuple[str, int]:
    """``(sha256 hex, size in bytes)`` of a local file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def models_root(settings: Settings) -> str:
    """Where registered files go: ``<state_dir>/models`` (embedded), ``<output_root>/models`` (ClearML)."""
    if settings.backend == "embedded":
        return str((settings.state_dir / "models").resolve())
    return f"{settings.output_root_uri}/models"


def register_model(backend: TaskBackend, settings: Settings, algorithm: str, version: str, path: Path, *,
                   notes: str = "", by: str) -> tuple[ModelVersion, bool]:
    """Store the file ``path`` as ``version`` of ``algorithm``; ``(version, created)``.

    The file must already have been validated by the algorithm (``scantide models register`` does
    it). Registering the same content under the same version again changes nothing
    (``created=False``); other content under a taken version raises ``ModelVersionExists``.
    """
    from service.storage import storage_for

    check_version(version)
    if not path.is_file():
        raise InvalidModelFile(f"no model file at {path}")
    sha256, size = file_digest(path)
    existing = backend.model_version(algorithm, version)
    if existing is not None:
        if existing.sha256 != sha256:
            raise ModelVersionExists(f"version {version!r} of {algorithm!r} is already registered with other "
                                     f"content (sha256 {existing.sha256[:12]}…); versions are immutable: "
                                     "register this file under a new version")
        return existing, False
    uri = f"{models_root(settings)}/{algorithm}/{version}/{path.name}"
    storage_for(uri, settings).put_file(path, uri)
    model = ModelVersion(algorithm=algorithm, version=version, uri=uri, sha256=sha256, size=size, notes=notes,
                         registered_at=time.time(), registered_by=by)
    return backend.register_model(model), True


def registry(backend: TaskBackend, algorithm: str) -> dict[str, Any]:
    """An algorithm's versions, the promoted one and the audit trail (oldest first), as
    ``GET /v1/models/{algorithm}`` and ``scantide models show --json`` print them."""
    versions = backend.list_models(algorithm)
    promoted = next((m for m in versions if m.promoted), None)
    return {"algorithm": algorithm, "promoted": promoted.version if promoted else None,
            "versions": [m.to_dict() for m in versions],
            "history": [e.to_dict() for e in backend.model_history(algorithm)]}
