"""The outbox's per-scan delivery order, and the deliverer waiting (not polling) while a scan is held back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from monitor.events import Event
from monitor.outbox import Outbox
from monitor.webhook import Deliverer, DeliveryPolicy
from tests.conftest import wait_for
from tests.monitor.conftest import SECRET
from tests.monitor.receiver import Receiver


def event(name: str, key: str) -> Event:
    return Event(f"evt_{name}", "scan.completed", key, 1_700_000_000.0, {"scan_id": key})


def test_only_a_keys_oldest_pending_event_is_due(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "monitor.db")
    outbox.append([event("a1", "scan:a"), event("a2", "scan:a"), event("b1", "scan:b")])
    now = time.time()
    assert [e.id for e in outbox.due(now + 1)] == ["evt_a1", "evt_b1"]
    assert [e.id for e in outbox.due(now + 1, exclude_keys={"scan:a"})] == ["evt_b1"]

    outbox.mark_retry("evt_a1", now + 60, "HTTP 503")
    assert [e.id for e in outbox.due(now + 1)] == ["evt_b1"]  # a2 waits for a1, however early its own time
    outbox.mark_delivered("evt_b1")
    # Nothing can go before a1's retry: a2's earlier time must not count.
    assert outbox.next_due_at() == now + 60
    assert outbox.next_due_at(exclude_keys={"scan:a"}) is None
    outbox.mark_dead("evt_a1", "HTTP 410")
    assert [e.id for e in outbox.due(now + 1)] == ["evt_a2"]


def counted_due(outbox: Outbox) -> list[int]:
    calls: list[int] = []
    real_due = outbox.due

    def counting_due(*args, **kwargs):
        calls.append(1)
        return real_due(*args, **kwargs)

    outbox.due = counting_due  # type: ignore[method-assign]
    return calls


def test_deliverer_sleeps_while_a_scan_backs_off(tmp_path: Path) -> None:
    """A scan whose first event waits for its retry must not make the deliverer poll in a loop."""
    outbox = Outbox(tmp_path / "monitor.db")
    outbox.append([event("a1", "scan:a"), event("a2", "scan:a")])
    outbox.mark_retry("evt_a1", time.time() + 30, "HTTP 503")
    calls = counted_due(outbox)
    deliverer = Deliverer(outbox, DeliveryPolicy(url="http://127.0.0.1:9/unused", secret="s" * 16))
    runner = threading.Thread(target=deliverer.run, kwargs={"idle_wait_s": 0.5})
    runner.start()
    time.sleep(1.2)
    deliverer.stop()
    runner.join(timeout=10)
    assert not runner.is_alive()
    # Woken by its idle timer only (about three times here); a busy loop makes thousands of calls.
    assert len(calls) <= 20
    assert outbox.counts() == {"pending": 2, "delivered": 0, "dead": 0}


def test_deliverer_sleeps_while_a_send_is_in_flight(tmp_path: Path, receiver: Receiver) -> None:
    """A slow receiver keeps a scan's first event in flight: the deliverer waits to be woken by it."""
    receiver.delay(1.5)
    outbox = Outbox(tmp_path / "monitor.db")
    outbox.append([event("a1", "scan:a"), event("a2", "scan:a")])
    calls = counted_due(outbox)
    deliverer = Deliverer(outbox, DeliveryPolicy(url=receiver.url, secret=SECRET, concurrency=4))
    runner = threading.Thread(target=deliverer.run, kwargs={"idle_wait_s": 0.5})
    runner.start()
    try:
        wait_for(receiver.records, 10, interval_s=0.01, what="the first send")
        before = len(calls)
        time.sleep(1.0)  # a1 is in flight all along; a2 waits for it
        during = len(calls) - before
        wait_for(lambda: outbox.counts()["delivered"] == 2, 20, what="both events delivered")
    finally:
        deliverer.stop()
        runner.join(timeout=10)
    assert during <= 20  # idle timer only; a busy loop makes thousands of calls
    assert receiver.received_ids() == ["evt_a1", "evt_a2"]
