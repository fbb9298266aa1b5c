"""Webhook delivery end to end: the monitor's real parts (in-process, or the `scantide monitor`
subprocess) against a real receiver over loopback HTTP, with the backend making real changes."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from monitor.outbox import Outbox
from monitor.watch import CURSOR
from service.backends.base import TaskBackend
from service.domain import TaskError
from service.settings import Settings
from tests.conftest import wait_for
from tests.monitor.conftest import (
    WORKER,
    InProcessMonitor,
    MonitorProcess,
    complete,
    entries,
    result_for,
    run_cli,
    start,
    with_settings,
)
from tests.monitor.receiver import Receiver, Reply


def stall_then_fail(backend: TaskBackend, monitor: InProcessMonitor, scan_id: str) -> None:
    """A scan with two events: scan.stalled (no heartbeat) and then scan.failed."""
    task = start(backend, scan_id)
    later = time.time() + monitor.settings.stall_no_heartbeat_s + 5
    assert monitor.watcher.check_alerts(now=later) == 1
    backend.finish(task.task_id, WORKER, error=TaskError.make("bad_input", "not a dental video", "marker-tail"))


def all_delivered(outbox: Outbox, n: int) -> bool:
    counts = outbox.counts()
    return counts["delivered"] == n and counts["pending"] == 0 and counts["dead"] == 0


def test_receiver_down_then_up(backend: TaskBackend, monitor_settings: Settings, receiver: Receiver) -> None:
    receiver.down()
    monitor = InProcessMonitor(backend, monitor_settings).start()
    try:
        ok_scans = [f"scan-ok-{i}" for i in range(3)]
        for scan_id in ok_scans:
            complete(backend, scan_id)
        stall_then_fail(backend, monitor, "scan-two")

        def retried_while_down() -> bool:
            es = entries(monitor.outbox)
            heads = [e for e in es if e.type != "scan.failed"]
            return len(es) == 5 and all(e.attempts >= 2 and e.state == "pending" for e in heads)

        wait_for(retried_while_down, 30, what="every event to fail twice against the down receiver")
        # The scan's second event never went out while its first kept failing.
        (failed,) = [e for e in entries(monitor.outbox) if e.type == "scan.failed"]
        assert failed.attempts == 0 and failed.state == "pending"
        assert all(e.last_error and "connection failed" in e.last_error
                   for e in entries(monitor.outbox) if e.attempts)
        assert receiver.records() == []

        receiver.up()
        receiver.answer_ok(delay_s=0.2)
        wait_for(lambda: all_delivered(monitor.outbox, 5), 30, what="every event delivered")
    finally:
        monitor.stop()

    stored = entries(monitor.outbox)
    got = receiver.received_ids()
    assert sorted(got) == sorted(e.id for e in stored)  # none missing, none twice
    assert all(r.signature_error is None for r in receiver.records())
    for scan_id in ok_scans:
        (event,) = receiver.events_for(scan_id)
        assert event.type == "scan.completed"
        data = event.body["data"]
        assert data["state"] == "completed" and data["attempt"] == 1
        assert data["metadata"] == {"patient": f"p-{scan_id}"}
        assert data["outputs"]["summary"] == f"file:///srv/out/{scan_id}/summary.json"
        assert data["outputs"]["figures"] == result_for(scan_id)["summary"]
        assert data["timings"]["finished_at"] is not None
    first, second = receiver.events_for("scan-two")
    assert (first.type, second.type) == ("scan.stalled", "scan.failed")
    assert first.body["data"]["stall"]["reason"] == "no_heartbeat"
    assert second.body["data"]["error"] == {"code": "bad_input", "message": "not a dental video",
                                            "log_tail": "marker-tail"}
    assert second.arrived_at >= first.answered_at  # sent only once the first was answered


def test_scans_in_parallel_one_scan_in_order(backend: TaskBackend, monitor_settings: Settings,
                                             receiver: Receiver) -> None:
    receiver.hold()  # nothing is answered until release(): what overlaps is counted, not timed
    monitor = InProcessMonitor(backend, monitor_settings)
    stall_then_fail(backend, monitor, "scan-a")
    complete(backend, "scan-b")
    complete(backend, "scan-c")
    monitor.start()
    try:
        # Different scans overlap: the three scans' first events are in flight at once ...
        wait_for(lambda: len(receiver.in_flight()) >= 3, 30, what="three events in flight at once")
        held = receiver.in_flight()
        assert sorted((r.body["data"]["scan_id"], r.type) for r in held) == [
            ("scan-a", "scan.stalled"), ("scan-b", "scan.completed"), ("scan-c", "scan.completed")]
        # ... and one scan's do not: its second event waits for the answer to its first.
        assert len(receiver.records()) == 3
        receiver.release()
        wait_for(lambda: all_delivered(monitor.outbox, 4), 30, what="four events delivered")
    finally:
        receiver.release()
        monitor.stop()
    a1, a2 = receiver.events_for("scan-a")
    assert (a1.type, a2.type) == ("scan.stalled", "scan.failed")
    assert a2.arrived_at >= a1.answered_at
    assert receiver.peak_in_flight == 3


def test_kill_monitor_mid_delivery(backend: TaskBackend, monitor_settings: Settings, receiver: Receiver,
                                   monitor_process: MonitorProcess) -> None:
    receiver.hold()  # every delivery stays in flight until release(), however long the kill takes
    before = [f"scan-before-{i}" for i in range(6)]
    for scan_id in before:
        complete(backend, scan_id)

    monitor_process.start()
    wait_for(lambda: receiver.records() or monitor_process.proc.poll() is not None, 60, interval_s=0.02,
             what="the first delivery to arrive")
    assert monitor_process.proc.poll() is None, monitor_process.logs()
    monitor_process.kill()

    outbox = Outbox(monitor_settings.state_dir / "monitor.db")
    arrived = {r.event_id for r in receiver.records()}
    in_flight = [e for e in entries(outbox) if e.id in arrived and e.state == "pending"]
    assert in_flight, "no delivery was in flight when the monitor was killed"
    assert len(entries(outbox)) == len(before)

    # Changes made while the monitor is dead are picked up from the saved cursor.
    after = [f"scan-after-{i}" for i in range(2)]
    for scan_id in after:
        complete(backend, scan_id)
    receiver.delay(0.3)
    receiver.release()  # the dead monitor's requests are answered (to nobody)
    monitor_process.start()
    n = len(before) + len(after)
    wait_for(lambda: all_delivered(outbox, n) or monitor_process.proc.poll() is not None, 60,
             what="every event delivered after the restart")
    assert monitor_process.stop() == 0, monitor_process.logs()
    assert all_delivered(outbox, n), monitor_process.logs()

    stored = entries(outbox)
    assert len(stored) == n and {json.loads(e.body)["data"]["scan_id"] for e in stored} == set(before + after)
    accepted = receiver.accepted()
    counts = Counter(r.event_id for r in accepted)
    assert set(counts) == {e.id for e in stored}  # every event at least once, nothing else
    assert [i for i, k in counts.items() if k > 1], "the in-flight events were not sent again"
    for r in accepted:
        assert r.signature_error is None
        assert r.event_id == r.body["id"]  # a duplicate carries the same webhook-id
    by_id = {e.id: e.body for e in stored}
    assert all(r.raw == by_id[r.event_id] for r in accepted)  # and the same bytes
    page = backend.changes(None, 10_000)
    assert outbox.get(CURSOR) == page.cursor


def test_429_retry_after_honoured(backend: TaskBackend, monitor_settings: Settings, receiver: Receiver) -> None:
    # Backoff far shorter than Retry-After: only honouring the header explains a 2 s gap.
    fast = with_settings(monitor_settings, webhook_backoff_base_s=0.05, webhook_backoff_cap_s=0.1)
    receiver.respond_next(Reply(429, retry_after="2"))
    complete(backend, "scan-throttled")
    monitor = InProcessMonitor(backend, fast).start()
    try:
        wait_for(lambda: all_delivered(monitor.outbox, 1), 30, what="the throttled event delivered")
    finally:
        monitor.stop()
    (entry,) = entries(monitor.outbox)
    first, second = receiver.attempts_for(entry.id)
    assert (first.status, second.status) == (429, 200)
    assert second.arrived_at - first.arrived_at >= 1.8
    assert entry.attempts == 2 and entry.state == "delivered"


@pytest.mark.parametrize("status", [408, 500, 503])
def test_retryable_status_retried_then_delivered(backend: TaskBackend, monitor_settings: Settings,
                                                 receiver: Receiver, status: int) -> None:
    receiver.respond_next(Reply(status), Reply(status))
    complete(backend, "scan-flaky")
    monitor = InProcessMonitor(backend, monitor_settings).start()
    try:
        wait_for(lambda: all_delivered(monitor.outbox, 1), 30, what="the event delivered after retries")
    finally:
        monitor.stop()
    (entry,) = entries(monitor.outbox)
    assert [r.status for r in receiver.attempts_for(entry.id)] == [status, status, 200]
    assert entry.attempts == 3


@pytest.mark.parametrize("status", [400, 404, 422])
def test_permanent_4xx_not_retried(backend: TaskBackend, monitor_settings: Settings, receiver: Receiver,
                                   status: int) -> None:
    receiver.fail(status)
    complete(backend, "scan-refused")
    monitor = InProcessMonitor(backend, monitor_settings)
    monitor.watcher.poll_changes()
    monitor.deliverer.drain(timeout_s=30)
    (entry,) = entries(monitor.outbox)
    assert (entry.state, entry.attempts, entry.last_error) == ("dead", 1, f"HTTP {status}")
    assert [r.status for r in receiver.attempts_for(entry.id)] == [status]


def cli_events(settings: Settings, *args: str) -> list[dict]:
    out = run_cli(settings, "events", "list", "--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # one JSON array of OutboxEvent


def test_permanent_4xx_dead_letter_then_retry_dead(backend: TaskBackend, monitor_settings: Settings,
                                                   receiver: Receiver) -> None:
    receiver.fail(410)
    complete(backend, "scan-gone")
    monitor = InProcessMonitor(backend, monitor_settings).start()
    try:
        wait_for(lambda: monitor.outbox.counts()["dead"] == 1, 30, what="the event dead-lettered")
        (entry,) = entries(monitor.outbox)
        assert (entry.state, entry.attempts, entry.last_error) == ("dead", 1, "HTTP 410")
        assert [r.status for r in receiver.attempts_for(entry.id)] == [410]

        (listed,) = cli_events(monitor_settings, "--state", "dead")
        assert (listed["id"], listed["state"], listed["last_error"]) == (entry.id, "dead", "HTTP 410")
        assert listed["body"]["data"]["scan_id"] == "scan-gone"
        table = run_cli(monitor_settings, "events", "list", "--state", "dead")
        assert table.returncode == 0 and entry.id[:16] in table.stdout and "scan:scan-gone" in table.stdout
        assert cli_events(monitor_settings, "--state", "pending") == []

        receiver.answer_ok()
        out = run_cli(monitor_settings, "events", "retry-dead")
        assert out.returncode == 0 and "1 dead event(s)" in out.stdout, out.stderr
        monitor.deliverer.wake()
        wait_for(lambda: all_delivered(monitor.outbox, 1), 30, what="the retried event delivered")
    finally:
        monitor.stop()
    assert receiver.received_ids() == [entry.id]
    assert cli_events(monitor_settings, "--state", "dead") == []
    assert [e["id"] for e in cli_events(monitor_settings, "--state", "delivered")] == [entry.id]


def test_events_replay(backend: TaskBackend, monitor_settings: Settings, receiver: Receiver) -> None:
    monitor = InProcessMonitor(backend, monitor_settings)
    task = start(backend, "scan-replay")
    assert monitor.watcher.check_alerts(now=time.time() + monitor_settings.stall_no_heartbeat_s + 5) == 1
    backend.finish(task.task_id, WORKER, result=result_for("scan-replay"))
    complete(backend, "scan-other")
    monitor.start()
    try:
        wait_for(lambda: all_delivered(monitor.outbox, 3), 30, what="three events delivered")
        original = receiver.events_for("scan-replay")
        assert [r.type for r in original] == ["scan.stalled", "scan.completed"]

        out = run_cli(monitor_settings, "events", "replay", "scan-replay")
        assert out.returncode == 0 and "2 event(s)" in out.stdout, out.stderr
        monitor.deliverer.wake()
        wait_for(lambda: len(receiver.events_for("scan-replay")) == 4, 30, what="the replayed events")
        wait_for(lambda: all_delivered(monitor.outbox, 3), 30, what="the outbox settled")

        missing = run_cli(monitor_settings, "events", "replay", "scan-unknown")
        assert missing.returncode == 1
    finally:
        monitor.stop()
    replayed = receiver.events_for("scan-replay")
    assert [r.event_id for r in replayed] == [r.event_id for r in original] * 2
    assert [r.raw for r in replayed[2:]] == [r.raw for r in original]
    assert len(receiver.events_for("scan-other")) == 1
