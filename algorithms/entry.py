"""The task entry point an agent runs: fetch the scan, run the algorithm, store outputs, report.

Embedded workers run ``python -m algorithms.entry --spec spec.json``; the spec names the task's
params, output location and where to write the outcome (``{"result": …}`` or ``{"error": …}``).
Exit status: 0 completed, 2 the algorithm refused the input (or the scan could not be fetched, or
the outputs stored), 1 anything unexpected.

Local scans are read in place and local outputs swapped into place. Remote scans (``s3://``,
``https://``) are downloaded to a temporary directory first; remote outputs (``s3://``) are
written to a temporary directory and uploaded under the output prefix, and the result is recorded
only after every file is up. Remote URIs need the settings (``SCANTIDE_*``: S3 endpoint, size cap,
allowed hosts); they are loaded only then.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from service.errors import InvalidRequest, ScantideError
from service.settings import Settings, load_settings
from service.storage import is_remote, storage_for

log = logging.getLogger("algorithms.entry")

_ALGORITHM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


class EntryError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def load_algorithm(name: str) -> Any:
    if not _ALGORITHM_NAME.match(name):
        raise EntryError("unknown_algorithm", f"invalid algorithm name {name!r}")
    try:
        return importlib.import_module(f"algorithms.{name}")
    except ModuleNotFoundError as exc:
        raise EntryError("unknown_algorithm", f"algorithm {name!r} is not installed on this worker: {exc}") from exc


def local_scan_path(scan_uri: str) -> Path:
    """The local file behind a scan URI (embedded mode keeps scans on local disk)."""
    if "://" in scan_uri and not scan_uri.startswith("file://"):
        raise EntryError("fetch_failed", f"this worker reads local scans only; cannot fetch {scan_uri}")
    path = Path(scan_uri.removeprefix("file://"))
    if not path.is_file():
        raise EntryError("fetch_failed", f"scan file {path} does not exist")
    return path


def fetch_scan(scan_uri: str, work_dir: Path, settings: Settings) -> Path:
    """Download a remote scan into ``work_dir`` (under the size cap); returns the local file."""
    suffix = Path(scan_uri.split("?", 1)[0]).suffix
    dest = work_dir / ("scan" + (suffix if _SUFFIX.match(suffix) else ""))  # keep .mp4 etc. for the decoder
    try:
        size = storage_for(scan_uri, settings).fetch(scan_uri, dest, max_bytes=settings.max_scan_bytes)
    except ScantideError as exc:
        raise EntryError(exc.code if isinstance(exc, InvalidRequest) else "fetch_failed", exc.message) from exc
    log.info("scan_fetched uri=%s bytes=%d", scan_uri, size)
    return dest


def upload_outputs(out_dir: Path, output_uri: str, settings: Settings) -> None:
    """Store every file of ``out_dir`` under the ``output_uri`` prefix."""
    try:
        written = storage_for(output_uri, settings).put_dir(out_dir, output_uri)
    except ScantideError as exc:
        raise EntryError("upload_failed", exc.message) from exc
    log.info("outputs_uploaded uri=%s files=%d", output_uri, len(written))


def run_task(spec: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Run one task described by ``spec``; returns the result recorded on the task.

    settings: needed only for remote scan or output URIs; loaded from the environment when None.
    """
    params = spec["params"]
    algorithm = load_algorithm(spec["algorithm"])
    scan_uri, output_uri = params["scan_uri"], spec["output_uri"]
    progress_path = Path(spec["progress_path"]) if spec.get("progress_path") else None

    def progress(fraction: float) -> None:
        if progress_path is not None:
            _write_atomic(progress_path, f"{fraction:.3f}")

    if not (is_remote(scan_uri) or is_remote(output_uri)):
        return _run_local(algorithm, local_scan_path(scan_uri), params, Path(output_uri), progress)
    if settings is None:
        try:
            settings = load_settings()
        except ScantideError as exc:
            raise EntryError(exc.code, exc.message) from exc
    with tempfile.TemporaryDirectory(prefix="scantide-task-") as tmp:
        work = Path(tmp)
        scan = fetch_scan(scan_uri, work, settings) if is_remote(scan_uri) else local_scan_path(scan_uri)
        if not is_remote(output_uri):
            return _run_local(algorithm, scan, params, Path(output_uri), progress)
        out_dir = work / "outputs"
        out_dir.mkdir()
        result = _run_algorithm(algorithm, scan, params, out_dir, progress)
        upload_outputs(out_dir, output_uri, settings)
    return describe_result(result.summary, result.files, output_uri.rstrip("/"),
                           getattr(algorithm, "VERSION", None), params.get("model_version"))


def _run_algorithm(algorithm: Any, scan: Path, params: dict[str, Any], out_dir: Path, progress: Any) -> Any:
    try:
        return algorithm.run(scan, params, out_dir, progress=progress)
    except algorithm.AlgorithmError as exc:
        raise EntryError(exc.code, exc.message) from exc


def _run_local(algorithm: Any, scan: Path, params: dict[str, Any], out_dir: Path, progress: Any) -> dict[str, Any]:
    # Write into a fresh directory and swap it in, so a retried attempt never mixes its files
    # with a dead attempt's.
    staging = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir(parents=True)
    try:
        result = _run_algorithm(algorithm, scan, params, staging, progress)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return describe_result(result.summary, result.files, str(out_dir), getattr(algorithm, "VERSION", None),
                           params.get("model_version"))


def describe_result(summary: dict[str, Any], files: list[str], output_uri: str, algorithm_version: str | None,
                    model_version: str | None) -> dict[str, Any]:
    """The result recorded on the task: where the outputs are and the headline figures."""
    keyframes = summary.get("keyframes", [])
    return {
        "output_uri": output_uri,
        "algorithm_version": algorithm_version,
        "model_version": model_version,
        "outputs": {
            "summary": "summary.json",
            "contact_sheet": summary.get("contact_sheet"),
            "keyframes": [k["file"] for k in keyframes],
            "files": files,
        },
        "summary": {
            "frame_count": summary.get("frame_count"),
            "fps": summary.get("fps"),
            "duration_s": summary.get("duration_s"),
            "width": summary.get("width"),
            "height": summary.get("height"),
            "keyframes": len(keyframes),
            "quality_score": summary.get("quality", {}).get("score"),
        },
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m algorithms.entry", description=__doc__)
    parser.add_argument("--spec", required=True, type=Path, help="task spec JSON written by the worker")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    spec = json.loads(args.spec.read_text())
    result_path = Path(spec["result_path"])
    try:
        result = run_task(spec)
    except EntryError as exc:
        log.error("task_failed code=%s message=%s", exc.code, exc.message)
        _write_atomic(result_path, json.dumps({"error": {"code": exc.code, "message": exc.message}}))
        return 2
    except Exception as exc:  # noqa: BLE001 - the worker must get a reason, not just a status
        log.exception("task_crashed")
        _write_atomic(result_path, json.dumps({"error": {"code": "algorithm_crashed",
                                                         "message": f"{type(exc).__name__}: {exc}"}}))
        return 1
    _write_atomic(result_path, json.dumps({"result": result}))
    log.info("task_completed task_id=%s", spec.get("task_id"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
