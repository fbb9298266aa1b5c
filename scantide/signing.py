"""Webhook signatures: ``Scantide-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.

The one implementation: the server signs with it (``service.signing`` re-exports it) and a
receiver verifies with it, needing nothing but this package. The timestamp is signed with the
body, so a captured request cannot be replayed after the tolerance window; receivers compare in
constant time and may accept several ``v1`` values (secret rotation).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from scantide.errors import SignatureError

SIGNATURE_HEADER = "Scantide-Signature"
EVENT_ID_HEADER = "Scantide-Event-Id"
# Unix seconds have 10 digits until the year 2286; a longer t is forged, and a 400-digit one
# overflowed the int → float conversion of the staleness check.
MAX_TIMESTAMP_DIGITS = 12

__all__ = ["EVENT_ID_HEADER", "SIGNATURE_HEADER", "SignatureError", "compute_signature", "sign",
           "verify_signature"]


def compute_signature(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``Scantide-Signature`` header value for ``body``; ``timestamp``: unix seconds, default now."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={compute_signature(secret, t, body)}"


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, tolerance_s: float = 300.0,
                     now: float | None = None) -> None:
    """Check a webhook request; raises ``SignatureError`` saying why it is not genuine.

    ``headers`` may be any mapping (header names are matched case-insensitively); ``body`` is the
    raw request body, byte for byte as received. ``tolerance_s``: seconds the signature's time may
    be away from ``now`` (unix seconds, default the clock).
    """
    value = next((_text(v) for k, v in headers.items() if _text(k).lower() == SIGNATURE_HEADER.lower()), None)
    if not value:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in value.split(","):
        key, _, val = part.strip().partition("=")
        # str.isdigit() also takes "²", which int() refuses.
        if key == "t" and val.isascii() and val.isdigit() and len(val) <= MAX_TIMESTAMP_DIGITS:
            timestamp = int(val)
        elif key == "v1":
            candidates.append(val)
    if timestamp is None or not candidates:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(f"signature timestamp is {abs(current - timestamp):.0f} s away from now "
                             f"(tolerance {tolerance_s:.0f} s)", code="stale_signature")
    expected = compute_signature(secret, timestamp, body)
    # As bytes: compare_digest raises TypeError on a str with non-ASCII characters (a forged header).
    if not any(hmac.compare_digest(expected.encode(), c.encode()) for c in candidates):
        raise SignatureError("signature does not match the body")


def _text(header: object) -> str:
    """A header name or value as text: raw bytes (as ASGI gives them) decoded as HTTP's latin-1; anything
    else that is not a string becomes one that matches nothing, so it reads as missing or malformed."""
    if isinstance(header, (bytes, bytearray)):
        return bytes(header).decode("latin-1")
    return header if isinstance(header, str) else ""
