"""Webhook recovery against the real receiver: the backlog goes out as soon as the receiver is back
(not when each event's backoff runs out), and a redirect is followed only within the receiver.

Backoff here is 30-60 s for a first retry and no test waits that long: an event that went out
again was released, never retried by its timer.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from monitor.events import Event
from monitor.outbox import Outbox
from monitor.webhook import MAX_REDIRECTS, Deliverer, DeliveryPolicy
from tests.conftest import free_port
from tests.monitor.conftest import SECRET, entries
from tests.monitor.receiver import MOVED_PATH, PATH, Receiver, Reply


def event(name: str, scan_id: str) -> Event:
    return Event(f"evt_{name}", "scan.completed", f"scan:{scan_id}", 1_700_000_000.0, {"scan_id": scan_id})


def deliverer_for(outbox: Outbox, receiver: Receiver) -> Deliverer:
    return Deliverer(outbox, DeliveryPolicy(url=receiver.url, secret=SECRET, backoff_base_s=60.0,
                                            backoff_cap_s=600.0, concurrency=4))


def send(deliverer: Deliverer, *events: Event) -> None:
    deliverer.outbox.append(list(events))
    deliverer.drain(timeout_s=30)


def test_receiver_back_releases_the_backlog(tmp_path: Path, receiver: Receiver) -> None:
    outbox = Outbox(tmp_path / "monitor.db")
    deliverer = deliverer_for(outbox, receiver)
    send(deliverer, event("before", "s-before"))
    receiver.respond_next(Reply(429, retry_after="3600"))  # it names its own wait: that is kept
    send(deliverer, event("held", "s-held"))

    receiver.down()
    scans = [f"s{i}" for i in range(5)]
    send(deliverer, *[event(f"{s}-1", s) for s in scans], event("s0-2", "s0"))
    waiting = {e.id: e for e in entries(outbox, "pending")}
    assert {i: e.attempts for i, e in waiting.items()} == {"evt_held": 1, "evt_s0-2": 0,
                                                           **{f"evt_{s}-1": 1 for s in scans}}
    assert all("connection failed" in (waiting[f"evt_{s}-1"].last_error or "") for s in scans)

    receiver.up()
    send(deliverer, event("after", "s-after"))  # its success tells the deliverer the receiver is back

    assert outbox.counts() == {"pending": 1, "delivered": 8, "dead": 0}
    (held,) = entries(outbox, "pending")
    assert held.id == "evt_held" and held.attempts == 1 and "Retry-After" in (held.last_error or "")
    assert all(e.attempts == 2 for e in entries(outbox, "delivered") if e.id.endswith("-1"))
    counts = Counter(receiver.received_ids())
    assert set(counts.values()) == {1} and len(counts) == 8
    assert [r.event_id for r in receiver.events_for("s0")] == ["evt_s0-1", "evt_s0-2"]  # a scan's order holds


def test_restarted_deliverer_releases_on_its_first_success(tmp_path: Path, receiver: Receiver) -> None:
    outbox = Outbox(tmp_path / "monitor.db")
    receiver.down()
    send(deliverer_for(outbox, receiver), event("a", "s-a"), event("b", "s-b"))
    assert [e.attempts for e in entries(outbox, "pending")] == [1, 1]

    receiver.up()
    send(deliverer_for(outbox, receiver), event("c", "s-c"))  # a monitor restarted after the outage
    assert outbox.counts() == {"pending": 0, "delivered": 3, "dead": 0}


def test_an_event_that_fails_again_is_not_released_at_every_success(tmp_path: Path, receiver: Receiver) -> None:
    outbox = Outbox(tmp_path / "monitor.db")
    deliverer = deliverer_for(outbox, receiver)
    receiver.respond_next(Reply(500))
    send(deliverer, event("poison", "s-p"))
    receiver.respond_next(Reply(200), Reply(500))
    send(deliverer, event("ok1", "s-1"))  # releases the poison event once; it fails again
    send(deliverer, event("ok2", "s-2"))  # and stays backed off this time
    (poison,) = entries(outbox, "pending")
    assert poison.id == "evt_poison" and poison.attempts == 2
    assert [r.status for r in receiver.attempts_for("evt_poison")] == [500, 500]
    assert receiver.received_ids() == ["evt_ok1", "evt_ok2"]


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("absolute", [False, True])
def test_redirect_within_the_receiver_is_followed(tmp_path: Path, receiver: Receiver, status: int,
                                                  absolute: bool) -> None:
    receiver.move(receiver.url_for(MOVED_PATH) if absolute else MOVED_PATH, status)
    outbox = Outbox(tmp_path / "monitor.db")
    send(deliverer_for(outbox, receiver), event("moved", "s-m"))
    (entry,) = entries(outbox)
    assert (entry.state, entry.attempts, entry.last_error) == ("delivered", 1, None)
    first, second = receiver.attempts_for(entry.id)
    assert (first.path, first.status) == (PATH, status) and (second.path, second.status) == (MOVED_PATH, 200)
    assert second.signature_error is None and second.raw == entry.body  # the same signed POST
    assert receiver.received_ids() == [entry.id]


@pytest.mark.parametrize("where", ["host", "scheme", "port"])
def test_redirect_elsewhere_is_a_dead_letter_with_the_reason(tmp_path: Path, receiver: Receiver, where: str) -> None:
    location = {"host": receiver.url_for(MOVED_PATH, host="localhost"),  # the same server under another name
                "scheme": receiver.url_for(MOVED_PATH, scheme="https"),
                "port": f"http://127.0.0.1:{free_port()}{MOVED_PATH}"}[where]
    receiver.move(location, 302)
    outbox = Outbox(tmp_path / "monitor.db")
    send(deliverer_for(outbox, receiver), event("moved", "s-m"))
    (entry,) = entries(outbox)
    assert entry.state == "dead" and entry.attempts == 1
    assert entry.last_error == (f"redirected to {location}: a webhook URL must answer itself; "
                                "update SCANTIDE_WEBHOOK_URL")
    assert [(r.path, r.status) for r in receiver.records()] == [(PATH, 302)]


def test_redirect_loop_is_a_dead_letter(tmp_path: Path, receiver: Receiver) -> None:
    receiver.move(PATH, 307)
    outbox = Outbox(tmp_path / "monitor.db")
    send(deliverer_for(outbox, receiver), event("loop", "s-l"))
    (entry,) = entries(outbox)
    assert entry.state == "dead" and (entry.last_error or "").startswith(f"more than {MAX_REDIRECTS} redirects")
    assert [r.status for r in receiver.records()] == [307] * (MAX_REDIRECTS + 1)
