"""``Knot``: run a plain Python function on scantide workers, one task per argument.

The function travels pickled (cloudpickle, so lambdas and closures work) inside an algorithm
bundle whose name and version derive from the pickle's sha256: the same function registers as
the same algorithm version however often it is knotted, and a changed one as a new version. Each
argument is uploaded as a blob and becomes one task's ``scan_uri``; the worker answers with the
return value pickled in the result's ``return_pickle`` (base64).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from scantide.bundle import pack
from scantide.client import Client

SCANTIDE_URL_ENV = "SCANTIDE_URL"
SCANTIDE_TOKEN_ENV = "SCANTIDE_TOKEN"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{2,40}$")
FUNCTION_FILE = "function.pkl"
DESCRIPTOR_FILE = "scantide-algorithm.json"
_SLUG_MAX = 41 - len("fn__") - 8  # fn_<slug>_<sha8> fits NAME_PATTERN's 41 characters
_BY_VALUE_LOCK = threading.Lock()  # cloudpickle's by-value registry is process-wide


def client_from_env() -> Client:
    """A client for ``$SCANTIDE_URL`` with ``$SCANTIDE_TOKEN``."""
    url, token = os.environ.get(SCANTIDE_URL_ENV), os.environ.get(SCANTIDE_TOKEN_ENV)
    missing = [name for name, value in ((SCANTIDE_URL_ENV, url), (SCANTIDE_TOKEN_ENV, token)) if not value]
    if missing:
        raise RuntimeError(f"{' and '.join(missing)} not set: set {SCANTIDE_URL_ENV} (the server's URL) and "
                           f"{SCANTIDE_TOKEN_ENV} (an API token with the enqueue and register scopes), "
                           "or pass client=Client(url, token)")
    return Client(str(url), str(token))


def function_name(func: Callable[..., Any], sha256: str) -> str:
    """``fn_<slug>_<sha[:8]>``: the function's name made safe for an algorithm name."""
    raw = getattr(func, "__name__", "function")
    slug = "lambda" if raw == "<lambda>" else re.sub(r"[^a-z0-9_]", "_", raw.lower())
    return f"fn_{slug[:_SLUG_MAX] or 'function'}_{sha256[:8]}"


def _is_local(module: Any) -> bool:
    """Whether ``module`` is the caller's own code: neither the standard library nor installed."""
    paths = [p for p in (getattr(module, "__file__", None), *(getattr(module, "__path__", None) or [])) if p]
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    return bool(paths) and not any(
        "site-packages" in real or "dist-packages" in real or real.startswith(stdlib + os.sep)
        for real in map(os.path.realpath, paths))


@contextmanager
def pickled_by_value(func: Callable[..., Any]) -> Iterator[None]:
    """While inside, cloudpickle copies the code of ``func``'s own package instead of naming it.

    cloudpickle pickles a function from an importable module by reference (module and name), and
    workers have only what the descriptor's requirements install, not the caller's modules. By
    value, the function runs there, and its version changes whenever its code does.
    """
    import cloudpickle

    module = sys.modules.get(getattr(func, "__module__", None) or "")
    top = sys.modules.get(module.__name__.partition(".")[0]) if module is not None else None
    if top is None or top.__name__ == "__main__" or not _is_local(top):
        yield  # __main__ is pickled by value already; installed code is on the workers
        return
    with _BY_VALUE_LOCK:
        if top.__name__ in cloudpickle.list_registry_pickle_by_value():
            yield
            return
        cloudpickle.register_pickle_by_value(top)
        try:
            yield
        finally:
            cloudpickle.unregister_pickle_by_value(top)


def decode_return(data: dict[str, Any]) -> Any:
    """The function's return value from a completed task's body."""
    import cloudpickle

    result = data.get("result") or {}
    if "return_pickle" not in result:
        raise ValueError(f"task {data.get('task_id')} completed without a return_pickle in its result")
    return cloudpickle.loads(base64.b64decode(result["return_pickle"]))


class Knot:
    """A function bound to a scantide server: ``Knot(f).map(args)`` runs ``f(arg)`` per argument.

    ``requirements``: pip requirement lines, recorded with the version (the worker must already
    have them: nothing is installed at run time); ``timeout_s``: seconds one call
    may run; ``memory_gib``: the memory one call needs; ``name``: the algorithm name (default
    ``fn_<function name>_<sha[:8]>``). ``client`` defaults to one from ``$SCANTIDE_URL`` and
    ``$SCANTIDE_TOKEN``.
    """

    def __init__(self, func: Callable[..., Any], client: Client | None = None, requirements: list[str] | None = None,
                 *, name: str | None = None, timeout_s: float = 600, memory_gib: float = 1.0) -> None:
        import cloudpickle  # only Knot needs it: the rest of the client is httpx alone

        self.func = func
        with pickled_by_value(func):
            self._blob = cloudpickle.dumps(func)
        sha = hashlib.sha256(self._blob).hexdigest()
        self.name = name if name is not None else function_name(func, sha)
        if not NAME_PATTERN.match(self.name):
            raise ValueError(f"algorithm name {self.name!r} must match {NAME_PATTERN.pattern}")
        self.requirements = list(requirements or [])
        self.timeout_s, self.memory_gib = timeout_s, memory_gib
        # The version covers the function and its settings: either changed is new content, a new version.
        settings = json.dumps([self.requirements, timeout_s, memory_gib]).encode()
        self.version = hashlib.sha256(self._blob + settings).hexdigest()[:12]
        self.client = client if client is not None else client_from_env()
        self._registered: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def descriptor(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "description": f"Knot function {getattr(self.func, '__qualname__', self.name)}",
            "function": FUNCTION_FILE,
            "inputs": {"kinds": ["any"]},
            "resources": {"gpu": 0, "cpu": 1, "memory_gib": self.memory_gib, "timeout_s": self.timeout_s,
                          "max_attempts": 2},
            "requirements": self.requirements,
        }

    def bundle(self) -> bytes:
        """The algorithm bundle (tar.gz): the descriptor and the pickled function."""
        descriptor = json.dumps(self.descriptor(), indent=2, sort_keys=True).encode()
        return pack({DESCRIPTOR_FILE: (descriptor, False), FUNCTION_FILE: (self._blob, False)})

    def register(self) -> dict[str, Any]:
        """Register the function as an algorithm version, once; the server's answer."""
        with self._lock:
            if self._registered is None:
                self._registered = self.client.register_bundle(self.bundle())
            return self._registered

    def map(self, iterable: Iterable[Any]) -> list[Future]:
        """One task per element; each future's ``result()`` is the function's return value, or raises
        ``TaskFailed`` (code ``algorithm_crashed``, the remote traceback in ``log_tail``)."""
        import cloudpickle

        self.register()
        prefix = f"{self.name.replace('_', '-')}-{secrets.token_hex(4)}"  # scan ids take no "_"
        futures = []
        for index, arg in enumerate(iterable):
            with pickled_by_value(self.func):  # an argument may be an instance of the caller's own class
                data = cloudpickle.dumps(arg)
            uri = self.client.upload(data)
            task = self.client.submit(f"{prefix}-{index}", uri, self.name, algorithm_version=self.version)
            futures.append(self.client._track(task, decode_return))
        return futures

    def __repr__(self) -> str:
        return f"<Knot {self.name} version={self.version}>"
