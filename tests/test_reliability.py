"""Processes that die: a worker killed outright is forgotten, `scantide up` killed outright leaves
nothing running, and two `scantide up` never share a state dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from service.backends.base import TaskBackend
from service.backends.embedded import EmbeddedBackend
from service.settings import Settings
from tests.conftest import ApiServer, Workers, wait_for


def test_a_silent_workers_registration_expires(tmp_path: Path) -> None:
    backend = EmbeddedBackend(tmp_path / "s.db", worker_expiry_s=30.0)
    backend.register_worker("alive", "default")
    backend.register_worker("killed", "default")
    with backend.db.tx() as db:  # its last heartbeat a minute ago: killed with kill -9
        db.execute("UPDATE workers SET last_seen = last_seen - 60 WHERE id = 'killed'")
    assert [w.worker_id for w in backend.workers()] == ["alive"]
    assert [w.worker_id for w in backend.workers("default")] == ["alive"]
    backend.reap_expired()
    with backend.db.tx(write=False) as db:
        assert [r[0] for r in db.execute("SELECT id FROM workers")] == ["alive"]


def test_a_worker_killed_outright_leaves_the_queue_view(api: ApiServer, workers: Workers, backend: TaskBackend,
                                                         settings: Settings) -> None:
    (proc,) = workers.start(1)
    with api.client() as client:
        def count() -> int:
            return sum(q["workers"] for q in client.get("/v1/queues").json()["queues"])

        wait_for(lambda: count() == 1, timeout_s=30, what="the worker to register")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_for(lambda: count() == 0, timeout_s=60, what="the killed worker to expire")


def up(settings: Settings, *args: str) -> subprocess.Popen:
    from service.supervisor import cli_argv, settings_env

    log = open(settings.state_dir / f"up-{len(list(settings.state_dir.glob('up-*.log')))}.log", "wb")
    env = {**os.environ, **settings_env(settings)}
    env.pop("SCANTIDE_SUPERVISOR", None)
    return subprocess.Popen(cli_argv("up", *args), env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)


def marked_by(pid: int) -> list[int]:
    """Processes started under the supervisor ``pid`` (directly or not), by their mark."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"SCANTIDE_SUPERVISOR={pid}:".encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            pass
    return found


def alive(pids: list[int]) -> list[int]:
    from service.processes import start_time

    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
        except OSError:
            return False

    return [p for p in pids if start_time(p) is not None and running(p)]


def test_scantide_up_killed_outright_leaves_nothing_running_and_one_runs_per_state_dir(settings: Settings) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    first = up(settings, "--fixed", "--workers", "1")
    try:
        # api, monitor, conductor and one worker
        children = wait_for(lambda: (found := marked_by(first.pid)) and len(found) >= 4 and found, timeout_s=60,
                            what="scantide up's children")
        second = up(settings)
        assert second.wait(timeout=60) != 0
        said = sorted(settings.state_dir.glob("up-*.log"))[-1].read_text()
        assert f"another `scantide up` (pid {first.pid}) is running on" in said
        first.send_signal(signal.SIGKILL)
        first.wait()
        wait_for(lambda: not alive(children), timeout_s=60, what=f"the children {alive(children)} to die")
        again = up(settings)  # the lock went with the killed process
        wait_for(lambda: len(marked_by(again.pid)) >= 3, timeout_s=60, what="a new scantide up to start")
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=120) == 0
    finally:
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()


def test_a_new_scantide_up_ends_what_a_killed_one_left(settings: Settings) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    mark = f"999999:1:{settings.state_dir.resolve()}"  # a supervisor that is gone
    other = f"999999:1:{(settings.state_dir.parent / 'another').resolve()}"
    left = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                            env={**os.environ, "SCANTIDE_SUPERVISOR": mark}, start_new_session=True)
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                 env={**os.environ, "SCANTIDE_SUPERVISOR": other}, start_new_session=True)
    stack = up(settings)
    try:
        assert left.wait(timeout=60) is not None
        assert unrelated.poll() is None  # another state dir's: not ours to end
    finally:
        stack.send_signal(signal.SIGTERM)
        stack.wait(timeout=120)
        unrelated.kill()
        unrelated.wait()


CHILD = """
import signal, sys, time
name, journal = sys.argv[1], sys.argv[2]
def note(what):
    with open(journal, "a") as f:
        f.write(f"{name} {what}\\n")
def stop(*_):
    note("stopping")
    time.sleep(float(sys.argv[3]))  # a worker finishing its task, a monitor delivering
    note("stopped")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
note("ready")
while True:
    time.sleep(0.05)
"""


def test_a_graceful_stop_drains_workers_before_the_monitor_stops(settings: Settings, backend: TaskBackend,
                                                                 tmp_path: Path) -> None:
    """Intake stops first, the workers finish, then the conductor and the monitor announce it."""
    from service.supervisor import Child, Supervisor

    journal = tmp_path / "journal"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    names = ("monitor", "worker-0", "conductor", "api", "worker-1")
    children = [Child(n, [sys.executable, str(script), n, str(journal), "0.5" if n.startswith("worker") else "0"])
                for n in names]
    supervisor = Supervisor(settings, backend, children, grace_s=60)
    for child in children:
        supervisor._check(child, 0.0)
    wait_for(lambda: journal.exists() and journal.read_text().count("ready") == len(names), timeout_s=30)
    supervisor._stop_all()
    lines = [line for line in journal.read_text().splitlines() if not line.endswith("ready")]
    at = {line: i for i, line in enumerate(lines)}
    assert at["api stopped"] < min(at["worker-0 stopping"], at["worker-1 stopping"])
    assert max(at["worker-0 stopped"], at["worker-1 stopped"]) < at["conductor stopping"]
    assert at["conductor stopped"] < at["monitor stopping"]


def test_the_state_dir_is_this_users_alone(tmp_path: Path) -> None:
    """Tokens, the store, logs and outputs: 0700 folders, 0600 files, an existing open folder closed."""
    from service.supervisor import cli_argv

    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANTIDE_")}
    env.update(SCANTIDE_STATE_DIR=str(state), SCANTIDE_CONFIG=str(tmp_path / "absent.toml"))
    subprocess.run(cli_argv("status"), env=env, check=True, capture_output=True, timeout=120)
    assert state.stat().st_mode & 0o777 == 0o700
    db = state / "scantide.db"
    assert db.stat().st_mode & 0o777 == 0o600
    created = [p for p in state.rglob("*") if p.is_file()]
    assert created and all(p.stat().st_mode & 0o077 == 0 for p in created), \
        [(p.name, oct(p.stat().st_mode)) for p in created if p.stat().st_mode & 0o077]


def test_a_stopping_monitor_announces_what_finished_during_the_drain(settings: Settings, backend: TaskBackend,
                                                                     data_root: Path) -> None:
    """A task that ends after the monitor's last tick (a worker finishing while the stack stops) is
    announced before the monitor exits, not at its next start."""
    from service.supervisor import cli_argv, settings_env
    from tests.monitor.receiver import Receiver

    secret = "stop-order-secret-0123456789abcdef"
    receiver = Receiver(secret)
    receiver.up()
    try:
        watched = settings.model_copy(update={"webhook_url": receiver.url, "webhook_secret": secret,
                                              "monitor_poll_s": 3600.0})  # it reads changes at start, then not
        (data_root / "scan.mp4").write_bytes(b"x")
        submitted = backend.submit("video_summary", "s-drain", {"scan_id": "s-drain", "scan_uri": "scan.mp4"},
                                   str(data_root / "out"))
        log = open(settings.state_dir / "monitor.log", "wb")
        monitor = subprocess.Popen(cli_argv("monitor"), env={**os.environ, **settings_env(watched)}, stdout=log,
                                   stderr=log, stdin=subprocess.DEVNULL)
        wait_for(lambda: "monitor_started" in (settings.state_dir / "monitor.log").read_text(), timeout_s=60)
        backend.register_worker("w", "default")
        task = backend.claim(submitted.task.queue, "w", 30.0)
        assert task is not None and task.task_id == submitted.task.task_id
        backend.finish(task.task_id, "w", result={"ok": True})
        monitor.send_signal(signal.SIGTERM)
        assert monitor.wait(timeout=60) == 0
        assert [r.body["type"] for r in receiver.accepted()] == ["scan.completed"]
    finally:
        receiver.close()
