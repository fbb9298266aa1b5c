"""The ``python`` runner, run in the algorithm's own process (``algorithms.runners.child``):
``module:function`` called with the bundle first on sys.path.

``function(scan_path, params, out_dir[, progress=callable]) -> dict``: the dict is the result.
A ``ValueError`` fails the task ``invalid_input``; an exception with a string ``code`` (and
``message``) attribute fails it with that code; anything else fails it ``algorithm_crashed``
with the traceback in the log.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from algorithms.errors import EntryError


def run_python(target: str, here: Path, scan: Path, params: dict[str, Any], out_dir: Path,
               progress: Callable[[float], None]) -> dict[str, Any]:
    module_name, _, attr = target.partition(":")
    if str(here) not in sys.path:  # a warm executor runs one bundle task after task
        sys.path.insert(0, str(here))
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise EntryError("algorithm_unavailable", f"cannot load {target}: {exc}") from exc
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
        raise EntryError("invalid_result", f"{target} returned {type(result).__name__}, not a dict")
    return result
