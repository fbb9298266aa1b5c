"""Shared fixtures: real SQLite files, uvicorn on a free loopback port, real worker subprocesses,
real videos written by OpenCV at test time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import uvicorn

from service.api import create_app
from service.api.server import server_options
from service.backends import open_backend
from service.backends.base import TaskBackend
from service.domain import JobState, TaskInfo
from service.settings import Settings, load_settings
from service.supervisor import cli_argv, settings_env

if TYPE_CHECKING:
    from tests.autoscaler.moto_server import MotoServer

TOKEN = "test-token-all"
READ_TOKEN = "test-token-read"
ENQUEUE_TOKEN = "test-token-enqueue"  # what a web platform holds: it submits scans, it does not bring code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings over a fresh state dir, with short leases so failure paths run fast."""
    return load_settings(
        state_dir=tmp_path / "state",
        api_tokens={TOKEN: ["enqueue", "read", "promote", "register"], READ_TOKEN: ["read"],
                    ENQUEUE_TOKEN: ["enqueue", "read"]},
        api_port=free_port(),
        lease_s=3.0,
        heartbeat_s=0.5,
        worker_poll_s=0.1,
        task_timeout_s=120.0,
    )


@pytest.fixture
def backend(settings: Settings) -> Iterator[TaskBackend]:
    b = open_backend(settings)
    yield b
    b.close()


@pytest.fixture
def data_root(settings: Settings) -> Path:
    root = settings.data_root
    assert root is not None
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def make_video(data_root: Path) -> Callable[..., dict]:
    """Write a synthetic scan under the data root: ``make_video("name.mp4", frames=…, blur=…)``."""
    from service.synthetic import write_scan_video

    def make(name: str = "scan.mp4", **kwargs) -> dict:
        return write_scan_video(data_root / name, **kwargs)

    return make


class ApiServer:
    """The API app served by uvicorn in a thread of this process, on a loopback socket it binds
    itself to port 0 and hands uvicorn: the kernel's free port, which nobody can take between being
    picked and being served (``settings.api_port`` is for subprocesses, which cannot do this)."""

    def __init__(self, settings: Settings, backend: TaskBackend) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings, backend), log_level="warning", access_log=False,
                                **server_options())
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()  # uvicorn closes it once it served; this is for a server never started

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)


@pytest.fixture
def api(settings: Settings, backend: TaskBackend) -> Iterator[ApiServer]:
    """The real API app served by uvicorn on a free loopback port, in a thread."""
    server = ApiServer(settings, backend)
    server.start()
    yield server
    server.stop()


class Workers:
    """Real ``scantide worker`` subprocesses over the test's settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, **settings_env(settings)}

    def start(self, n: int = 1, *args: str) -> list[subprocess.Popen]:
        log_dir = self.settings.state_dir / "test-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        started = []
        for _ in range(n):
            log = open(log_dir / f"worker-{len(self.procs)}.log", "wb")
            proc = subprocess.Popen(cli_argv("worker", *args), env=self.env, stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL)
            log.close()
            self.procs.append(proc)
            started.append(proc)
        return started

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def workers(settings: Settings) -> Iterator[Workers]:
    w = Workers(settings)
    yield w
    w.stop_all()


def wait_for(predicate: Callable[[], object], timeout_s: float = 60.0, interval_s: float = 0.1, what: str = "") -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what or predicate}")
        time.sleep(interval_s)


def wait_terminal(backend: TaskBackend, task_id: str, timeout_s: float = 90.0) -> TaskInfo:
    def done() -> TaskInfo | None:
        t = backend.get_task(task_id)
        return t if t.state.terminal else None

    return wait_for(done, timeout_s, what=f"task {task_id} to end")  # type: ignore[return-value]


def builtin_bundle(tmp_path: Path) -> dict[str, str]:
    """The params enqueue pins for the built-in video_summary (registered in a store of its own under
    ``tmp_path``): what a task spec needs to run it without going through enqueue."""
    backend = open_backend(load_settings(state_dir=tmp_path / "registry"))
    version = backend.latest_algorithm("video_summary")
    backend.close()
    assert version is not None
    return {"algorithm_version": version.version, "bundle_uri": version.uri, "bundle_sha256": version.sha256}


__all__ = ["TOKEN", "READ_TOKEN", "ENQUEUE_TOKEN", "ApiServer", "Workers", "wait_for", "wait_terminal", "JobState"]


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    """The moto server (S3, EC2, SSM …) on a loopback port, one per test module."""
    from tests.autoscaler.moto_server import MotoServer

    server = MotoServer().start()
    yield server
    server.stop()


# The bucket the ``aws`` fixture creates empty on the moto server.
TEST_BUCKET = "scantide-test"


@pytest.fixture
def aws(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """Dummy credentials for boto3's own chain, a fresh moto server state and an empty TEST_BUCKET."""
    from tests.autoscaler.moto_server import AWS_TEST_ENV

    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    moto.reset()
    moto.client("s3").create_bucket(Bucket=TEST_BUCKET)
    return moto
