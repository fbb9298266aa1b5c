"""The tests' webhook receiver itself: down and up keep its port, and while down a sender fails at
once with a connection error (never a hang that only a timeout ends)."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest

from tests.conftest import wait_for
from tests.monitor.conftest import SECRET
from tests.monitor.receiver import Receiver


def post(receiver: Receiver) -> httpx.Response:
    # Unsigned: answered 401, which is enough to show that it answers.
    return httpx.post(receiver.url, content=b"{}", timeout=30)


def test_down_keeps_the_port_and_refuses_at_once() -> None:
    receiver = Receiver(SECRET)
    try:
        for _ in range(2):
            receiver.up()
            assert receiver.is_up and post(receiver).status_code == 401
            receiver.down()
            assert not receiver.is_up
            with pytest.raises(httpx.TransportError) as info:
                post(receiver)
            assert not isinstance(info.value, httpx.TimeoutException)  # reset, not left hanging
            with socket.socket() as other, pytest.raises(OSError):
                other.bind(("127.0.0.1", receiver.port))  # nobody else can take the port meanwhile
        receiver.up()
        assert post(receiver).status_code == 401 and len(receiver.records()) == 3
    finally:
        receiver.close()
    with socket.socket() as other:
        other.bind(("127.0.0.1", receiver.port))  # close() gives it back


def test_held_requests_are_counted_in_flight(receiver: Receiver) -> None:
    receiver.hold()
    with httpx.Client(timeout=30) as client:
        answers: list[int] = []
        senders = [threading.Thread(target=lambda: answers.append(
            client.post(receiver.url, content=b"{}").status_code)) for _ in range(3)]
        for t in senders:
            t.start()
        wait_for(lambda: len(receiver.in_flight()) == 3, 30, what="three held requests")
        assert answers == []
        receiver.release()
        for t in senders:
            t.join(timeout=30)
    assert answers == [401] * 3 and receiver.in_flight() == [] and receiver.peak_in_flight == 3
