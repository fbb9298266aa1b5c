"""Webhook signatures per Standard Webhooks: ``service.verify_signature`` (scantide's thin helper) and
the ``standardwebhooks`` package, the maintained verifier a platform would use, both accept what the
monitor sends and refuse what it did not."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timezone

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from monitor.events import Event
from monitor.outbox import Entry
from monitor.webhook import DeliveryPolicy, post
from service import SignatureError, sign, verify_signature
from service.backends.base import TaskBackend
from service.settings import Settings
from service.signing import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    compute_signature,
    signing_key,
    standard_secret,
)
from tests.conftest import wait_for
from tests.monitor.conftest import SECRET, InProcessMonitor, complete
from tests.monitor.receiver import Receiver, Reply

EVENT_ID = "evt_" + "0" * 32
BODY = Event(EVENT_ID, "scan.completed", "scan:s-1", 1_700_000_000.0, {"scan_id": "s-1"}).body()
PLAIN = "plain-secret-0123456789"


def rejected(hdrs: dict[str, str], body: bytes = BODY, secret: str = SECRET, **kwargs) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        verify_signature(secret, hdrs, body, **kwargs)
    assert type(info.value) is SignatureError
    return info.value


def test_signature() -> None:
    now = int(time.time())
    good = sign(SECRET, EVENT_ID, BODY, now)
    assert set(good) == {EVENT_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER}
    assert good[EVENT_ID_HEADER] == EVENT_ID and good[TIMESTAMP_HEADER] == str(now)
    assert good[SIGNATURE_HEADER].startswith("v1,")
    verify_signature(SECRET, good, BODY)
    verify_signature(SECRET, {k.title(): v for k, v in good.items()}, BODY)  # header names are case-insensitive
    # Secret rotation: any v1 that matches will do, among space-separated signatures.
    old = compute_signature("whsec_" + base64.b64encode(b"o" * 32).decode(), EVENT_ID, now, BODY)
    verify_signature(SECRET, {**good, SIGNATURE_HEADER: f"v1,{old} {good[SIGNATURE_HEADER]}"}, BODY)

    assert rejected(good, body=BODY.replace(b"s-1", b"s-2")).code == "invalid_signature"
    assert rejected(good, body=BODY + b" ").code == "invalid_signature"
    assert rejected({**good, EVENT_ID_HEADER: "evt_" + "1" * 32}).code == "invalid_signature"  # the id is signed
    assert rejected({**good, TIMESTAMP_HEADER: str(now - 1)}).code == "invalid_signature"  # and the time
    assert rejected(good, secret=PLAIN).code == "invalid_signature"
    assert rejected(sign(SECRET, EVENT_ID, BODY, now - 301), tolerance_s=300).code == "stale_signature"
    assert rejected(sign(SECRET, EVENT_ID, BODY, now + 301), tolerance_s=300).code == "stale_signature"
    verify_signature(SECRET, sign(SECRET, EVENT_ID, BODY, now - 1000), BODY, tolerance_s=300, now=now - 1000)

    for header in good:
        missing = rejected({k: v for k, v in good.items() if k != header})
        assert (missing.code, header in missing.message) == ("invalid_signature", True)
    sig = good[SIGNATURE_HEADER]
    for malformed in ({TIMESTAMP_HEADER: "abc"}, {TIMESTAMP_HEADER: f"-{now}"}, {TIMESTAMP_HEADER: "\u00b2"},
                      {TIMESTAMP_HEADER: "9" * 13}, {SIGNATURE_HEADER: sig.replace("v1,", "v2,")},
                      {SIGNATURE_HEADER: sig[3:]}, {SIGNATURE_HEADER: "v1,\u00e9\u00e9"}, {SIGNATURE_HEADER: "v1,"},
                      {SIGNATURE_HEADER: "v1,!!!!"}, {SIGNATURE_HEADER: sig.replace("v1,", "v1a,")}):
        assert rejected({**good, **malformed}).code == "invalid_signature", malformed
    with pytest.raises(ValueError):
        sign(SECRET, "evt.1", BODY)  # "." delimits the signed content


def test_both_verifiers_agree_on_either_form_of_the_secret() -> None:
    """A plain secret signs with its UTF-8 bytes: standardwebhooks verifies it given ``standard_secret``."""
    assert standard_secret(PLAIN) == "whsec_" + base64.b64encode(PLAIN.encode()).decode()
    assert standard_secret(SECRET) == SECRET and signing_key(standard_secret(PLAIN)) == PLAIN.encode()
    for secret in (SECRET, PLAIN):
        headers = sign(secret, EVENT_ID, BODY)
        assert Webhook(standard_secret(secret)).verify(BODY, headers) == json.loads(BODY)
        verify_signature(standard_secret(secret), headers, BODY)  # the two forms are one key
        with pytest.raises(WebhookVerificationError):
            Webhook(standard_secret(secret)).verify(BODY + b" ", headers)
        # And the other way: what the maintained library signs, the helper verifies.
        at = datetime.now(timezone.utc)
        theirs = {EVENT_ID_HEADER: EVENT_ID, TIMESTAMP_HEADER: str(int(at.timestamp())),
                  SIGNATURE_HEADER: Webhook(standard_secret(secret)).sign(EVENT_ID, at, BODY)}
        verify_signature(secret, theirs, BODY)


def entry_for(body: bytes) -> Entry:
    return Entry(seq=1, id=EVENT_ID, type="scan.completed", key="scan:s-1", body=body, created_at=0.0,
                 enqueued_at=0.0, state="pending", attempts=0, next_attempt_at=0.0, last_error=None,
                 delivered_at=None)


def test_signature_over_real_http(receiver: Receiver) -> None:
    with httpx.Client() as client:
        genuine = post(client, DeliveryPolicy(url=receiver.url, secret=SECRET, timeout_s=10), entry_for(BODY))
        forged = post(client, DeliveryPolicy(url=receiver.url, secret=PLAIN, timeout_s=10), entry_for(BODY))
    ok, bad = receiver.records()
    assert (genuine.outcome, ok.status, ok.signature_error, ok.standard_error) == ("delivered", 200, None, None)
    assert ok.event_id == EVENT_ID and ok.raw == BODY
    Webhook(SECRET).verify(ok.raw, ok.headers)  # the headers as they arrived
    assert (forged.outcome, bad.status, bad.signature_error) == ("dead", 401, "invalid_signature")
    assert bad.standard_error == "No matching signature found"


def test_retries_keep_the_webhook_id(backend: TaskBackend, monitor_settings: Settings, receiver: Receiver) -> None:
    """A real monitor delivery answered 503 and then 200: both attempts carry the event's id as
    ``webhook-id`` (the receiver's idempotency key) and both verify with standardwebhooks."""
    receiver.respond_next(Reply(503))
    monitor = InProcessMonitor(backend, monitor_settings).start()
    try:
        complete(backend, "scan-sig")
        wait_for(lambda: receiver.accepted(), 30, what="the event delivered after a 503")
    finally:
        monitor.stop()
    (event,) = receiver.accepted()
    attempts = receiver.attempts_for(event.event_id)
    assert [a.status for a in attempts] == [503, 200]
    assert {a.headers[EVENT_ID_HEADER] for a in attempts} == {event.body["id"]}
    assert all(a.signature_error is None and a.standard_error is None for a in attempts)
    for a in attempts:
        assert Webhook(SECRET).verify(a.raw, a.headers)["id"] == event.body["id"]
