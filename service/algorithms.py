"""Registered algorithms: versions of an algorithm's descriptor and folder, and how they are registered.

A version is immutable once registered: ``(name, version)`` names one bundle forever (its sha256 is
recorded); registering the same content again changes nothing, other content under a taken
version is refused (``AlgorithmVersionExists``, 409). Enqueue pins the newest version (or the one
asked for) into each task's params: ``algorithm_version``, ``bundle_uri`` and ``bundle_sha256``,
which is all a worker needs to fetch, check and run it.

The bundles are placed here, through ``service.storage``: under ``<state_dir>/algorithms`` in
embedded mode, under ``<output_root>/algorithms`` (S3 in production) in ClearML mode, as
``<root>/<name>/<version>/<sha256>.tar.gz``. The backends keep the records
(``TaskBackend.register_algorithm`` …).

Built-in algorithms (the ``scantide.algorithms`` entry points, such as ``video_summary``) are
registered from their descriptor when a store is opened. Their code is installed with scantide,
so their bundle is the descriptor alone and a code change never changes it.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scantide.bundle import pack
from service.bundles import descriptor_of, folder_files, sha256
from service.catalog import (
    DESCRIPTOR_NAMES,
    AlgorithmDescriptor,
    load_descriptor,
    parse_descriptor,
)
from service.domain import TaskInfo, Template, iso
from service.errors import AlgorithmVersionExists, RunnerUnavailable, ScantideError

if TYPE_CHECKING:
    from service.backends.base import TaskBackend
    from service.settings import Settings

log = logging.getLogger(__name__)

ENTRY_POINT = "algorithms.entry"  # the module every task runs: it dispatches by the descriptor's runner
BUILTIN_GROUP = "scantide.algorithms"
CONTAINER_ENGINES = ("docker", "podman")
BLOB_SUFFIX = ".pkl"


@dataclass(frozen=True)
class AlgorithmVersion:
    name: str
    version: str
    sha256: str  # of the bundle
    size: int  # bytes of the bundle
    uri: str  # where the bundle is: a local path or an s3:// URI
    queue: str  # the backend queue its tasks go to
    descriptor: dict[str, Any] = field(hash=False)  # AlgorithmDescriptor.to_dict()
    registered_at: float = 0.0  # unix seconds
    registered_by: str = ""

    @cached_property
    def spec(self) -> AlgorithmDescriptor:
        return parse_descriptor(self.descriptor, f"{self.name} {self.version}")

    def template(self) -> Template:
        """The template tasks of this version are cloned from."""
        return Template(name=self.name, entry_point=ENTRY_POINT, queue=self.queue, params={},
                        max_runtime_s=self.spec.resources.timeout_s)

    def summary(self) -> dict[str, Any]:
        """What a listing shows of a version."""
        spec = self.spec
        return {"name": self.name, "version": self.version, "runner": spec.runner, "description": spec.description,
                "queue": self.queue, "registered_at": iso(self.registered_at)}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["registered_at"] = iso(self.registered_at)
        d["runner"] = self.spec.runner
        return d


def algorithms_root(settings: Settings) -> str:
    """Where bundles go: ``<state_dir>/algorithms`` (embedded), ``<output_root>/algorithms`` (ClearML)."""
    if settings.backend == "embedded":
        return str((settings.state_dir / "algorithms").resolve())
    return f"{settings.output_root_uri}/algorithms"


def blob_uri(output_root: str, data_root: Path, digest: str) -> str:
    """Where an uploaded input (``POST /v1/blobs``) lives, by its sha256: beside the outputs when they
    are remote (``<output_root>/blobs``, S3 in production), else under the data root, where
    workers can fetch it."""
    if "://" in output_root:
        return f"{output_root}/blobs/{digest}{BLOB_SUFFIX}"
    return str(data_root / "blobs" / f"{digest}{BLOB_SUFFIX}")


def is_blob_uri(uri: str, output_root: str, data_root: Path) -> bool:
    """Whether ``uri`` (as enqueue resolved it) names an uploaded input."""
    digest = uri.rsplit("/", 1)[-1].removesuffix(BLOB_SUFFIX)
    return re.fullmatch(r"[0-9a-f]{64}", digest) is not None and uri == blob_uri(output_root, data_root, digest)


def backend_queue(settings: Settings, queue: str) -> str:
    """The store's queue for a descriptor's ``queue``: ``settings.algorithm_queues`` maps it; unmapped,
    embedded mode puts everything on its one local queue and ClearML mode keeps the name."""
    if queue in settings.algorithm_queues:
        return settings.algorithm_queues[queue]
    return settings.default_queue if settings.backend == "embedded" else queue


def check_runner(descriptor: AlgorithmDescriptor, settings: Settings) -> None:
    """Refuse what this deployment cannot run: a container algorithm in embedded mode needs docker
    or podman on the PATH (in production the ClearML agent's docker mode runs it)."""
    if descriptor.runner != "image" or settings.backend != "embedded":
        return
    if not any(shutil.which(engine) for engine in CONTAINER_ENGINES):
        raise RunnerUnavailable(
            f"{descriptor.name} runs in the container image {descriptor.image}, and embedded mode runs containers "
            "with docker or podman, neither of which is on this machine's PATH: install one of them, or register "
            "it on a production deployment, whose ClearML agents run containers")


def register_files(backend: TaskBackend, settings: Settings, files: dict[str, tuple[bytes, bool]], *,
                   by: str) -> tuple[AlgorithmVersion, bool]:
    """Validate an algorithm's folder (``{path: (content, executable)}``), store its bundle and
    record the version; ``(version, created)``. Raises ``InvalidDescriptor``, ``InvalidBundle``,
    ``RunnerUnavailable`` or ``AlgorithmVersionExists``."""
    from service.storage import storage_for

    descriptor = descriptor_of(files)
    check_runner(descriptor, settings)
    bundle = pack(files)
    digest = sha256(bundle)
    existing = backend.algorithm_version(descriptor.name, descriptor.version)
    if existing is not None:
        return _same(existing, digest), False
    # Content-addressed: two registrations racing for one version each write their own file, and
    # the registry's record decides which one tasks run.
    uri = f"{algorithms_root(settings)}/{descriptor.name}/{descriptor.version}/{digest}.tar.gz"
    storage = storage_for(uri, settings)
    if not storage.exists(uri):
        with tempfile.TemporaryDirectory(prefix="scantide-bundle-") as tmp:
            local = Path(tmp) / "bundle.tar.gz"
            local.write_bytes(bundle)
            storage.put_file(local, uri)
    record = AlgorithmVersion(name=descriptor.name, version=descriptor.version, sha256=digest, size=len(bundle),
                              uri=uri, queue=backend_queue(settings, descriptor.queue),
                              descriptor=descriptor.to_dict(), registered_at=time.time(), registered_by=by)
    stored, created = backend.algorithms.register(record)
    return _same(stored, digest), created


def _same(existing: AlgorithmVersion, digest: str) -> AlgorithmVersion:
    if existing.sha256 != digest:
        raise AlgorithmVersionExists(
            f"version {existing.version!r} of {existing.name!r} is already registered with other content (sha256 "
            f"{existing.sha256[:12]}…); versions are immutable: change `version` in the descriptor and register again")
    return existing


def register_folder(backend: TaskBackend, settings: Settings, folder: Path, *, by: str) -> tuple[AlgorithmVersion, bool]:
    """``register_files`` for a local folder."""
    return register_files(backend, settings, folder_files(folder, settings.max_bundle_bytes), by=by)


def unregistered(registry: Any, task: TaskInfo) -> str | None:
    """Why ``task`` must not run (its bundle is not the registered one of its version), or None.

    Workers ask the registry itself, not the task: a task's params say which bundle to run, and
    only what someone with the ``register`` scope registered may run."""
    name, version = task.algorithm, str(task.params.get("algorithm_version") or "")
    registered = registry.get(name, version) if version else None
    if registered is None:
        return f"{name} version {version or '(none)'} is not registered in this deployment: register it first"
    if registered.sha256 != task.params.get("bundle_sha256"):
        return (f"the task names bundle {str(task.params.get('bundle_sha256'))[:12]}… for {name} {version}, and "
                f"the registry holds {registered.sha256[:12]}…: only registered code runs")
    return None


def pin_unversioned(registry: Any, task: TaskInfo) -> TaskInfo:
    """A task queued before its algorithm was registered (by a scantide that had no registry: no
    ``algorithm_version`` in its params) pinned now to the newest registered version, as enqueue
    would have; any other task as it is."""
    if task.params.get("algorithm_version"):
        return task
    latest = registry.latest(task.algorithm)
    if latest is None:
        return task
    log.info("task_pinned_late task=%s algorithm=%s version=%s", task.task_id, task.algorithm, latest.version)
    return replace(task, params={**task.params, "algorithm_version": latest.version, "bundle_uri": latest.uri,
                                 "bundle_sha256": latest.sha256})


def builtin_folders() -> list[Path]:
    """The folders of the algorithms installed with scantide (entry points ``scantide.algorithms``,
    each naming the package whose folder holds its descriptor). Found without importing their code."""
    from importlib.metadata import entry_points
    from importlib.util import find_spec

    folders = []
    for ep in entry_points(group=BUILTIN_GROUP):
        spec = find_spec(ep.value)
        if spec is not None and spec.submodule_search_locations:
            folders.append(Path(next(iter(spec.submodule_search_locations))))
    return folders


def ensure_builtin(backend: TaskBackend, settings: Settings) -> None:
    """Register each built-in algorithm's descriptor that the store lacks (its bundle: the descriptor
    alone). A different descriptor under a registered version is logged and left alone: the store
    keeps what tasks were pinned to."""
    for folder in builtin_folders():
        name = next((n for n in DESCRIPTOR_NAMES if (folder / n).is_file()), None)
        if name is None:
            continue
        data = (folder / name).read_bytes()
        try:
            descriptor = load_descriptor(data, name)
            if backend.algorithm_version(descriptor.name, descriptor.version) is not None:
                continue
            register_files(backend, settings, {name: (data, False)}, by="scantide (built in)")
        except AlgorithmVersionExists as exc:  # registered with other bytes: tasks were pinned to those
            log.warning("builtin_algorithm_conflict folder=%s error=%s", folder, exc.message)
        except ScantideError as exc:
            log.error("builtin_algorithm_not_registered folder=%s code=%s error=%s", folder, exc.code, exc.message)
