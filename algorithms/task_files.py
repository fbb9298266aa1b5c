"""A task's files: its inputs, local or fetched (the scan, the model weights, an earlier scan's
summary), and its outputs stored under the output URI. Used by the task entry point
(``algorithms.entry``) in both of its modes."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from algorithms.errors import EntryError
from service.errors import InvalidRequest, ScantideError
from service.settings import Settings, load_settings
from service.storage import StorageError, is_remote, storage_for
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
    """

    def __init__(self, work_dir: Path, settings: Settings | None) -> None:
        self.work_dir = work_dir
        self._settings = settings

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings()
            except ScantideError as exc:
                raise EntryError(exc.code, exc.message) from exc
        return self._settings

    def get(self, uri: str, name: str, what: str, max_bytes: int | None = None) -> Path:
        """The local file behind ``uri``; a remote one is downloaded as ``name`` (keeping its suffix,
        which the decoder needs) under ``max_bytes`` (default: the scan size cap)."""
        if not is_remote(uri):
            try:
                path = local_path(uri)
            except StorageError as exc:
                raise EntryError("fetch_failed", f"cannot fetch {what} {uri}: {exc.message}") from exc
            if not path.is_file():
                raise EntryError("fetch_failed", f"{what} {path} does not exist")
            return path
        suffix = Path(uri.split("?", 1)[0]).suffix
        dest = self.work_dir / "inputs" / (name + (suffix if _SUFFIX.match(suffix) else ""))
        settings = self.settings  # a settings error is itself, not a failed fetch
        try:
            size = storage_for(uri, settings).fetch(uri, dest, max_bytes=max_bytes or settings.max_scan_bytes)
        except ScantideError as exc:
            code = exc.code if isinstance(exc, InvalidRequest) else "fetch_failed"
            raise EntryError(code, f"cannot fetch {what} {uri}: {exc.message}") from exc
        log.info("input_fetched what=%s uri=%s bytes=%d", what.replace(" ", "_"), uri, size)
        return dest

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
            data = self.get(uri, "bundle", "the algorithm bundle", MAX_BUNDLE_BYTES).read_bytes()
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


def _keep(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole (beside it, then renamed); a cache that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("bundle_cache_skipped path=%s error=%s", path, exc)
