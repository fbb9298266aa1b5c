"""Webhook signatures, re-exported: the one implementation is ``scantide.signing`` (the public
client package), so the server signs with exactly the code a receiver verifies with."""

from __future__ import annotations

from scantide.errors import SignatureError
from scantide.signing import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    compute_signature,
    sign,
    signing_key,
    standard_secret,
    verify_signature,
)

__all__ = ["EVENT_ID_HEADER", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "SignatureError", "compute_signature", "sign",
           "signing_key", "standard_secret", "verify_signature"]
