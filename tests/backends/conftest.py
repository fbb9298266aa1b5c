"""Fixtures for the backend contract: each backend over a real store, the ClearML one through the
real ``clearml`` SDK against the wire-level stand-in (``tests.fakes.clearml_server``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service.backends.base import TaskBackend
from service.domain import Template
from tests.fakes.clearml_server import FakeClearMLServer

QUEUE = "q-test"
ALGO = "algo"
MAX_ATTEMPTS = 2
PAGE = 5  # the stand-in's page cap (a real server's is 500): small, so every listing pages


@dataclass
class Store:
    """One task store, whichever backend; ``open()`` gives another client of it (another process's view)."""

    kind: str
    open: Callable[[], TaskBackend]
    server: FakeClearMLServer | None = None
    opened: list[TaskBackend] = field(default_factory=list)
    backend: TaskBackend = field(init=False)  # the first client

    def __post_init__(self) -> None:
        self.backend = self.client()

    def client(self) -> TaskBackend:
        backend = self.open()
        self.opened.append(backend)
        return backend

    @contextlib.contextmanager
    def same_timestamps(self) -> Iterator[None]:
        """Everything the store stamps in this block gets one timestamp. The embedded store orders
        changes by its own sequence and has no timestamp ties to make; ClearML orders by time."""
        if self.server is None:
            yield
            return
        frozen = time.time()
        self.server.app.clock = lambda: frozen
        try:
            yield
        finally:
            self.server.app.clock = time.time

    def close(self) -> None:
        for backend in self.opened:
            backend.close()


@pytest.fixture
def clearml_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClearMLServer]:
    """The stand-in on a free loopback port; the SDK finds it through its standard variables."""
    server = FakeClearMLServer(max_page_size=PAGE).start()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "no-clearml.conf"))  # ignore a developer's own
    yield server
    server.stop()


def clearml_backend(**options) -> TaskBackend:
    from service.backends.clearml import ClearMLBackend
    from service.backends.clearml_client import ClearMLClient

    client = ClearMLClient(timeout_s=options.pop("timeout_s", 10.0), retries=options.pop("retries", 2),
                           backoff_s=options.pop("backoff_s", 0.05))
    options = {"max_attempts": MAX_ATTEMPTS, "page_size": PAGE, **options}
    return ClearMLBackend(client, project="scantide-tests", **options)


def embedded_store(tmp_path: Path) -> Store:
    from service.backends.embedded import EmbeddedBackend

    return Store("embedded", lambda: EmbeddedBackend(tmp_path / "store" / "scantide.db", max_attempts=MAX_ATTEMPTS))


@pytest.fixture(params=["embedded", "clearml"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each backend over a fresh store with the test template registered."""
    if request.param == "embedded":
        s = embedded_store(tmp_path)
    else:
        s = Store("clearml", clearml_backend, server=request.getfixturevalue("clearml_server"))
    s.backend.register_template(Template(name=ALGO, queue=QUEUE, params={"keyframes": 8, "segments": 10}))
    yield s
    s.close()


@pytest.fixture
def clearml_store(clearml_server: FakeClearMLServer) -> Iterator[Store]:
    s = Store("clearml", clearml_backend, server=clearml_server)
    s.backend.register_template(Template(name=ALGO, queue=QUEUE, params={"keyframes": 8, "segments": 10}))
    yield s
    s.close()


def register_algorithm(backend: TaskBackend, settings, name: str = ALGO, queue: str = QUEUE) -> None:
    """Register a minimal version 1 of ``name`` (a ``python`` runner, the descriptor alone) whose
    tasks go to ``queue``, so enqueue can pin it."""
    from service.algorithms import register_files

    descriptor = f'name: {name}\nversion: "1"\npython: "{name}:run"\nqueue: {queue}\n'.encode()
    register_files(backend, settings, {"scantide-algorithm.yaml": (descriptor, False)}, by="test")
