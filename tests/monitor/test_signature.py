"""``service.verify_signature``: what a receiver uses to tell a genuine scantide webhook."""

from __future__ import annotations

import time

import httpx
import pytest

from monitor.events import Event
from monitor.outbox import Entry
from monitor.webhook import DeliveryPolicy, post
from service import SignatureError, sign, verify_signature
from service.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, compute_signature
from tests.monitor.conftest import SECRET
from tests.monitor.receiver import Receiver

BODY = Event("evt_" + "0" * 32, "scan.completed", "scan:s-1", 1_700_000_000.0, {"scan_id": "s-1"}).body()


def headers(value: str) -> dict[str, str]:
    return {SIGNATURE_HEADER: value, "Content-Type": "application/json"}


def rejected(hdrs: dict[str, str], body: bytes = BODY, secret: str = SECRET, **kwargs) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        verify_signature(secret, hdrs, body, **kwargs)
    assert type(info.value) is SignatureError
    return info.value


def test_signature() -> None:
    now = int(time.time())
    good = sign(SECRET, BODY, now)
    verify_signature(SECRET, headers(good), BODY)
    verify_signature(SECRET, {SIGNATURE_HEADER.lower(): good}, BODY)  # header names are case-insensitive
    # Secret rotation: any v1 that matches will do.
    rotated = f"t={now},v1={compute_signature('old-secret-0123456789', now, BODY)},v1={good.split('v1=')[1]}"
    verify_signature(SECRET, headers(rotated), BODY)

    assert rejected(headers(good), body=BODY.replace(b"s-1", b"s-2")).code == "invalid_signature"
    assert rejected(headers(good), body=BODY + b" ").code == "invalid_signature"
    assert rejected(headers(good), secret="another-secret-0123456789").code == "invalid_signature"
    stale = rejected(headers(sign(SECRET, BODY, now - 301)), tolerance_s=300)
    assert stale.code == "stale_signature"
    assert rejected(headers(sign(SECRET, BODY, now + 301)), tolerance_s=300).code == "stale_signature"
    verify_signature(SECRET, headers(sign(SECRET, BODY, now - 1000)), BODY, tolerance_s=300, now=now - 1000)

    assert rejected({"Content-Type": "application/json"}).code == "invalid_signature"  # missing
    assert rejected(headers("")).code == "invalid_signature"
    for malformed in ("garbage", f"t={now}", f"v1={good.split('v1=')[1]}", f"t=abc,v1={good.split('v1=')[1]}",
                      f"t=-{now},v1=00", f"t=\u00b2,v1={good.split('v1=')[1]}", f"t={now},v1=\u00e9\u00e9",
                      f"t={now},v1="):
        assert rejected(headers(malformed)).code == "invalid_signature", malformed


def entry_for(body: bytes) -> Entry:
    return Entry(seq=1, id="evt_" + "0" * 32, type="scan.completed", key="scan:s-1", body=body, created_at=0.0,
                 enqueued_at=0.0, state="pending", attempts=0, next_attempt_at=0.0, last_error=None,
                 delivered_at=None)


def test_signature_over_real_http(receiver: Receiver) -> None:
    with httpx.Client() as client:
        genuine = post(client, DeliveryPolicy(url=receiver.url, secret=SECRET, timeout_s=10), entry_for(BODY))
        forged = post(client, DeliveryPolicy(url=receiver.url, secret="not-the-secret-0123", timeout_s=10),
                      entry_for(BODY))
    ok, bad = receiver.records()
    assert (genuine.outcome, ok.status, ok.signature_error) == ("delivered", 200, None)
    assert ok.event_id == "evt_" + "0" * 32 and ok.raw == BODY
    assert ok.headers[EVENT_ID_HEADER.lower()] == ok.event_id
    assert (forged.outcome, bad.status, bad.signature_error) == ("dead", 401, "invalid_signature")
