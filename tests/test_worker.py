"""Real ``scantide worker`` subprocesses running real task processes (``tests.support.slow_entry``
and the shipped ``algorithms.entry``) against a real SQLite store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from service.backends.base import TaskBackend
from service.domain import JobState, ScanRequest, TaskInfo, Template
from service.enqueue import submit_scan
from service.settings import Settings
from tests.conftest import Workers, wait_for, wait_terminal

QUEUE = "q-slow"


def register_slow(backend: TaskBackend, max_runtime_s: float = 60.0) -> None:
    backend.register_template(Template(name="slow", entry_point="tests.support.slow_entry", queue=QUEUE, params={},
                                       max_runtime_s=max_runtime_s))


def submit_slow(backend: TaskBackend, scan_id: str, **params: Any) -> TaskInfo:
    return backend.submit("slow", scan_id, {"scan_id": scan_id, **params}, f"/nonexistent/out/{scan_id}").task


def start_worker(workers: Workers, queue: str = QUEUE) -> subprocess.Popen:
    (proc,) = workers.start(1, "--queue", queue)
    return proc


def entry_pid(settings: Settings, task_id: str, attempt: int) -> int | None:
    """The pid slow_entry wrote for this attempt of the task, once it has started."""
    try:
        return int((settings.state_dir / "logs" / f"{task_id}-{attempt}" / "entry.pid").read_text())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def ensure_dead(pid: int | None) -> None:
    if pid is not None and alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def ran_on(task: TaskInfo, proc: subprocess.Popen) -> bool:
    """Whether ``proc`` is the worker that holds or held ``task`` (worker ids embed the pid)."""
    return task.worker_id is not None and f":{proc.pid}:" in task.worker_id


def history(backend: TaskBackend, task_id: str) -> list[tuple[JobState, int]]:
    page = backend.changes(None, limit=10_000)
    return [(c.state, c.attempt) for c in page.changes if c.task_id == task_id]


def test_task_completes_with_result_and_progress(backend: TaskBackend, settings: Settings, workers: Workers) -> None:
    register_slow(backend)
    task = submit_slow(backend, "scan-ok", mode="sleep", seconds=3)
    worker = start_worker(workers)

    seen: list[float] = []

    def done() -> TaskInfo | None:
        t = backend.get_task(task.task_id)
        if t.state is JobState.running and t.progress is not None:
            seen.append(t.progress)
        return t if t.state.terminal else None

    final: TaskInfo = wait_for(done, 60, what="the task to end")  # type: ignore[assignment]
    assert final.state is JobState.completed, final.error
    assert final.attempt == 1
    assert final.error is None
    assert final.progress == 1.0
    assert any(0 < p < 1 for p in seen), seen  # heartbeats carried the child's progress
    assert final.result is not None
    assert final.result["mode"] == "sleep" and final.result["slept_s"] == 3
    assert final.result["task_id"] == task.task_id and final.result["scan_id"] == "scan-ok"
    assert ran_on(final, worker)
    assert history(backend, task.task_id) == [(JobState.queued, 0), (JobState.running, 1), (JobState.completed, 1)]
    log = (settings.state_dir / "logs" / f"{task.task_id}-1" / "task.log").read_text()
    assert "slow_entry done" in log
    # The worker is back to idle and still serving.
    (info,) = backend.workers(QUEUE)
    assert info.task_id is None and info.idle_since is not None
    assert worker.poll() is None


def test_refused_input_and_crash_fail_with_log_tail(backend: TaskBackend, workers: Workers) -> None:
    register_slow(backend)
    refused = submit_slow(backend, "scan-fail", mode="fail")
    crashed = submit_slow(backend, "scan-crash", mode="crash")
    worker = start_worker(workers)

    failed = wait_terminal(backend, refused.task_id, 60)
    assert failed.state is JobState.failed
    assert failed.result is None
    assert failed.error is not None
    assert failed.error.code == "bad_input"
    assert failed.error.message == "the scan is not a dental video"
    assert "marker-fail-log" in failed.error.log_tail

    crash = wait_terminal(backend, crashed.task_id, 60)
    assert crash.state is JobState.failed
    assert crash.result is None
    assert crash.error is not None
    assert crash.error.code == "algorithm_crashed"
    assert "status 3" in crash.error.message
    assert "marker-crash-log" in crash.error.log_tail
    assert crash.attempt == 1  # a crash is an outcome, not a lost worker: no retry
    assert ran_on(failed, worker) and ran_on(crash, worker)
    assert worker.poll() is None


def test_hard_timeout_kills_the_task_and_the_worker_goes_on(
    backend: TaskBackend, settings: Settings, workers: Workers
) -> None:
    register_slow(backend, max_runtime_s=2)
    hung = submit_slow(backend, "scan-hang", mode="hang")
    after = submit_slow(backend, "scan-after", mode="sleep", seconds=0.2)
    worker = start_worker(workers)

    pid = wait_for(lambda: entry_pid(settings, hung.task_id, 1), 60, what="the hanging task to start")
    try:
        timed_out = wait_terminal(backend, hung.task_id, 60)
        assert timed_out.state is JobState.failed
        assert timed_out.error is not None
        assert timed_out.error.code == "timeout"
        assert "2 s" in timed_out.error.message
        assert "slow_entry hanging" in timed_out.error.log_tail
        assert not alive(pid)  # killed with its process group, not left behind

        nxt = wait_terminal(backend, after.task_id, 60)
        assert nxt.state is JobState.completed, nxt.error
        assert ran_on(timed_out, worker) and ran_on(nxt, worker)
    finally:
        ensure_dead(pid)


def test_heartbeats_keep_a_task_longer_than_its_lease(
    backend: TaskBackend, settings: Settings, workers: Workers
) -> None:
    register_slow(backend)
    seconds = 2 * settings.lease_s
    task = submit_slow(backend, "scan-long", mode="sleep", seconds=seconds)
    start_worker(workers)

    reaped: list[TaskInfo] = []

    def done() -> TaskInfo | None:
        # Reap as the supervisor does: a task whose heartbeats stopped would be re-queued here.
        reaped.extend(backend.reap_expired())
        t = backend.get_task(task.task_id)
        return t if t.state.terminal else None

    final: TaskInfo = wait_for(done, 90, interval_s=0.2, what="the long task to end")  # type: ignore[assignment]
    assert reaped == []
    assert final.state is JobState.completed, final.error
    assert final.attempt == 1
    assert final.result is not None and final.result["slept_s"] == seconds
    assert history(backend, task.task_id) == [(JobState.queued, 0), (JobState.running, 1), (JobState.completed, 1)]


def test_sigterm_drains(backend: TaskBackend, settings: Settings, workers: Workers) -> None:
    register_slow(backend)
    first = submit_slow(backend, "scan-first", mode="sleep", seconds=3)
    second = submit_slow(backend, "scan-second", mode="sleep", seconds=0.2)
    worker = start_worker(workers)

    wait_for(lambda: entry_pid(settings, first.task_id, 1), 60, what="the first task to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0

    done = backend.get_task(first.task_id)
    assert done.state is JobState.completed, done.error
    assert done.attempt == 1
    assert ran_on(done, worker)
    left = backend.get_task(second.task_id)
    assert left.state is JobState.queued
    assert left.attempt == 0 and left.worker_id is None
    assert history(backend, second.task_id) == [(JobState.queued, 0)]
    assert backend.workers(QUEUE) == []  # it unregistered on its way out


def test_killed_worker_loses_its_task_and_its_child(
    backend: TaskBackend, settings: Settings, workers: Workers, tmp_path: Path
) -> None:
    register_slow(backend)
    # The first run hangs (so only the worker's death can end it); the retry succeeds quickly.
    task = submit_slow(backend, "scan-kill", mode="sleep", seconds=0.3,
                       first_run={"marker": str(tmp_path / "first-run-started"), "mode": "hang"})
    doomed = start_worker(workers)

    pid: int = wait_for(lambda: entry_pid(settings, task.task_id, 1), 60,  # type: ignore[assignment]
                        what="the first attempt to start")
    try:
        assert alive(pid)
        doomed.kill()
        doomed.wait(timeout=30)
        wait_for(lambda: not alive(pid), 15, what=f"the algorithm process {pid} to die with its worker")
    finally:
        ensure_dead(pid)

    assert backend.get_task(task.task_id).state is JobState.running  # nobody knows yet
    (requeued,) = wait_for(backend.reap_expired, 30, interval_s=0.2, what="the lease to run out")  # type: ignore[misc]
    assert requeued.task_id == task.task_id
    assert requeued.state is JobState.queued
    assert requeued.attempt == 1

    rescuer = start_worker(workers)
    final = wait_terminal(backend, task.task_id, 60)
    assert final.state is JobState.completed, final.error
    assert final.attempt == 2
    assert ran_on(final, rescuer)
    assert final.result is not None and final.result["pid"] != pid
    assert history(backend, task.task_id) == [(JobState.queued, 0), (JobState.running, 1), (JobState.queued, 1),
                                              (JobState.running, 2), (JobState.completed, 2)]


def test_real_algorithm_end_to_end(backend: TaskBackend, settings: Settings, workers: Workers, make_video) -> None:
    video = make_video("scan-e2e.mp4", frames=48)
    sub = submit_scan(backend, settings, ScanRequest(scan_id="scan-e2e", scan_uri="scan-e2e.mp4"))
    assert sub.created
    worker = start_worker(workers, settings.default_queue)

    final = wait_terminal(backend, sub.task.task_id, 120)
    assert final.state is JobState.completed, final.error
    assert ran_on(final, worker)
    result = final.result
    assert result is not None
    assert result["summary"]["frame_count"] == video["frames"]
    assert result["summary"]["width"] == video["width"] and result["summary"]["height"] == video["height"]
    assert result["output_uri"] == final.output_uri
    outputs = result["outputs"]
    assert outputs["keyframes"], outputs
    out_dir = Path(final.output_uri)
    assert (out_dir / outputs["summary"]).is_file()
    for name in outputs["keyframes"]:
        assert (out_dir / name).is_file()
    summary = json.loads((out_dir / outputs["summary"]).read_text())
    assert summary["frame_count"] == video["frames"]
