"""Warm executors and slots, through real ``scantide worker`` processes and a ``python`` algorithm
registered from a folder written here: one process serves task after task of a version, with the
isolation a process per task gives (environment, home, output, timeout, crash, stop), and a worker
with several slots runs several tasks at once. The doorbell wakes an idle worker and the monitor."""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest

from service.algorithms import register_folder
from service.backends.base import TaskBackend
from service.domain import JobState, ScanRequest, TaskInfo
from service.enqueue import submit_scan
from service.settings import Settings
from tests.conftest import Workers, wait_for, wait_terminal
from tests.monitor.conftest import SECRET, MonitorProcess, with_settings
from tests.monitor.receiver import Receiver

MODULE = '''
import os, signal, tempfile, time

MARK = "{mark}"
BALLAST = []

def run(scan_path, params, out_dir, progress=None):
    mode = params["mode"]
    print("algorithm output", mode, os.getpid(), flush=True)
    started = time.time()
    if mode == "sleep":
        time.sleep(params["seconds"])
    elif mode == "hang":
        time.sleep(600)
    elif mode == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "grow":
        BALLAST.append(b"x" * (200 * 2**20))
    progress(0.5)
    return {{"pid": os.getpid(), "mark": MARK, "env": sorted(os.environ), "home": os.environ["HOME"],
             "tmp": tempfile.gettempdir(), "cwd": os.getcwd(), "started": started, "ended": time.time()}}
'''

DESCRIPTOR = '''
name: warmprobe
version: "{version}"
python: "warmprobe:run"
parameters:
  mode: {{type: string, enum: [ok, sleep, hang, die, grow], default: ok}}
  seconds: {{type: number, default: 0}}
resources: {{timeout_s: 3, max_attempts: 1}}
'''


@pytest.fixture
def registered(tmp_path: Path, settings: Settings, backend: TaskBackend, make_video) -> None:
    make_video("scan.mp4", frames=6, size=(64, 48))
    for version in ("1", "2"):
        folder = tmp_path / f"warmprobe-{version}"
        folder.mkdir()
        (folder / "warmprobe.py").write_text(textwrap.dedent(MODULE.format(mark=f"v{version}")))
        (folder / "scantide-algorithm.yaml").write_text(textwrap.dedent(DESCRIPTOR.format(version=version)))
        register_folder(backend, settings, folder, by="test")


def submit(backend: TaskBackend, settings: Settings, scan_id: str, version: str = "2", **params: object) -> str:
    request = ScanRequest(scan_id=scan_id, scan_uri="scan.mp4", algorithm="warmprobe", algorithm_version=version,
                          params={"mode": "ok", **params})
    return submit_scan(backend, settings, request).task.task_id


def run_in_turn(backend: TaskBackend, settings: Settings, submissions: list[tuple[str, dict]]) -> list[TaskInfo]:
    """Submit each (version, params) once the previous task has ended; the tasks, ended."""
    done = []
    for i, (version, params) in enumerate(submissions):
        done.append(wait_terminal(backend, submit(backend, settings, f"s{i}", version, **params), timeout_s=120))
    return done


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def task_log(settings: Settings, task: TaskInfo) -> str:
    return (settings.state_dir / "logs" / f"{task.task_id}-{task.attempt}" / "task.log").read_text()


def pids(tasks: list[TaskInfo]) -> list[int]:
    return [(t.result or {})["pid"] for t in tasks]


@pytest.mark.usefixtures("registered")
def test_one_executor_serves_task_after_task_of_a_version(backend: TaskBackend, settings: Settings,
                                                          workers: Workers) -> None:
    workers.env.update(AWS_SECRET_ACCESS_KEY="not-for-algorithms")
    (worker,) = workers.start(1)
    tasks = run_in_turn(backend, settings, [("2", {}), ("2", {}), ("2", {}), ("1", {}), ("2", {})])
    assert all(t.state is JobState.completed for t in tasks), [t.error for t in tasks]
    results = [t.result or {} for t in tasks]
    # one process for the three tasks of version 2, another for version 1, and a new one back on 2:
    # a version's code is its own, never the module another version left imported
    assert [r["mark"] for r in results] == ["v2", "v2", "v2", "v1", "v2"]
    first = pids(tasks)
    assert first[0] == first[1] == first[2] != first[3] != first[4] and first[4] != first[0]
    assert worker.pid not in first
    for task, result in zip(tasks, results, strict=True):
        # none of the worker's credentials or settings; a home, a temp dir and a folder of its own per task
        assert not [k for k in result["env"] if k.startswith(("SCANTIDE_", "AWS_", "CLEARML_"))]
        assert "scantide-run-" in result["home"] and result["tmp"] == result["home"]
        assert result["cwd"] == str(Path(result["home"]).parent)
        assert f"algorithm output ok {result['pid']}" in task_log(settings, task)
        assert task.progress == 1.0
    assert len({r["home"] for r in results}) == len(results)
    wait_for(lambda: not alive(first[0]), timeout_s=30, what="the replaced executor to exit")


@pytest.mark.usefixtures("registered")
def test_timeout_and_crash_replace_the_executor(backend: TaskBackend, settings: Settings, workers: Workers) -> None:
    workers.start(1)
    hung, died, after = run_in_turn(backend, settings, [("2", {"mode": "hang"}), ("2", {"mode": "die"}), ("2", {})])
    assert (hung.state, hung.error.code if hung.error else None) == (JobState.failed, "timeout")
    hung_pid = int(hung.error.log_tail.split("algorithm output hang", 1)[1].split()[0])
    assert not alive(hung_pid)
    assert (died.state, died.error.code if died.error else None) == (JobState.failed, "algorithm_crashed")
    assert "signal 9" in died.error.message and "algorithm output die" in died.error.log_tail
    assert after.state is JobState.completed and (after.result or {})["pid"] not in (hung_pid,)


@pytest.mark.usefixtures("registered")
def test_an_executor_is_replaced_after_max_tasks_and_above_its_memory_limit(backend: TaskBackend, settings: Settings,
                                                                            workers: Workers) -> None:
    workers.env.update(SCANTIDE_EXECUTOR_MAX_TASKS="2", SCANTIDE_EXECUTOR_MAX_RSS_MIB="128")
    workers.start(1)
    tasks = run_in_turn(backend, settings, [("2", {})] * 4 + [("2", {"mode": "grow"}), ("2", {})])
    assert all(t.state is JobState.completed for t in tasks), [t.error for t in tasks]
    p = pids(tasks)
    assert p[0] == p[1] != p[2] == p[3] != p[4] != p[5]  # two tasks each; the one that grew past 128 MiB goes


@pytest.mark.usefixtures("registered")
def test_a_second_stop_kills_the_running_executor(backend: TaskBackend, settings: Settings, workers: Workers) -> None:
    (worker,) = workers.start(1)
    task_id = submit(backend, settings, "stopped", mode="sleep", seconds=60)
    log_path = settings.state_dir / "logs" / f"{task_id}-1" / "task.log"
    wait_for(lambda: log_path.exists() and "algorithm output" in log_path.read_text(), timeout_s=60,
             what="the algorithm to start")
    pid = int(log_path.read_text().split("algorithm output sleep", 1)[1].split()[0])
    worker.send_signal(signal.SIGTERM)  # drain: the task goes on
    worker_log = settings.state_dir / "test-logs" / "worker-0.log"
    wait_for(lambda: "worker_drain" in worker_log.read_text(), timeout_s=30, what="the worker to drain")
    worker.send_signal(signal.SIGTERM)  # abort
    task = wait_terminal(backend, task_id, timeout_s=60)
    assert (task.state, task.error.code if task.error else None) == (JobState.failed, "aborted")
    assert worker.wait(timeout=30) == 0 and not alive(pid)


@pytest.mark.usefixtures("registered")
def test_slots_run_tasks_at_once_each_with_its_own_registration_and_executor(
        backend: TaskBackend, settings: Settings, workers: Workers) -> None:
    (worker,) = workers.start(1, "--worker-id", "box", "--slots", "2")
    wait_for(lambda: len(backend.workers()) == 2, timeout_s=60, what="both slots to register")
    assert sorted(w.worker_id for w in backend.workers()) == ["box:0", "box:1"]
    ids = [submit(backend, settings, f"pair-{i}", mode="sleep", seconds=2) for i in range(2)]
    first, second = (wait_terminal(backend, i, timeout_s=120) for i in ids)
    assert first.state is second.state is JobState.completed
    assert {first.worker_id, second.worker_id} == {"box:0", "box:1"}
    a, b = first.result or {}, second.result or {}
    assert a["pid"] != b["pid"]
    assert a["started"] < b["ended"] and b["started"] < a["ended"]  # the two ran at the same time
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert backend.workers() == []


@pytest.mark.usefixtures("registered")
def test_without_warm_executors_each_task_has_a_process_of_its_own(backend: TaskBackend, settings: Settings,
                                                                    workers: Workers) -> None:
    workers.env.update(SCANTIDE_WORKER_WARM="false")
    workers.start(1)
    tasks = run_in_turn(backend, settings, [("2", {}), ("2", {})])
    assert all(t.state is JobState.completed for t in tasks)
    assert pids(tasks)[0] != pids(tasks)[1]


@pytest.mark.usefixtures("registered")
def test_the_doorbell_wakes_an_idle_worker_and_the_monitor(backend: TaskBackend, settings: Settings,
                                                           workers: Workers) -> None:
    """Polls of an hour: only the doorbell can have the task claimed and its event sent."""
    with Receiver(SECRET) as receiver:
        slow = with_settings(settings, worker_poll_s=3600.0, monitor_poll_s=3600.0, webhook_url=receiver.url,
                             webhook_secret=SECRET)
        monitor = MonitorProcess(slow)
        monitor.start()
        workers.env.update(SCANTIDE_WORKER_POLL_S="3600", SCANTIDE_MONITOR_POLL_S="3600")
        workers.start(1)
        try:
            wait_for(lambda: backend.workers() and backend.workers()[0].idle_since, timeout_s=60,
                     what="the worker to find the queue empty")
            wait_for(lambda: "monitor_started" in monitor.log_path.read_text(), timeout_s=60,
                     what="the monitor to start")
            task = wait_terminal(backend, submit(backend, settings, "rung"), timeout_s=60)
            assert task.state is JobState.completed
            wait_for(lambda: [r for r in receiver.events_for("rung") if r.type == "scan.completed"], timeout_s=60,
                     what="the completion event")
        finally:
            monitor.stop()
