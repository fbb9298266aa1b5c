"""The task entry point an agent runs: fetch the inputs, run the algorithm, store outputs, report.

Two ways to run it, one code path (``execute``: fetch → run → upload → record):

- ``python -m algorithms.entry --spec spec.json``: the embedded worker (``scantide worker``). The
  spec names the task's algorithm, params, output location, a progress file and where to write
  the outcome (``{"result": …}`` or ``{"error": …}``).
- ``python -m algorithms.entry`` under a stock ``clearml-agent`` (``CLEARML_TASK_ID`` set): the
  task's params, progress and outcome live on the ClearML task (``algorithms.clearml_task``).

Exit status: 0 completed, 2 the algorithm refused the input (or an input could not be fetched, or
the outputs stored), 1 anything unexpected.

Inputs, beside the scan (``scan_uri``): ``model_uri`` (optional: the weights of ``model_version``)
is given to the algorithm as the local file ``model_path``; ``previous_output_uri`` (optional: the
outputs of an earlier scan of the same patient) as ``previous_summary``, the local copy of its
``summary.json``. Local inputs are read in place, remote ones (``s3://``, ``https://``) copied to a
temporary directory out of the machine's input cache (``service.input_cache``), which fetches
each once. Local outputs are swapped into place; remote outputs (``s3://``)
are written to a temporary directory and uploaded under the output prefix, and the result is
recorded only after every file is up. Remote URIs need the settings (``SCANTIDE_*``: S3 endpoint,
size cap, allowed hosts); with ``--spec`` they are loaded only then.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from algorithms import runners
from algorithms.errors import EntryError
from algorithms.task_files import Inputs
from service.catalog import DESCRIPTOR_NAMES, AlgorithmDescriptor, load_descriptor
from service.errors import ScantideError
from service.settings import Settings
from service.storage import is_remote
from service.storage.base import file_sha256, files_under
from service.storage.local import local_path

log = logging.getLogger("algorithms.entry")

Progress = Callable[[float], None]


def run_task(spec: dict[str, Any], settings: Settings | None = None, progress: Progress | None = None,
             executor: runners.Executor | None = None) -> dict[str, Any]:
    """Run one task described by ``spec`` (``params``, ``output_uri``, optional ``progress_path``,
    ``bundle_cache`` and ``input_cache``); returns the result to record on the task. Raises ``EntryError``.

    The task's params name its algorithm version's bundle (``bundle_uri``, ``bundle_sha256``,
    pinned at enqueue); it is fetched, checked and unpacked, and its descriptor says how to run.
    settings: needed only for remote URIs; loaded from the environment when None.
    progress: called with 0..1; default: written to ``spec["progress_path"]`` when there is one.
    executor: the worker slot's warm executor, for the Python runners (None: a process per task).
    """
    task_params = spec["params"]
    output_uri = spec["output_uri"]
    report = progress or _progress_file(spec.get("progress_path"))
    with tempfile.TemporaryDirectory(prefix="scantide-task-") as tmp:
        inputs = Inputs(Path(tmp), settings, Path(spec["input_cache"]) if spec.get("input_cache") else None)
        cache = Path(spec["bundle_cache"]) if spec.get("bundle_cache") else inputs.settings.state_dir / "bundles"
        here = inputs.bundle(str(task_params.get("bundle_uri") or ""), str(task_params.get("bundle_sha256") or ""),
                             cache)
        descriptor = _descriptor(here)
        step_inputs = task_params.get("step_inputs") or {}  # a pipeline step: what lands in {inputs}
        staged = runners.Staged(upstream=inputs.upstream(step_inputs.get("steps") or {}))
        if step_inputs.get("scan", True):
            staged.scan = inputs.get(task_params["scan_uri"], "scan", "scan file")
            staged.scan_owned = inputs.owned(staged.scan)  # the task's own copy (never the cache's), which a run may have
        params = inputs.params(task_params)
        if is_remote(output_uri):
            out_dir = Path(tmp) / "outputs"
            out_dir.mkdir()
            returned = runners.run(descriptor, here, staged, params, out_dir, report, executor)
            files = files_under(out_dir)
            checksums = {f: file_sha256(out_dir / f) for f in files}
            inputs.upload(out_dir, output_uri)
        else:
            returned, files, checksums = _run_local(descriptor, here, staged, params, local_path(output_uri), report,
                                                    executor)
    result = describe_result(returned, files, output_uri.rstrip("/"), descriptor.version, params.get("model_version"))
    return {**result, "checksums": checksums}


def _descriptor(here: Path) -> AlgorithmDescriptor:
    name = next((n for n in DESCRIPTOR_NAMES if (here / n).is_file()), None)
    if name is None:
        raise EntryError("invalid_task", f"the algorithm bundle holds no descriptor ({DESCRIPTOR_NAMES[0]})")
    try:
        return load_descriptor((here / name).read_bytes(), name)
    except ScantideError as exc:
        raise EntryError("invalid_task", exc.message) from exc


def _progress_file(path: str | None) -> Progress:
    def write(fraction: float) -> None:
        if path:
            _write_atomic(Path(path), f"{fraction:.3f}")

    return write


def _run_local(descriptor: AlgorithmDescriptor, here: Path, staged: runners.Staged, params: dict[str, Any],
               out_dir: Path, progress: Progress,
               executor: runners.Executor | None) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    # Write into a fresh directory and swap it in, so a retried attempt never mixes its files
    # with a dead attempt's.
    staging = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir(parents=True)
    try:
        returned = runners.run(descriptor, here, staged, params, staging, progress, executor)
        files = files_under(staging)
        checksums = {f: file_sha256(staging / f) for f in files}
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return returned, files, checksums


def describe_result(returned: dict[str, Any], files: list[str], output_uri: str, algorithm_version: str,
                    model_version: str | None) -> dict[str, Any]:
    """The result recorded on the task: what the algorithm returned (its result.json), where the
    outputs are, every file written, and the versions that made it."""
    result = {**returned, "output_uri": output_uri, "algorithm_version": algorithm_version,
              "outputs": {**(returned.get("outputs") or {}), "files": files}}
    if model_version is not None:
        result["model_version"] = model_version
    return result


def execute(spec: dict[str, Any], settings: Settings | None, progress: Progress | None,
            record_result: Callable[[dict[str, Any]], None], record_error: Callable[[str, str, str], None],
            executor: runners.Executor | None = None) -> int:
    """Run the task and record its outcome with the given recorders; returns the exit status."""
    try:
        result = run_task(spec, settings, progress, executor)
    except EntryError as exc:
        log.error("task_failed code=%s message=%s", exc.code, exc.message)
        record_error(exc.code, exc.message, exc.log_tail)
        return 2
    except Exception as exc:
        log.exception("task_crashed")
        record_error("algorithm_crashed", f"{type(exc).__name__}: {exc}", traceback.format_exc())
        return 1
    record_result(result)
    log.info("task_completed task_id=%s", spec.get("task_id"))
    return 0


def run_spec(spec_path: Path) -> int:
    """``--spec`` mode: the embedded worker reads the outcome from ``spec["result_path"]``."""
    spec = json.loads(spec_path.read_text())
    result_path = Path(spec["result_path"])
    return execute(spec, None, None,
                   lambda result: _write_atomic(result_path, json.dumps({"result": result})),
                   lambda code, message, tail: _write_atomic(result_path, json.dumps(
                       {"error": {"code": code, "message": message, "log_tail": tail}})))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m algorithms.entry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, help="task spec JSON written by the embedded worker; without it, "
                                                  "run the ClearML task named by CLEARML_TASK_ID")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # A worker stops a task with SIGTERM first: exit through the runner's clean-up, which kills
    # the algorithm's process group (and its container).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.spec:
        return run_spec(args.spec)
    from algorithms.clearml_task import (
        run_clearml_task,  # needs the ClearML SDK: agent mode only
    )

    return run_clearml_task()


if __name__ == "__main__":
    sys.exit(main())
