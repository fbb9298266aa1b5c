"""How a task runs, by its descriptor's runner: ``command`` (an argv, never a shell), ``image`` (that
command in a container), ``python`` (a function of the bundle's or an installed package) and
``python-function`` (a registered cloudpickled function, ``Knot``). ``algorithms.entry`` fetches and
checks everything, then calls ``run``; each runner returns the result dict or raises ``EntryError``.

Every runner runs the algorithm as a process of its own (``process``): the two Python runners in
``python -m algorithms.runners.child``, this interpreter with this package on its path and nothing
of the entry point's environment, or, under ``scantide worker``, in the slot's warm executor
(``warm``: the same environment, one process serving task after task of one version).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import algorithms
from algorithms.errors import EntryError
from algorithms.runners.process import Progress, Staged, Workspace, failure, read_result, run_process
from algorithms.runners.warm import TaskExecutor as Executor
from algorithms.runners.warm import bundle_of

if TYPE_CHECKING:
    from service.catalog import AlgorithmDescriptor

__all__ = ["Executor", "Staged", "run"]

PACKAGE_ROOT = str(Path(algorithms.__file__).resolve().parent.parent)  # the child imports algorithms.* from here


def run(descriptor: AlgorithmDescriptor, here: Path, staged: Staged, params: dict[str, Any],
        out_dir: Path, progress: Progress, executor: Executor | None = None) -> dict[str, Any]:
    """Run ``descriptor``'s algorithm on ``staged`` (the scan, upstream outputs) into ``out_dir``
    (empty); the result it reports.

    here: the unpacked bundle (the descriptor's folder). params: validated, with defaults, plus the
    task's own (scan_id, metadata, model_path …). A ``python`` function gets ``{inputs}/scan.<ext>``
    as its scan path, or ``{inputs}`` itself for a pipeline step that does not read the scan.
    executor: the worker slot's warm executor for the Python runners (None: a process of its own)."""
    if descriptor.runner in ("command", "image"):
        from algorithms.runners.command import run_command

        return run_command(descriptor, here, staged, params, out_dir, progress)
    timeout_s = descriptor.resources.timeout_s
    with Workspace() as work:
        report = work.root / "report.json"
        request = {**bundle_of(descriptor), "here": str(here), "outputs": str(out_dir), "report": str(report),
                   "scan": str(work.stage(staged)), "params": params}
        if executor is not None:
            outcome, code, tail = executor.run(descriptor, here, request, work, timeout_s, progress)
        else:
            (work.root / "request.json").write_text(json.dumps(request))
            argv = [sys.executable, "-m", "algorithms.runners.child", str(work.root / "request.json")]
            code, tail = run_process(argv, work.env(PYTHONPATH=PACKAGE_ROOT), work.root, timeout_s, progress)
            outcome = read_result(report, tail) if code is not None else {}
    if "error" in outcome:
        error = outcome["error"]
        raise EntryError(str(error.get("code") or "algorithm_crashed"), str(error.get("message") or ""), tail)
    crash = failure(code, tail, timeout_s, "algorithm")
    if crash is not None:
        raise crash
    if not isinstance(outcome.get("result"), dict):
        raise EntryError("algorithm_crashed", "the algorithm's process ended without reporting a result", tail)
    return outcome["result"]
