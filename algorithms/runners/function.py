"""The ``python-function`` runner (``Knot``): a registered cloudpickled function, called on one
cloudpickled argument (the task's scan), its return value recorded cloudpickled and base64-encoded
as the result's ``return_pickle``.

The entry point has checked the bundle's sha256 against the registry before this unpickles
anything: only a function someone with the ``register`` scope registered ever runs. A raised
exception is printed with its traceback, whose tail becomes the task's ``log_tail``.
"""

from __future__ import annotations

import base64
import sys
import traceback
from pathlib import Path
from typing import Any

from algorithms.task_files import EntryError
from service.catalog import AlgorithmDescriptor

MAX_RETURN_BYTES = 1024**2  # the result lives in the task store


def run_function(descriptor: AlgorithmDescriptor, here: Path, scan: Path, out_dir: Path) -> dict[str, Any]:
    import cloudpickle

    try:
        function = cloudpickle.loads((here / str(descriptor.function)).read_bytes())
        argument = cloudpickle.loads(scan.read_bytes())
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the input's fault
        raise EntryError("invalid_input", f"cannot unpickle the function or its argument: "
                                          f"{type(exc).__name__}: {exc}") from exc
    try:
        value = function(argument)
    except Exception as exc:
        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        raise EntryError("algorithm_crashed", f"the function raised {type(exc).__name__}: {exc}") from exc
    blob = cloudpickle.dumps(value)
    if len(blob) > MAX_RETURN_BYTES:
        raise EntryError("result_too_large", f"the return value pickles to {len(blob)} bytes; at most "
                                             f"{MAX_RETURN_BYTES} are kept: return less, or write files")
    return {"return_pickle": base64.b64encode(blob).decode()}
