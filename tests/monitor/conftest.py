"""Fixtures for the monitor: a real webhook receiver, monitor settings that point at it, the monitor
in-process (Watcher + Deliverer threads) or as the real ``scantide monitor`` subprocess, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.daemon import alert_config, delivery_policy, outbox_for
from monitor.outbox import Entry, Outbox
from monitor.watch import Watcher
from monitor.webhook import Deliverer
from service.backends.base import TaskBackend
from service.domain import TaskError, TaskInfo
from service.settings import Settings, load_settings
from service.supervisor import cli_argv, settings_env
from tests.monitor.receiver import Receiver

REPO = Path(__file__).resolve().parents[2]
SECRET = "whsec_dGVzdC13ZWJob29rLXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVm"  # Standard Webhooks form: 36 bytes
QUEUE = "default"  # the queue of the default video_summary template
WORKER = "test-worker"


def with_settings(settings: Settings, **overrides: Any) -> Settings:
    """``settings`` with some fields changed, validated like at start-up."""
    return load_settings(**{**settings.model_dump(), **overrides})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(SECRET)
    r.up()
    yield r
    r.close()


@pytest.fixture
def monitor_settings(settings: Settings, receiver: Receiver) -> Settings:
    """The test settings plus a webhook to the receiver, fast retries and a fast poll."""
    return with_settings(settings, webhook_url=receiver.url, webhook_secret=SECRET, webhook_timeout_s=10.0,
                         webhook_backoff_base_s=0.2, webhook_backoff_cap_s=1.0, webhook_concurrency=8,
                         monitor_poll_s=0.1)


# -- making task histories with the backend directly ------------------------------------------
def result_for(scan_id: str) -> dict[str, Any]:
    return {"output_uri": f"/srv/out/{scan_id}", "summary": {"frames": 120, "sharp": 0.9},
            "outputs": {"summary": "summary.json", "contact_sheet": "sheet.jpg", "keyframes": ["k0.jpg", "k1.jpg"]}}


def submit(backend: TaskBackend, scan_id: str) -> TaskInfo:
    return backend.submit("video_summary", scan_id, {"scan_id": scan_id, "metadata": {"patient": f"p-{scan_id}"}},
                          f"/srv/out/{scan_id}").task


def start(backend: TaskBackend, scan_id: str, worker: str = WORKER, lease_s: float = 60.0) -> TaskInfo:
    """Submit a scan and claim it (nothing else may be queued)."""
    task = submit(backend, scan_id)
    claimed = backend.claim(QUEUE, worker, lease_s)
    assert claimed is not None and claimed.task_id == task.task_id
    return claimed


def complete(backend: TaskBackend, scan_id: str) -> TaskInfo:
    task = start(backend, scan_id)
    return backend.finish(task.task_id, WORKER, result=result_for(scan_id))


def fail(backend: TaskBackend, scan_id: str, code: str = "bad_input") -> TaskInfo:
    task = start(backend, scan_id)
    return backend.finish(task.task_id, WORKER, error=TaskError.make(code, "the scan is unreadable",
                                                                     "line 1\nmarker-log-tail"))


# -- the monitor -----------------------------------------------------------------------------
class InProcessMonitor:
    """The monitor's real parts in threads: a Watcher loop and a Deliverer over the settings."""

    def __init__(self, backend: Any, settings: Settings, *, page_size: int = 500, alerts: bool = False) -> None:
        self.settings = settings
        self.outbox = outbox_for(settings)
        self.watcher = Watcher(backend, self.outbox, alert_config(settings), page_size=page_size)
        policy = delivery_policy(settings)
        assert policy is not None
        self.deliverer = Deliverer(self.outbox, policy)
        self.alerts = alerts
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self) -> InProcessMonitor:
        self._threads = [threading.Thread(target=self._watch, name="watch", daemon=True),
                         threading.Thread(target=self.deliverer.run, kwargs={"idle_wait_s": 0.2}, name="deliver",
                                          daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                added = self.watcher.poll_changes()
                if self.alerts:
                    added += self.watcher.check_alerts()
                if added:
                    self.deliverer.wake()
            except BaseException as exc:  # the test fails on it in stop()
                self.errors.append(exc)
                return
            self._stop.wait(self.settings.monitor_poll_s)

    def stop(self) -> None:
        self._stop.set()
        self.deliverer.stop()
        for t in self._threads:
            t.join(timeout=30)
            assert not t.is_alive(), f"monitor thread {t.name} did not stop"
        if self.errors:
            raise self.errors[0]


class MonitorProcess:
    """The real ``scantide monitor`` in a subprocess, with the settings as SCANTIDE_* variables."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env = {**os.environ, **settings_env(settings)}
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    @property
    def log_path(self) -> Path:
        return self.settings.state_dir / "test-logs" / f"monitor-{self.runs}.log"

    def start(self) -> subprocess.Popen:
        self.runs += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cli_argv("monitor"), env=self.env, cwd=REPO, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        return self.proc

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def logs(self) -> str:
        parts = []
        for i in range(1, self.runs + 1):
            path = self.settings.state_dir / "test-logs" / f"monitor-{i}.log"
            parts.append(f"--- monitor run {i}\n" + (path.read_text(errors="replace") if path.exists() else ""))
        return "\n".join(parts)


@pytest.fixture
def monitor_process(monitor_settings: Settings) -> Iterator[MonitorProcess]:
    m = MonitorProcess(monitor_settings)
    yield m
    if m.proc is not None and m.proc.poll() is None:
        m.proc.kill()
        m.proc.wait()


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m service.cli ARGS`` with the settings in the environment, from the repo root."""
    env = {**os.environ, **settings_env(settings), "COLUMNS": "250"}
    return subprocess.run(cli_argv(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=60)


def entries(outbox: Outbox, state: str | None = None) -> list[Entry]:
    """Every outbox entry (of one state), oldest first."""
    return sorted(outbox.list(state, limit=1_000_000), key=lambda e: e.seq)
