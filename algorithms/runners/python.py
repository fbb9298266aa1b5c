"""The ``python`` runner: ``module:function`` called in this interpreter, the bundle first on sys.path.

``function(scan_path, params, out_dir[, progress=callable]) -> dict``: the dict is the result.
A ``ValueError`` fails the task ``invalid_input``; an exception with a string ``code`` (and
``message``) attribute fails it with that code; anything else propagates and the entry point
records ``algorithm_crashed`` with the traceback in the log.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

from algorithms.task_files import EntryError
from service.catalog import AlgorithmDescriptor


def run_python(descriptor: AlgorithmDescriptor, here: Path, scan: Path, params: dict[str, Any], out_dir: Path,
               progress: Any) -> dict[str, Any]:
    module_name, _, attr = str(descriptor.python).partition(":")
    sys.path.insert(0, str(here))
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise EntryError("algorithm_unavailable", f"cannot load {descriptor.python}: {exc}") from exc
    kwargs = {"progress": progress} if "progress" in inspect.signature(function).parameters else {}
    try:
        result = function(scan, params, out_dir, **kwargs)
    except ValueError as exc:
        raise EntryError("invalid_input", str(exc) or type(exc).__name__) from exc
    except Exception as exc:
        code = getattr(exc, "code", None)
        if isinstance(code, str) and code:
            raise EntryError(code, str(getattr(exc, "message", exc))) from exc
        raise
    if not isinstance(result, dict):
        raise EntryError("algorithm_crashed", f"{descriptor.python} returned {type(result).__name__}, not a dict")
    return result
