"""Chaos in production mode: the API, the monitor and agents over the ClearML stand-in, under an
enqueue load, while the server goes down and comes back, stamps a stretch of writes out of order
(as a real server does: ``status_changed`` taken before the write) and the monitor is killed with
``kill -9``. Every acknowledged scan must end completed and be announced under exactly one event id.
Prints ``acked N, lost 0, stuck 0, duplicate-id events 0, orphans 0`` and asserts it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import scantide
from service.algorithms import register_folder
from service.backends import open_backend
from service.settings import load_settings
from service.supervisor import cli_argv, settings_env
from service.synthetic import write_scan_video
from tests.chaos.support import SCANS, all_ended, announced, healthy, start_load
from tests.conftest import TOKEN, free_port, wait_for
from tests.fakes.clearml_server import FakeClearMLServer
from tests.monitor.receiver import Receiver

REPO = Path(__file__).resolve().parents[2]
SECRET = "chaos-webhook-secret-0123456789abcdef"
QUEUE = "cpu-scans"
AGENTS = 2

pytestmark = pytest.mark.chaos


def test_server_outage_late_stamps_and_a_killed_monitor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeClearMLServer().start()
    receiver = Receiver(SECRET)
    receiver.up()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SCANTIDE_", "CLEARML_"))}
    env = {**base, **server.env(), "CLEARML_CONFIG_FILE": str(tmp_path / "no-clearml.conf"),
           "SCANTIDE_CONFIG": str(tmp_path / "absent.toml")}
    for name, value in env.items():
        if name.startswith("CLEARML_"):
            monkeypatch.setenv(name, value)
    settings = load_settings(
        backend="clearml", state_dir=tmp_path / "state", clearml_project="scantide-chaos", default_queue=QUEUE,
        algorithm_queues={"cpu": QUEUE}, output_root=tmp_path / "outputs", data_root=tmp_path / "data",
        api_port=free_port(), api_tokens={TOKEN: ["enqueue", "read", "register"]}, webhook_url=receiver.url,
        webhook_secret=SECRET, webhook_backoff_base_s=0.2, webhook_backoff_cap_s=1.0, monitor_poll_s=0.2,
        clearml_timeout_s=3.0, clearml_retries=8)
    backend = open_backend(settings)
    register_folder(backend, settings, REPO / "examples" / "algorithms" / "frame_stats", by="chaos")
    backend.close()
    Path(settings.data_root).mkdir(parents=True, exist_ok=True)
    write_scan_video(Path(settings.data_root) / "scan.mp4", frames=24, fps=24.0, size=(48, 32))
    env = {**env, **settings_env(settings)}
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, argv: list[str]) -> None:
        with open(logs / f"{name}.log", "ab") as log:
            procs[name] = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    start("api", cli_argv("api"))
    start("monitor", cli_argv("monitor"))
    for i in range(AGENTS):
        start(f"agent-{i}", [sys.executable, "-m", "tests.fakes.clearml_agent", "--queue", QUEUE, "--worker-id",
                             f"agent-{i}", "--max-tasks", "100000", "--retries", "20"])
    url = f"http://127.0.0.1:{settings.api_port}"
    client = scantide.Client(url, TOKEN, retries=20, timeout_s=10.0)
    acked: dict[str, str] = {}
    try:
        wait_for(lambda: healthy(url), timeout_s=60, what="the API")

        loader = start_load(client, acked)
        wait_for(lambda: len(acked) >= SCANS // 4, timeout_s=120, what="a quarter of the load")
        server.stop()  # the ClearML server goes away …
        time.sleep(1.5)
        server.start()  # … and comes back on the same port with its state
        with server.app.stamped_earlier(5.0):  # writes of the next second land stamped in the past
            time.sleep(1.0)
        procs["monitor"].send_signal(signal.SIGKILL)
        procs["monitor"].wait()
        start("monitor", cli_argv("monitor"))
        loader.join(timeout=300)
        assert not loader.is_alive(), "the load did not finish"
        ended = wait_for(lambda: all_ended(client, acked), timeout_s=300, what="every acked scan to end")
        events_by_scan = wait_for(lambda: announced(receiver, acked), timeout_s=120, what="every scan announced")
    finally:
        client.close()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        receiver.close()
        server.stop()
    states = {scan: task.state for scan, task in ended.items()}
    lost = SCANS - len(acked)
    stuck = sum(state not in ("completed", "failed") for state in states.values())
    failed = sorted(scan for scan, state in states.items() if state != "completed")
    duplicates = sum(len(ids) - 1 for ids in events_by_scan.values())
    orphans = sum(proc.poll() is None for proc in procs.values())
    print(f"\nacked {len(acked)}, lost {lost}, stuck {stuck}, duplicate-id events {duplicates}, orphans {orphans}")
    assert (len(acked), lost, stuck, duplicates, orphans) == (SCANS, 0, 0, 0, 0)
    assert not failed, {scan: ended[scan].error for scan in failed}
