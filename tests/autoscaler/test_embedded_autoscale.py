"""Embedded end to end: ``scantide up`` starts at zero workers, scales out for a burst of scans,
completes them all and returns to zero after the idle timeout."""

from __future__ import annotations

import os
import signal
import subprocess

import httpx
import pytest

from autoscaler.runner import ticks_path
from service.backends import open_backend
from service.domain import JobState
from service.settings import Settings
from service.supervisor import cli_argv, settings_env
from tests.autoscaler.conftest import wait_ticks
from tests.conftest import TOKEN, wait_for

pytestmark = pytest.mark.slow


def _fleet_dir(settings: Settings):
    return settings.state_dir / "fleet" / "local"


def _instances(settings: Settings) -> list[str]:
    folder = _fleet_dir(settings)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.exists() else []


def _worker_pids(settings: Settings) -> list[int]:
    """Live `scantide worker` processes of this test's state dir."""
    pids = []
    for proc in os.listdir("/proc"):
        if not proc.isdigit():
            continue
        try:
            cmd = open(f"/proc/{proc}/cmdline", "rb").read().split(b"\0")
            environ = open(f"/proc/{proc}/environ", "rb").read()
        except OSError:
            continue
        if b"worker" in cmd and b"--worker-id" in cmd and str(settings.state_dir).encode() in environ:
            status = open(f"/proc/{proc}/status").read()
            if "\nState:\tZ" not in status:
                pids.append(int(proc))
    return pids


def test_up_scales_from_zero_and_back(settings: Settings, make_video) -> None:
    settings = settings.model_copy(update={"workers": 3, "local_idle_timeout_s": 3.0})
    make_video("burst.mp4", frames=24)
    env = {**os.environ, **settings_env(settings)}
    log = open(settings.state_dir / "up.log", "wb") if settings.state_dir.exists() else None
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    log = log or open(settings.state_dir / "up.log", "wb")
    up = subprocess.Popen(cli_argv("up"), env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    backend = open_backend(settings)
    try:
        base = f"http://127.0.0.1:{settings.api_port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, 60, what="the API")
        wait_ticks(ticks_path(settings), 3, timeout_s=60)  # three whole autoscaler ticks with an empty queue
        journal = settings.autoscaler_journal
        assert not journal.exists() or '"kind": "launch"' not in journal.read_text(), "nothing launched"
        assert _instances(settings) == [], "the fleet starts at zero"
        assert _worker_pids(settings) == []

        http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        ids = [http.post("/v1/scans", json={"scan_id": f"burst-{i}", "scan_uri": "burst.mp4"}).json()["task_id"]
               for i in range(10)]

        peak = status_peak = 0

        def all_done() -> bool:
            nonlocal peak, status_peak
            peak = max(peak, len(_instances(settings)))
            fleet = http.get("/v1/status").json()["fleet"]  # the daemon's fleet.json, through the API
            status_peak = max(status_peak, sum(len(p["instances"]) for p in fleet["pools"]))
            return all(backend.get_task(t).state.terminal for t in ids)

        wait_for(all_done, 180, interval_s=0.2, what="10 scans to finish")
        status = http.get("/v1/status").json()
        http.close()
        assert status_peak >= 1 and status["fleet"]["available"] and status["outbox"]["available"]
        assert {t["scan_id"] for t in status["tasks"]} == {f"burst-{i}" for i in range(10)}
        assert [backend.get_task(t).state for t in ids] == [JobState.completed] * 10
        assert 1 <= peak <= 3, f"scale-out stays within max_instances (peak {peak})"

        # Idle workers are drained and stopped: the fleet returns to zero.
        wait_for(lambda: not _instances(settings) and not _worker_pids(settings), 60, what="the fleet to reach zero")
        decisions = journal.read_text()
        assert '"kind": "launch"' in decisions and '"kind": "drain"' in decisions
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=90)
        log.close()
        backend.close()
    assert _worker_pids(settings) == [], "stopping the stack stops its workers"
