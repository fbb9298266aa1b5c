"""Webhook signatures per the Standard Webhooks specification (https://www.standardwebhooks.com/).

Each delivery carries three headers: ``webhook-id`` (the event's id, the same on every retry: the
receiver's idempotency key), ``webhook-timestamp`` (unix seconds of this attempt) and
``webhook-signature``: ``v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<raw body>")>``, several
space-separated when a secret is rotated. A maintained verifier in any language checks them (the
``standardwebhooks`` package in Python); ``verify_signature`` here is a thin one that needs
nothing but this package.

The secret: ``whsec_<base64>`` is the specification's form, and its key is the decoded bytes. Any
other string is taken as a plain secret whose key is its UTF-8 bytes, which is the key of
``whsec_`` + base64(secret): ``standard_secret`` writes that form for a standard verifier.

The one implementation: the server signs with it (``service.signing`` re-exports it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

from scantide.errors import SignatureError

EVENT_ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
# Unix seconds have 10 digits until the year 2286; a longer timestamp is forged, and a 400-digit one
# overflows the int → float conversion of the staleness check.
MAX_TIMESTAMP_DIGITS = 12

__all__ = ["EVENT_ID_HEADER", "SECRET_PREFIX", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "SignatureError",
           "compute_signature", "sign", "signing_key", "standard_secret", "verify_signature"]


def signing_key(secret: str) -> bytes:
    """The HMAC key of a webhook secret: a ``whsec_`` secret's base64 decoded, else the secret's UTF-8
    bytes. Raises ``ValueError`` for a ``whsec_`` secret that is not base64 or is empty."""
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    encoded = secret[len(SECRET_PREFIX):]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"a {SECRET_PREFIX} secret is followed by base64") from None
    if not key:
        raise ValueError(f"a {SECRET_PREFIX} secret holds no key")
    return key


def standard_secret(secret: str) -> str:
    """``secret`` in the specification's ``whsec_<base64>`` form, the one standard verifiers take."""
    return SECRET_PREFIX + base64.b64encode(signing_key(secret)).decode()


def compute_signature(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """The base64 HMAC-SHA256 of ``"<event_id>.<timestamp>.<body>"`` under ``secret``'s key."""
    digest = hmac.new(signing_key(secret), f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def sign(secret: str, event_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``; ``timestamp``: unix seconds, default now."""
    if not event_id or "." in event_id:  # the id is a field of the signed content, delimited by "."
        raise ValueError(f"a webhook id is not empty and has no '.': {event_id!r}")
    t = int(time.time()) if timestamp is None else timestamp
    return {EVENT_ID_HEADER: event_id, TIMESTAMP_HEADER: str(t),
            SIGNATURE_HEADER: f"v1,{compute_signature(secret, event_id, t, body)}"}


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, tolerance_s: float = 300.0,
                     now: float | None = None) -> None:
    """Check a webhook request's Standard Webhooks headers; raises ``SignatureError`` saying why it is
    not genuine (code ``invalid_signature``, or ``stale_signature`` for a time too far from now).

    ``headers`` may be any mapping (names matched case-insensitively, raw bytes as ASGI gives them
    accepted); ``body`` is the raw request body, byte for byte as received. ``tolerance_s``: seconds
    the signed time may be away from ``now`` (unix seconds, default the clock). A ``whsec_`` secret that is
    not base64 raises ``ValueError``: the receiver's configuration is wrong, not the request.
    """
    found = {_text(k).lower(): _text(v) for k, v in headers.items()}
    event_id, stamp, value = (found.get(h, "") for h in (EVENT_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER))
    missing = [h for h, v in ((EVENT_ID_HEADER, event_id), (TIMESTAMP_HEADER, stamp), (SIGNATURE_HEADER, value))
               if not v]
    if missing:
        raise SignatureError(f"missing {', '.join(missing)} header")
    # str.isdigit() also takes "²", which int() refuses.
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= MAX_TIMESTAMP_DIGITS):
        raise SignatureError(f"malformed {TIMESTAMP_HEADER} header")
    timestamp = int(stamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(f"signature timestamp is {abs(current - timestamp):.0f} s away from now "
                             f"(tolerance {tolerance_s:.0f} s)", code="stale_signature")
    expected = base64.b64decode(compute_signature(secret, event_id, timestamp, body))
    if not any(hmac.compare_digest(expected, candidate) for candidate in _v1_signatures(value)):
        raise SignatureError("signature does not match the body")


def _v1_signatures(value: str) -> list[bytes]:
    """The decoded ``v1`` signatures of a ``webhook-signature`` value; other versions and malformed
    entries are skipped (they match nothing)."""
    out = []
    for entry in value.split(" "):
        version, _, encoded = entry.partition(",")
        if version != "v1" or not encoded.isascii():
            continue
        try:
            out.append(base64.b64decode(encoded, validate=True))
        except binascii.Error:
            continue
    return out


def _text(header: object) -> str:
    """A header name or value as text: raw bytes (as ASGI gives them) decoded as HTTP's latin-1; anything
    else that is not a string becomes one that matches nothing, so it reads as missing or malformed."""
    if isinstance(header, (bytes, bytearray)):
        return bytes(header).decode("latin-1")
    return header if isinstance(header, str) else ""
