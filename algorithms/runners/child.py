"""The process a ``python`` or ``python-function`` algorithm runs in, one task at a time.

``python -m algorithms.runners.child REQUEST``: one task, started by ``algorithms.runners`` like any
command, so it gets the same minimal environment, timeout and output capture, and none of the entry
point's credentials or memory. (The warm executor, ``algorithms.runners.executor``, serves task
after task with the same ``serve``.)

REQUEST (JSON): ``runner``, ``target`` (the descriptor's ``python`` or ``function``), ``here``,
``scan``, ``params``, ``outputs`` and ``report``, the file
this writes the outcome to: ``{"result": {…}}`` (exit 0) or ``{"error": {"code", "message"}}``
(exit 2 when the code is ``invalid_input``, else 1), the traceback printed to the output first.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from algorithms.errors import EntryError


def progress(fraction: float) -> None:
    """The run contract's progress line on stdout, which the runner parses (not a log line)."""
    print(f"scantide:progress {fraction:.3f}", flush=True)


def serve(request: dict[str, Any], report_progress: Callable[[float], None]) -> tuple[dict[str, Any], int]:
    """Run the request's algorithm: ``(outcome, exit status)``, the outcome a JSON-ready
    ``{"result": …}`` or ``{"error": …}``; a traceback, when there is one, goes to the output."""
    try:
        outcome: dict[str, Any] = {"result": _call(request, report_progress)}
        status = 0
    except EntryError as exc:
        if exc.code == "algorithm_crashed":
            traceback.print_exc(file=sys.stdout)
        outcome = {"error": {"code": exc.code, "message": exc.message}}
        status = 2 if exc.code == "invalid_input" else 1
    except Exception as exc:  # noqa: BLE001 - the algorithm's own failure: its traceback is the log
        traceback.print_exc(file=sys.stdout)
        outcome = {"error": {"code": "algorithm_crashed", "message": f"{type(exc).__name__}: {exc}"}}
        status = 1
    sys.stdout.flush()
    try:
        json.dumps(outcome)
    except (TypeError, ValueError) as exc:
        outcome = {"error": {"code": "invalid_result", "message": f"the result is not JSON: {exc}"}}
        status = 1
    return outcome, status


def main(request_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    report = Path(request["report"])
    outcome, status = serve(request, progress)
    tmp = report.with_name(report.name + ".tmp")
    tmp.write_text(json.dumps(outcome))
    os.replace(tmp, report)
    return status


def _call(request: dict[str, Any], report_progress: Callable[[float], None]) -> dict[str, Any]:
    here, scan, out_dir = Path(request["here"]), Path(request["scan"]), Path(request["outputs"])
    if request["runner"] == "python-function":
        from algorithms.runners.function import run_function

        return run_function(here / request["target"], scan)
    from algorithms.runners.python import run_python

    return run_python(request["target"], here, scan, request["params"], out_dir, report_progress)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
