"""The ``python-function`` runner (``Knot``), run in the algorithm's own process
(``algorithms.runners.child``): a registered cloudpickled function called on one cloudpickled
argument (the task's scan), its return value recorded cloudpickled and base64-encoded as the
result's ``return_pickle``.

Only registered code is unpickled here: the entry point has checked the function's bundle against
the registry, and enqueue takes an argument only from the blob store, where uploading needs the
``register`` scope. A raised exception fails the task ``algorithm_crashed`` with its traceback's
tail as the ``log_tail``.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from algorithms.errors import EntryError

MAX_RETURN_BYTES = 1024**2  # the result lives in the task store


def run_function(function_file: Path, scan: Path) -> dict[str, Any]:
    import cloudpickle

    try:
        function = cloudpickle.loads(function_file.read_bytes())
        argument = cloudpickle.loads(scan.read_bytes())
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the input's fault
        raise EntryError("invalid_input", f"cannot unpickle the function or its argument: "
                                          f"{type(exc).__name__}: {exc}") from exc
    try:
        value = function(argument)
    except Exception as exc:
        raise EntryError("algorithm_crashed", f"the function raised {type(exc).__name__}: {exc}") from exc
    blob = cloudpickle.dumps(value)
    if len(blob) > MAX_RETURN_BYTES:
        raise EntryError("invalid_result", f"the return value pickles to {len(blob)} bytes; at most "
                                           f"{MAX_RETURN_BYTES} are kept: return less, or write files")
    return {"return_pickle": base64.b64encode(blob).decode()}
