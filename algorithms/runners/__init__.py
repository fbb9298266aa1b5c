"""How a task runs, by its descriptor's runner: ``command`` (an argv, never a shell), ``image`` (that
command in a container), ``python`` (a function in this interpreter) and ``python-function`` (a
registered cloudpickled function, ``Knot``). ``algorithms.entry`` fetches and checks everything,
then calls ``run``; each runner returns the result dict or raises ``EntryError``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.catalog import AlgorithmDescriptor

Progress = Callable[[float], None]


def run(descriptor: AlgorithmDescriptor, here: Path, scan: Path, params: dict[str, Any], out_dir: Path,
        progress: Progress) -> dict[str, Any]:
    """Run ``descriptor``'s algorithm on ``scan`` into ``out_dir`` (empty); the result it reports.

    here: the unpacked bundle (the descriptor's folder). params: validated, with defaults, plus
    the task's own (scan_id, metadata, model_path …)."""
    if descriptor.runner == "python":
        from algorithms.runners.python import run_python

        return run_python(descriptor, here, scan, params, out_dir, progress)
    if descriptor.runner == "python-function":
        from algorithms.runners.function import run_function

        return run_function(descriptor, here, scan, out_dir)
    from algorithms.runners.command import run_command

    return run_command(descriptor, here, scan, params, out_dir, progress)
