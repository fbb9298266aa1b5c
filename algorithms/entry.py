"""The task entry point an agent runs: fetch the scan, run the algorithm, store outputs, report.

Embedded workers run ``python -m algorithms.entry --spec spec.json``; the spec names the task's
params, output location and where to write the outcome (``{"result": …}`` or ``{"error": …}``).
Exit status: 0 completed, 2 the algorithm refused the input, 1 anything unexpected.
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
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("algorithms.entry")

_ALGORITHM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


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


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one task described by ``spec``; returns the result recorded on the task."""
    params = spec["params"]
    algorithm = load_algorithm(spec["algorithm"])
    scan = local_scan_path(params["scan_uri"])
    out_dir = Path(spec["output_uri"])
    progress_path = Path(spec["progress_path"]) if spec.get("progress_path") else None

    def progress(fraction: float) -> None:
        if progress_path is not None:
            _write_atomic(progress_path, f"{fraction:.3f}")

    # Write into a fresh directory and swap it in, so a retried attempt never mixes its files
    # with a dead attempt's.
    staging = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir(parents=True)
    try:
        try:
            result = algorithm.run(scan, params, staging, progress=progress)
        except algorithm.AlgorithmError as exc:
            raise EntryError(exc.code, exc.message) from exc
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
