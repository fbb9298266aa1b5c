"""Pipelines over real parts: the API on loopback, real workers, a real ``scantide conductor`` process."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from monitor.outbox import Outbox
from service.algorithms import register_folder
from service.backends.base import TaskBackend
from service.settings import Settings
from service.supervisor import cli_argv, settings_env
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TRIAGE = (EXAMPLES / "pipelines" / "triage" / "scantide-pipeline.yaml").read_text()


class ConductorProcess:
    """``scantide conductor`` (or a script standing in for it) as a real subprocess."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env = {**os.environ, **settings_env(settings)}
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, argv: list[str] | None = None, **env: str) -> subprocess.Popen:
        log_dir = self.settings.state_dir / "test-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"conductor-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(argv or cli_argv("conductor"), env={**self.env, **env}, stdout=log,
                                         stderr=log, stdin=subprocess.DEVNULL)
        self.starts += 1
        return self.proc

    def wait_exit(self, timeout_s: float = 120.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def conductor(settings: Settings) -> Iterator[ConductorProcess]:
    c = ConductorProcess(settings)
    yield c
    c.stop()


@pytest.fixture
def registered(backend: TaskBackend, settings: Settings) -> None:
    """frame_stats and scan_report registered (video_summary is built in)."""
    for name in ("frame_stats", "scan_report"):
        register_folder(backend, settings, EXAMPLES / "algorithms" / name, by="test")


def register_pipeline(client: httpx.Client, text: str = TRIAGE) -> httpx.Response:
    return client.post("/v1/pipelines", content=text, headers={"Content-Type": "application/yaml"})


def wait_run(client: httpx.Client, run_id: str, timeout_s: float = 180.0) -> dict:
    def ended() -> dict | None:
        run = client.get(f"/v1/runs/{run_id}").json()
        return run if run["state"] in ("completed", "failed") else None

    return wait_for(ended, timeout_s=timeout_s, interval_s=0.2, what=f"run {run_id} to end")  # type: ignore[return-value]


def outcome_events(settings: Settings) -> list[dict]:
    outbox = Outbox(settings.state_dir / "monitor.db")
    return [json.loads(e.body) for e in outbox.list(limit=10_000) if e.type.startswith("pipeline.")]
