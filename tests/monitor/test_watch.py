"""Watching the task store: paging from the persisted cursor, the events changes and alerts call
for, and the alert rules against real workers."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from monitor import events
from monitor.daemon import alert_config, delivery_policy, outbox_for
from monitor.outbox import Outbox
from monitor.watch import Watcher
from monitor.webhook import Deliverer
from service.backends.base import TaskBackend
from service.backends.embedded import EmbeddedBackend
from service.domain import Change, ChangePage, JobState, TaskInfo, Template
from service.settings import Settings
from tests.conftest import Workers, wait_for, wait_terminal
from tests.monitor.conftest import (
    QUEUE,
    WORKER,
    InProcessMonitor,
    complete,
    entries,
    result_for,
    start,
    submit,
    with_settings,
)
from tests.monitor.receiver import Receiver


class CountingBackend:
    """Delegates to a real backend and counts ``changes()`` calls."""

    def __init__(self, inner: TaskBackend) -> None:
        self.inner = inner
        self.changes_calls = 0

        self.cursors: list[str | None] = []  # the cursor of each call

    def changes(self, cursor: str | None, limit: int = 500) -> ChangePage:
        self.changes_calls += 1
        self.cursors.append(cursor)
        return self.inner.changes(cursor, limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def watcher_over(backend: Any, outbox: Outbox, settings: Settings, page_size: int = 500) -> Watcher:
    """A Watcher over any object with the backend's methods (the counting proxy)."""
    return Watcher(backend, outbox, alert_config(settings), page_size=page_size)


def test_5000_changes_between_polls(backend: TaskBackend, monitor_settings: Settings, receiver: Receiver) -> None:
    n = 1700
    scans = [f"scan-{i:04d}" for i in range(n)]
    for scan_id in scans:
        submit(backend, scan_id)
    for _ in scans:
        task = backend.claim(QUEUE, WORKER, 600)
        assert task is not None
        backend.finish(task.task_id, WORKER, result={"outputs": {}, "summary": {"n": 1}})
    total = len(backend.changes(None, 100_000).changes)
    assert total == 3 * n >= 5000

    counting = CountingBackend(backend)
    outbox = outbox_for(monitor_settings)
    watcher = watcher_over(counting, outbox, monitor_settings, page_size=500)
    assert watcher.poll_changes() == n
    pages = math.ceil(total / 500)
    assert pages <= counting.changes_calls <= pages + 1  # grows with pages, not with tasks
    last = backend.changes(None, 100_000).cursor
    # A restarted monitor resumes from the saved cursor: one call, from the last change, nothing new.
    restarted = CountingBackend(backend)
    assert watcher_over(restarted, outbox_for(monitor_settings), monitor_settings).poll_changes() == 0
    assert restarted.cursors == [last]

    stored = entries(outbox)
    assert len(stored) == n and {e.type for e in stored} == {"scan.completed"}
    assert {e.scan_id() for e in stored} == set(scans)

    # A second watcher with bigger pages over its own outbox builds the very same events.
    other = CountingBackend(backend)
    twin = Outbox(monitor_settings.state_dir / "twin.db")
    assert watcher_over(other, twin, monitor_settings, page_size=1000).poll_changes() == n
    assert math.ceil(total / 1000) <= other.changes_calls <= math.ceil(total / 1000) + 1
    assert [(e.id, e.body) for e in entries(twin)] == [(e.id, e.body) for e in stored]

    concurrency = 16
    policy = delivery_policy(with_settings(monitor_settings, webhook_concurrency=concurrency))
    assert policy is not None
    deliverer = Deliverer(outbox, policy)
    receiver.hold()  # the first sends stay in flight until released: their overlap is counted, not timed
    drainer = threading.Thread(target=deliverer.drain, kwargs={"timeout_s": 120}, daemon=True)
    drainer.start()
    try:
        wait_for(lambda: len(receiver.in_flight()) >= concurrency, 60, interval_s=0.02,
                 what=f"{concurrency} deliveries in flight at once")
    finally:
        receiver.release()
    drainer.join(timeout=180)
    assert not drainer.is_alive(), "the deliverer did not drain"
    assert outbox.counts() == {"pending": 0, "delivered": n, "dead": 0}
    got = receiver.received_ids()
    assert len(got) == n and set(got) == {e.id for e in stored}
    assert all(r.signature_error is None for r in receiver.records())
    assert receiver.peak_in_flight == concurrency  # sent concurrently, never more at once than allowed


def task_info(**fields: Any) -> TaskInfo:
    base: dict[str, Any] = dict(task_id="t-1", algorithm="video_summary", scan_id="scan-1", queue=QUEUE,
                                state=JobState.completed, params={"model_version": "v3", "metadata": {"a": 1}},
                                output_uri="/srv/out/scan-1", attempt=1, queued_at=1000.0, started_at=1001.0,
                                finished_at=1010.0)
    return TaskInfo(**{**base, **fields})


def test_false_success_guard(backend: TaskBackend, settings: Settings, monitor_settings: Settings,
                             receiver: Receiver) -> None:
    # As data: a completed change whose task recorded no result is a failure.
    guarded = events.from_change(Change("7", "t-1", JobState.completed, 1, 1010.0, task_info(result=None)))
    assert guarded is not None and guarded.type == "scan.failed"
    assert guarded.data["state"] == "failed" and guarded.data["outputs"] is None
    assert guarded.data["error"]["code"] == "no_result"
    genuine = events.from_change(Change("7", "t-1", JobState.completed, 1, 1010.0,
                                        task_info(result=result_for("scan-1"))))
    assert genuine is not None and genuine.type == "scan.completed" and genuine.data["error"] is None

    # Through the real store: an agent killed by SIGTERM marks its task completed with no result.
    task = start(backend, "scan-sigterm")
    with sqlite3.connect(settings.db_path) as db:
        now = time.time()
        db.execute("UPDATE tasks SET state = 'completed', finished_at = ?, lease_until = NULL WHERE id = ?",
                   (now, task.task_id))
        db.execute("INSERT INTO changes (task_id, state, attempt, at) VALUES (?, 'completed', ?, ?)",
                   (task.task_id, task.attempt, now))
    db.close()
    complete(backend, "scan-fine")
    monitor = InProcessMonitor(backend, monitor_settings)
    assert monitor.watcher.poll_changes() == 2
    monitor.deliverer.drain(timeout_s=30)
    (failed,) = receiver.events_for("scan-sigterm")
    assert failed.type == "scan.failed"
    assert failed.body["data"]["error"]["code"] == "no_result" and failed.body["data"]["state"] == "failed"
    (fine,) = receiver.events_for("scan-fine")
    assert fine.type == "scan.completed"


def test_backlog_breach_and_recovery(backend: TaskBackend, monitor_settings: Settings, receiver: Receiver) -> None:
    s = with_settings(monitor_settings, backlog_slo_s=0.2)
    outbox = outbox_for(s)
    watcher = Watcher(backend, outbox, alert_config(s))

    def backlog_events(status: str) -> list:
        return [e for e in entries(outbox) if e.type == "queue.backlog" and f'"status":"{status}"' in e.body.decode()]

    def over_slo() -> bool:
        return backend.queue_stats(QUEUE).oldest_queued_age_s > 0.3

    assert watcher.check_alerts() == 0
    first = submit(backend, "scan-waiting")
    wait_for(over_slo, 10, what="the queued task to pass the SLO")
    assert watcher.check_alerts() == 1
    assert watcher.check_alerts() == 0 and watcher.check_alerts() == 0
    assert Watcher(backend, outbox, alert_config(s)).check_alerts() == 0  # a restarted monitor remembers
    (breached,) = backlog_events("breached")
    assert breached.key == f"queue:{QUEUE}"

    claimed = backend.claim(QUEUE, WORKER, 60)
    assert claimed is not None and claimed.task_id == first.task_id
    backend.finish(claimed.task_id, WORKER, result=result_for("scan-waiting"))
    assert watcher.check_alerts() == 1
    assert watcher.check_alerts() == 0 and watcher.check_alerts() == 0
    (recovered,) = backlog_events("recovered")
    assert backlog_events("breached") == [breached]

    submit(backend, "scan-waiting-again")
    wait_for(over_slo, 10, what="the second breach")
    assert watcher.check_alerts() == 1 and watcher.check_alerts() == 0
    second = [e for e in backlog_events("breached") if e.id != breached.id]
    assert len(second) == 1  # a new breach is a new event

    policy = delivery_policy(s)
    assert policy is not None
    Deliverer(outbox, policy).drain(timeout_s=30)
    got = [(r.body["type"], r.body["data"]["status"]) for r in receiver.accepted()]
    assert got == [("queue.backlog", "breached"), ("queue.backlog", "recovered"), ("queue.backlog", "breached")]
    assert receiver.accepted()[0].body["data"]["queue"] == QUEUE
    assert receiver.accepted()[0].body["data"]["pending"] == 1


def test_deterministic_event_ids(backend: TaskBackend, settings: Settings) -> None:
    complete(backend, "scan-det")
    (change,) = [c for c in backend.changes(None, 100).changes if c.state is JobState.completed]
    a, b = events.from_change(change), events.from_change(change)
    assert a is not None and b is not None
    assert (a.id, a.body()) == (b.id, b.body())
    # Another connection to the same store (a restarted monitor) builds the same event.
    fresh = EmbeddedBackend(settings.db_path)
    try:
        (again,) = [c for c in fresh.changes(None, 100).changes if c.state is JobState.completed]
    finally:
        fresh.close()
    c = events.from_change(again)
    assert c is not None and (c.id, c.body()) == (a.id, a.body())
    # What the event is about decides the id: another attempt or state is another event.
    retried = events.from_change(Change(change.cursor, change.task_id, change.state, change.attempt + 1, change.at,
                                        change.task))
    failed = events.from_change(Change(change.cursor, change.task_id, JobState.failed, change.attempt, change.at,
                                       change.task))
    assert retried is not None and failed is not None and len({a.id, retried.id, failed.id}) == 3
    # Alerts: the same stall or breach keeps its id whatever the time it is noticed at.
    task = change.task
    assert events.stalled(task, "no_heartbeat", "for 61 s", 1.0).id == events.stalled(task, "no_heartbeat",
                                                                                       "for 99 s", 2.0).id
    assert events.stalled(task, "no_heartbeat", "", 1.0).id != events.stalled(task, "max_runtime", "", 1.0).id
    assert events.backlog(QUEUE, "breached", 1, 700, 3, 600, 1.0).id == events.backlog(QUEUE, "breached", 1, 900,
                                                                                       5, 600, 2.0).id
    assert events.backlog(QUEUE, "breached", 1, 700, 3, 600, 1.0).id != events.backlog(QUEUE, "breached", 2, 700,
                                                                                       3, 600, 1.0).id


def entry_pid(settings: Settings, task_id: str, attempt: int) -> int | None:
    try:
        return int((settings.state_dir / "logs" / f"{task_id}-{attempt}" / "entry.pid").read_text())
    except (OSError, ValueError):
        return None


def kill_quietly(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_worker_killed_mid_task_stalls_then_requeued_outcome(backend: TaskBackend, monitor_settings: Settings,
                                                             receiver: Receiver, tmp_path: Path) -> None:
    s = with_settings(monitor_settings, stall_no_heartbeat_s=1.0, lease_s=3.0)
    backend.register_template(Template(name="slow", entry_point="tests.support.slow_entry", queue="q-stall",
                                       params={}, max_runtime_s=60.0))
    # The first attempt hangs; the re-queued one sleeps 1 s and completes.
    task = backend.submit("slow", "scan-stall", {"scan_id": "scan-stall", "mode": "sleep", "seconds": 1.0,
                                                 "first_run": {"marker": str(tmp_path / "first-run"), "mode": "hang"}},
                          "/nonexistent/out/scan-stall").task
    monitor = InProcessMonitor(backend, s).start()
    workers = Workers(s)
    hung_pid = None
    try:
        (first,) = workers.start(1, "--queue", "q-stall")
        hung_pid = wait_for(lambda: entry_pid(s, task.task_id, 1), 60, what="the first attempt to start")
        running = backend.get_task(task.task_id)
        assert running.state is JobState.running and running.attempt == 1
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        kill_quietly(hung_pid)  # the task ran in its own session; with its worker gone it must go too

        monitor.alerts = True
        stalls = wait_for(lambda: [e for e in entries(monitor.outbox) if e.type == "scan.stalled"], 30,
                          what="scan.stalled")
        assert backend.get_task(task.task_id).state is JobState.running  # noticed before the lease ran out

        requeued = wait_for(backend.reap_expired, 30, what="the lease to expire")
        assert [(t.task_id, t.state, t.attempt) for t in requeued] == [(task.task_id, JobState.queued, 1)]
        workers.start(1, "--queue", "q-stall")
        done = wait_terminal(backend, task.task_id, 60)
        assert done.state is JobState.completed and done.attempt == 2
        wait_for(lambda: any(r.type == "scan.completed" for r in receiver.events_for("scan-stall")), 30,
                 what="scan.completed delivered")
    finally:
        monitor.stop()
        workers.stop_all()
        kill_quietly(hung_pid)

    got = receiver.events_for("scan-stall")
    types = [r.type for r in got]
    assert types[-1] == "scan.completed" and "scan.failed" not in types
    stall = got[0]
    assert stall.type == "scan.stalled" and stall.event_id == stalls[0].id
    assert stall.body["data"]["stall"]["reason"] == "no_heartbeat" and stall.body["data"]["attempt"] == 1
    assert stall.body["data"]["state"] == "running"
    completed = got[-1].body["data"]
    assert completed["attempt"] == 2 and completed["state"] == "completed"
    assert completed["task_id"] == task.task_id and completed["outputs"]["uri"] == "/nonexistent/out/scan-stall"
