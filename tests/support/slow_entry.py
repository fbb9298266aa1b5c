"""A stand-in task entry point whose behaviour the task's params choose, for worker tests.

Run as ``python -m tests.support.slow_entry --spec <file>`` (the worker's cwd is the repo root).
The spec holds ``task_id, algorithm, params, output_uri, result_path, progress_path``. Params:

- ``mode="sleep"``: sleep ``seconds`` (default 1.0) writing progress, then write
  ``{"result": {...}}`` to ``result_path`` and exit 0;
- ``mode="fail"``: write ``{"error": {"code": "bad_input", ...}}`` and exit 2;
- ``mode="crash"``: exit 3 without a result;
- ``mode="hang"``: sleep forever;
- ``first_run={"marker": <path>, ...overrides}``: when the marker file does not exist yet, create
  it and apply the overrides to the params, so a retried task can behave differently from its
  first attempt (for example hang first, then succeed).

Before anything else it writes its pid to ``entry.pid`` beside ``result_path``, so a test can
check whether the process outlives its worker. Everything it says goes to stdout, which the
worker keeps as the task log.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

PROGRESS_STEP_S = 0.1  # how often a sleeping task reports progress, seconds
EXIT_FAILED = 2
EXIT_CRASHED = 3


def pid_file(result_path: Path) -> Path:
    return result_path.with_name("entry.pid")


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def sleep_with_progress(seconds: float, progress_path: Path) -> None:
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        write_atomic(progress_path, f"{min(1.0, elapsed / seconds) if seconds > 0 else 1.0:.3f}")
        if elapsed >= seconds:
            return
        time.sleep(min(PROGRESS_STEP_S, seconds - elapsed))


def effective_params(params: dict[str, Any]) -> dict[str, Any]:
    first_run = params.get("first_run")
    if not first_run:
        return params
    overrides = dict(first_run)
    marker = Path(overrides.pop("marker"))
    try:
        with open(marker, "x"):
            pass
    except FileExistsError:
        return params
    return {**params, **overrides}


def run(spec: dict[str, Any]) -> int:
    params = effective_params(spec["params"])
    result_path = Path(spec["result_path"])
    progress_path = Path(spec["progress_path"])
    mode = params.get("mode", "sleep")
    write_atomic(pid_file(result_path), str(os.getpid()))
    print(f"slow_entry start task={spec['task_id']} mode={mode} pid={os.getpid()}", flush=True)
    if mode == "sleep":
        seconds = float(params.get("seconds", 1.0))
        sleep_with_progress(seconds, progress_path)
        result = {"mode": mode, "slept_s": seconds, "task_id": spec["task_id"], "scan_id": params.get("scan_id"),
                  "pid": os.getpid()}
        write_atomic(result_path, json.dumps({"result": result}))
        print(f"slow_entry done task={spec['task_id']}", flush=True)
        return 0
    if mode == "fail":
        print("slow_entry refusing the input: marker-fail-log", flush=True)
        write_atomic(result_path, json.dumps({"error": {"code": "bad_input",
                                                        "message": "the scan is not a dental video"}}))
        return EXIT_FAILED
    if mode == "crash":
        print("slow_entry crashing: marker-crash-log", flush=True)
        return EXIT_CRASHED
    if mode == "hang":
        print("slow_entry hanging", flush=True)
        while True:
            time.sleep(3600)
    print(f"slow_entry unknown mode {mode!r}", flush=True)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.slow_entry")
    parser.add_argument("--spec", required=True, type=Path)
    args = parser.parse_args(argv)
    return run(json.loads(args.spec.read_text()))


if __name__ == "__main__":
    sys.exit(main())
