"""scantide control plane: domain types, settings, the enqueue use case, task backends, API, CLI."""

from service.signing import SignatureError, sign, verify_signature

__all__ = ["SignatureError", "sign", "verify_signature"]
