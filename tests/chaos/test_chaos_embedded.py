"""Chaos on the embedded stack: ``scantide up`` under an enqueue load while its daemons are killed
with ``kill -9`` one after another (the API, the monitor, the conductor, the autoscaler, a worker and
the algorithm process under it), the webhook receiver goes down and comes back, and last the
supervisor itself is killed and a new ``scantide up`` takes over.

Every acknowledged scan must end completed and be announced under exactly one event id; nothing may
be left running once ``scantide up`` has stopped. The test prints
``acked N, lost 0, stuck 0, duplicate-id events 0, orphans 0`` and asserts it.

``make test`` runs it at a bounded scale; ``make chaos`` sets ``SCANTIDE_CHAOS_SCANS`` higher.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

import scantide
from service.algorithms import register_folder
from service.backends import open_backend
from service.settings import Settings, load_settings
from service.supervisor import cli_argv, settings_env
from service.synthetic import write_scan_video
from tests.chaos.support import SCANS, all_ended, announced, healthy, start_load
from tests.conftest import TOKEN, free_port, wait_for
from tests.monitor.receiver import Receiver

REPO = Path(__file__).resolve().parents[2]
SECRET = "chaos-webhook-secret-0123456789abcdef"
ALGORITHM = "algorithms.runners.executor"  # a worker slot's warm executor, running video_summary
VICTIMS = ("api", "monitor", "autoscaler", "worker", ALGORITHM, "conductor", "monitor", "api")

pytestmark = pytest.mark.chaos


def marked(pid: int) -> dict[int, str]:
    """Processes started under the supervisor ``pid``: their command lines."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if f"SCANTIDE_SUPERVISOR={pid}:".encode() not in (proc / "environ").read_bytes():
                continue
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
            if state != "Z":
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return found


def victim(supervisor: int, role: str) -> int | None:
    for pid, cmdline in marked(supervisor).items():
        if (role == ALGORITHM and ALGORITHM in cmdline) or (role != ALGORITHM and f"service.cli {role}" in cmdline):
            return pid
    return None


@pytest.fixture
def stack(tmp_path: Path):  # noqa: ANN201
    receiver = Receiver(SECRET)
    receiver.up()
    settings: Settings = load_settings(
        state_dir=tmp_path / "state", api_port=free_port(), api_tokens={TOKEN: ["enqueue", "read", "register"]},
        webhook_url=receiver.url, webhook_secret=SECRET, webhook_backoff_base_s=0.2, webhook_backoff_cap_s=1.0,
        monitor_poll_s=0.2, workers=2, local_idle_timeout_s=5.0, lease_s=4.0, heartbeat_s=0.5, worker_poll_s=0.1,
        autoscaler_tick_s=0.5)
    backend = open_backend(settings)
    register_folder(backend, settings, REPO / "examples" / "algorithms" / "frame_stats", by="chaos")
    backend.close()
    yield settings, receiver
    receiver.close()


def test_kill_nine_everything_under_load(stack) -> None:  # noqa: ANN001
    settings, receiver = stack
    video = settings.data_root / "scan.mp4"
    video.parent.mkdir(parents=True, exist_ok=True)
    write_scan_video(video, frames=24, fps=24.0, size=(48, 32))
    log = open(settings.state_dir / "up.log", "wb")
    env = {k: v for k, v in os.environ.items() if k != "SCANTIDE_SUPERVISOR"}
    up = subprocess.Popen(cli_argv("up"), env={**env, **settings_env(settings)}, stdout=log, stderr=log,
                          stdin=subprocess.DEVNULL)
    first = up  # the supervisor killed at the end
    url = f"http://127.0.0.1:{settings.api_port}"
    acked: dict[str, str] = {}
    client = scantide.Client(url, TOKEN, retries=12, timeout_s=10.0)
    try:
        wait_for(lambda: victim(up.pid, "api") and victim(up.pid, "monitor"), timeout_s=60, what="the stack")
        wait_for(lambda: healthy(url), timeout_s=60, what="the API")

        loader = start_load(client, acked)
        rng = random.Random(0)
        killed_tasks: set[str | None] = set()  # tasks whose algorithm process we killed: they fail, by contract
        for role in VICTIMS:  # one kill -9 after another while scans flow
            pid = wait_for(lambda r=role: victim(up.pid, r), timeout_s=60, interval_s=0.05, what=role) \
                if role in ("api", "monitor", "conductor", "autoscaler") else victim(up.pid, role)
            if pid is not None:
                if role == ALGORITHM:
                    killed_tasks.add(_task_of(pid))
                os.kill(pid, signal.SIGKILL)
            if role == "monitor":
                receiver.down()
                time.sleep(rng.uniform(0.5, 1.5))
                receiver.up()
            time.sleep(rng.uniform(0.3, 1.0))
        # Last, the supervisor itself: everything it ran must die with it, and a new one takes over.
        first.send_signal(signal.SIGKILL)
        first.wait()
        wait_for(lambda: not marked(first.pid), timeout_s=60, what="the killed supervisor's processes to end")
        up = subprocess.Popen(cli_argv("up"), env={**env, **settings_env(settings)}, stdout=log, stderr=log,
                              stdin=subprocess.DEVNULL)
        loader.join(timeout=300)
        assert not loader.is_alive(), "the load did not finish"

        ended = wait_for(lambda: all_ended(client, acked), timeout_s=300, what="every acked scan to end")
        states = {scan: task.state for scan, task in ended.items()}
        crashed = {scan for scan, task in ended.items() if task.task_id in killed_tasks
                   and task.state == "failed" and task.error["code"] == "algorithm_crashed"}
        events_by_scan = wait_for(lambda: announced(receiver, acked), timeout_s=120, what="every scan announced")
    finally:
        client.close()
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=120)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
    lost = SCANS - len(acked)
    stuck = sum(state not in ("completed", "failed") for state in states.values())
    failed = sorted(scan for scan, state in states.items() if state == "failed" and scan not in crashed)
    duplicates = sum(len(ids) - 1 for ids in events_by_scan.values())
    deadline = time.monotonic() + 30  # a worker draining after its supervisor went: give it a moment
    while (marked(up.pid) or marked(first.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = len(marked(up.pid)) + len(marked(first.pid))
    print(f"\nacked {len(acked)}, lost {lost}, stuck {stuck}, duplicate-id events {duplicates}, orphans {orphans}")
    assert (len(acked), lost, stuck, duplicates, orphans) == (SCANS, 0, 0, 0, 0)
    assert not failed, f"scans failed under chaos, other than those whose algorithm was killed: {failed}"


def _task_of(executor_pid: int) -> str | None:
    """The task an executor runs: its output goes to ``logs/<task id>-<attempt>/task.log`` (None: idle)."""
    try:
        log = Path(os.readlink(f"/proc/{executor_pid}/fd/1"))
    except OSError:
        return None
    return log.parent.name.rpartition("-")[0] if log.name == "task.log" else None


