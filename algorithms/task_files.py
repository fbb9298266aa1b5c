"""A task's files: its inputs, local or fetched (the scan, the model weights, an earlier scan's
summary), and its outputs stored under the output URI. Used by the task entry point
(``algorithms.entry``) in both of its modes.

Remote inputs go through the machine's input cache (``service.input_cache``, under
``input_cache_dir``, ``input_cache_max_bytes`` at most; 0: none), so the steps of a pipeline on one
scan download it once. Whether fetched or cached, a remote input reaches the task as a copy in its
own work folder: a run may move or change that copy, never the cache's file. An S3 object is known
to the cache by its URI, ETag and size (one HEAD request), so a replaced object is fetched anew; an
``https://`` one by its URI alone. The algorithm bundle keeps its own cache (``Inputs.bundle``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from algorithms.errors import EntryError
from service.errors import InvalidRequest, ScantideError
from service.input_cache import InputCache, InputCacheError
from service.settings import Settings, load_settings
from service.storage import Storage, StorageError, is_remote, storage_for
from service.storage.base import file_sha256
from service.storage.local import local_path

log = logging.getLogger(__name__)

_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")
MAX_MODEL_BYTES = 16 * 1024**3  # weights are small next to this; the cap only stops a wrong URI filling the disk
MAX_SUMMARY_BYTES = 64 * 1024**2
MAX_BUNDLE_BYTES = 1024**3
SUMMARY = "summary.json"


class Inputs:
    """The task's input files, local or fetched into ``work_dir``.

    settings: needed only for remote URIs; loaded from the environment on first need when None.
    input_cache: the input cache's folder (default: the settings' ``input_cache_dir``).
    """

    def __init__(self, work_dir: Path, settings: Settings | None, input_cache: Path | None = None) -> None:
        self.work_dir = work_dir
        self._settings = settings
        self._cache_dir = input_cache
        self._cache: InputCache | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings()
            except ScantideError as exc:
                raise EntryError(exc.code, exc.message) from exc
        return self._settings

    def get(self, uri: str, name: str, what: str, max_bytes: int | None = None, *, cached: bool = True) -> Path:
        """The local file behind ``uri``; a remote one is copied out of the input cache (fetched into
        it on a miss; ``cached=False``: fetched directly) as ``name`` in the work folder, keeping its
        suffix, which the decoder needs. max_bytes: the largest input accepted, bytes (default: the
        scan size cap). Whether the run may move the file: ``owned``. A local path under the data root
        must still resolve inside it (``forbidden_scan_uri``)."""
        if not is_remote(uri):
            try:
                path = local_path(uri)
            except StorageError as exc:
                raise EntryError("fetch_failed", f"cannot fetch {what} {uri}: {exc.message}") from exc
            if not path.is_file():
                raise EntryError("fetch_failed", f"{what} {path} does not exist")
            self._check_still_under_data_root(path, what)
            return path
        suffix = Path(uri.split("?", 1)[0]).suffix
        dest = self.work_dir / "inputs" / (name + (suffix if _SUFFIX.match(suffix) else ""))
        settings = self.settings  # a settings error is itself, not a failed fetch
        cap = max_bytes or settings.max_scan_bytes
        try:
            storage = storage_for(uri, settings)
            cache = self._input_cache() if cached else None
            key = source_key(uri, storage) if cache is not None else None
            if cache is None or key is None:
                size = storage.fetch(uri, dest, max_bytes=cap)
            else:
                size = _through_cache(cache, key, lambda path: storage.fetch(uri, path, max_bytes=cap), dest)
        except ScantideError as exc:
            code = exc.code if isinstance(exc, InvalidRequest) else "fetch_failed"
            raise EntryError(code, f"cannot fetch {what} {uri}: {exc.message}") from exc
        log.info("input_fetched what=%s uri=%s bytes=%d", what.replace(" ", "_"), uri, size)
        return dest

    def _check_still_under_data_root(self, path: Path, what: str) -> None:
        """Refuse a path under the data root that now resolves outside it.

        Enqueue checked the scan's path (links followed) against the data root, but the path is read
        in place later: a file or folder swapped for a symlink since then would let a caller who can
        write under the root have a worker read anything it can. Paths outside the root (model
        weights, bundles, outputs: written by scantide itself) are not a caller's to choose."""
        given_root = self.settings.data_root
        if given_root is None:
            return
        root = os.path.realpath(given_root)
        lexical = os.path.join(os.getcwd(), path)  # not normalised: "root/../elsewhere" counts as under the root
        if not any(lexical.startswith(r + os.sep) for r in (root, os.path.abspath(given_root))):
            return
        real = os.path.realpath(lexical)
        if not real.startswith(root + os.sep):
            raise EntryError("forbidden_scan_uri", f"{what} {path} now resolves to {real}, outside the data root "
                                                   f"{root} (a symlink put in after it was submitted?); refusing "
                                                   "to read it")

    def upstream(self, steps: dict[str, Any]) -> dict[str, Path]:
        """A pipeline step's upstream outputs (``step_inputs.steps``: ``{step: {"uri", "files": {relative
        path: sha256}}}``), each step's files in a folder of its own in the work folder, every file
        checked against the sha256 its step recorded."""
        out: dict[str, Path] = {}
        for step, spec in steps.items():
            folder = self.work_dir / "upstream" / step
            folder.mkdir(parents=True)
            for i, (rel, digest) in enumerate(sorted(spec["files"].items())):
                if rel.startswith("/") or ".." in Path(rel).parts:
                    raise EntryError("invalid_task", f"step {step}'s output {rel!r} is not a relative path")
                uri = f"{str(spec['uri']).rstrip('/')}/{rel}"
                source = self.get(uri, f"upstream-{step}-{i}", f"the output {rel} of step {step}")
                dest = folder / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                if self.owned(source):
                    os.replace(source, dest)
                else:
                    shutil.copyfile(source, dest)
                found = file_sha256(dest)
                if found != digest:
                    raise EntryError("input_mismatch", f"the output {rel} of step {step} at {uri} has sha256 "
                                                       f"{found[:12]}…, not the {str(digest)[:12]}… its step recorded")
            out[step] = folder
        return out

    def owned(self, path: Path) -> bool:
        """Whether ``path`` is this task's own copy (in its work folder), which a run may move or change;
        anything else (a local scan, read in place) must be copied."""
        return path.resolve().is_relative_to(self.work_dir.resolve())

    def _input_cache(self) -> InputCache | None:
        if self._cache is None and self.settings.input_cache_max_bytes > 0:
            root = self._cache_dir or self.settings.input_cache_dir
            self._cache = InputCache(Path(root), self.settings.input_cache_max_bytes)  # type: ignore[arg-type]
        return self._cache

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` plus the local paths of the optional inputs (``model_path``, ``previous_summary``)."""
        out = dict(params)
        if params.get("model_uri"):
            out["model_path"] = str(self.get(str(params["model_uri"]), "model", "the model weights", MAX_MODEL_BYTES))
        if params.get("previous_output_uri"):
            uri = f"{str(params['previous_output_uri']).rstrip('/')}/{SUMMARY}"
            out["previous_summary"] = str(self.get(uri, "previous_summary", "the previous scan's summary",
                                                   MAX_SUMMARY_BYTES))
        return out

    def bundle(self, uri: str, sha256: str, cache_dir: Path) -> Path:
        """The algorithm's folder: the bundle at ``uri`` unpacked into this task's work folder.

        A bundle whose bytes do not hash to ``sha256`` (the registered digest) is refused, so only
        registered code ever runs. The bytes are kept in ``cache_dir/<sha256>.tar.gz`` to spare the
        next task a download, and checked again on every use: a changed cache is fetched anew."""
        from service.bundles import sha256 as digest
        from service.bundles import unpack

        if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
            raise EntryError("invalid_task", "the task names no algorithm bundle digest (bundle_sha256): submit it "
                                             "through scantide's enqueue, which pins a registered version")
        cached = cache_dir / f"{sha256}.tar.gz"
        data = cached.read_bytes() if cached.is_file() else b""
        if digest(data) != sha256:
            data = self.get(uri, "bundle", "the algorithm bundle", MAX_BUNDLE_BYTES, cached=False).read_bytes()
            if digest(data) != sha256:
                raise EntryError("bundle_mismatch", f"the algorithm bundle at {uri} has sha256 {digest(data)[:12]}…, "
                                                    f"not the registered {sha256[:12]}…: it was changed after "
                                                    "registration")
            _keep(cached, data)
        try:
            return unpack(data, self.work_dir / "bundle")
        except ScantideError as exc:
            raise EntryError("invalid_task", exc.message) from exc

    def upload(self, out_dir: Path, output_uri: str) -> None:
        """Store every file of ``out_dir`` under the ``output_uri`` prefix."""
        settings = self.settings
        try:
            written = storage_for(output_uri, settings).put_dir(out_dir, output_uri)
        except ScantideError as exc:
            raise EntryError("upload_failed", exc.message) from exc
        log.info("outputs_uploaded uri=%s files=%d", output_uri, len(written))


def source_key(uri: str, storage: Storage) -> str | None:
    """What the input cache knows the remote input at ``uri`` by; None: fetch it uncached.

    S3: the URI, ETag, size and version id (one HEAD request, so an object replaced at the same key
    is a new input); the fetch itself checks the size again. https: the URI alone (servers' ETags
    are optional and the scan URIs name immutable uploads)."""
    if not uri.startswith("s3://"):
        return uri
    from botocore.exceptions import BotoCoreError, ClientError

    from service.storage.s3 import S3Storage, parse_s3_uri

    if not isinstance(storage, S3Storage):
        return None
    bucket, key = parse_s3_uri(uri)
    try:
        head = storage.client.head_object(Bucket=bucket, Key=key)
    except (BotoCoreError, ClientError):
        return None  # the fetch that follows fails too, with the storage's own error
    version = f" version={head['VersionId']}" if head.get("VersionId") else ""
    return f"{uri} etag={head.get('ETag', '')} size={head.get('ContentLength', '')}{version}"


def _through_cache(cache: InputCache, key: str, fetch: Callable[[Path], int], dest: Path) -> int:
    """Copy the cached input for ``key`` (fetched into the cache on a miss) to ``dest``; its size, bytes.

    The copy is the task's own: the cache's blob is never handed out. A blob evicted by another
    worker between the lookup and the copy is looked up again; a cache that fails is bypassed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            path = cache.get(key, fetch)
        except InputCacheError as exc:
            log.warning("input_cache_skipped error=%s", exc)
            return fetch(dest)
        if not cache.holds(path):  # over the cache's cap: a download of our own
            shutil.move(path, dest)
            return dest.stat().st_size
        try:
            shutil.copyfile(path, dest)
        except FileNotFoundError:
            continue
        return dest.stat().st_size
    return fetch(dest)


def _keep(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole (beside it, then renamed); a cache that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")  # slots share a process
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("bundle_cache_skipped path=%s error=%s", path, exc)

