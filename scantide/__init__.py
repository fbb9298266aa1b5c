"""scantide's public client: submit scans, follow tasks, map functions over inputs, verify webhooks
(Standard Webhooks headers: ``verify_signature``).

Needs only httpx (and cloudpickle, imported when a ``Knot`` is made); it never imports the
server's packages, so a platform or a notebook can install it alone. ``Client``, ``Task`` and
``Knot`` load on first use: the errors and webhook signatures are the standard library alone,
so the server (whose ``service.signing`` is ``scantide.signing``) imports them without httpx,
as the enqueue Lambda does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from scantide.errors import (
    AuthError,
    Conflict,
    InvalidRequest,
    NotFound,
    ScantideError,
    SignatureError,
    TaskFailed,
    Unavailable,
)
from scantide.signing import sign, standard_secret, verify_signature

if TYPE_CHECKING:
    from scantide.client import Client, Task, TaskState
    from scantide.knot import Knot

__version__ = "0.1.0"

_LAZY = {"Client": "scantide.client", "Task": "scantide.client", "TaskState": "scantide.client",
         "Knot": "scantide.knot"}

__all__ = ["AuthError", "Client", "Conflict", "InvalidRequest", "Knot", "NotFound", "ScantideError", "SignatureError",
           "Task", "TaskFailed", "TaskState", "Unavailable", "__version__", "sign", "standard_secret",
           "verify_signature"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'scantide' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
