"""Bearer-token auth with scopes. Tokens come from settings and are compared in constant time.

Scopes (``service.settings.SCOPES``): ``enqueue`` (POST /v1/scans), ``read`` (every GET) and
``promote`` (POST /v1/models/{algorithm}/promote and /rollback: changes what new tasks run).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from fastapi import Request, Security
from pydantic import SecretStr

from service.api.responses import BEARER
from service.errors import AuthError, Forbidden, InvalidToken


class TokenAuth:
    def __init__(self, tokens: dict[SecretStr, list[str]]) -> None:
        self._tokens = [(token.get_secret_value().encode(), frozenset(scopes)) for token, scopes in tokens.items()]

    def scopes_for(self, presented: str) -> frozenset[str] | None:
        """Scopes of the presented token, or None. Checks every token so timing reveals nothing."""
        found: frozenset[str] | None = None
        candidate = presented.encode()
        for token, scopes in self._tokens:
            if hmac.compare_digest(token, candidate):
                found = scopes
        return found

    def check(self, request: Request, scope: str) -> None:
        """Raise unless the request's bearer token carries ``scope``."""
        header = request.headers.get("authorization", "")
        kind, _, presented = header.partition(" ")
        if kind.lower() != "bearer" or not presented.strip():
            raise AuthError("missing bearer token: send 'Authorization: Bearer <token>'")
        scopes = self.scopes_for(presented.strip())
        if scopes is None:
            raise InvalidToken("invalid bearer token")
        if scope not in scopes:
            raise Forbidden(f"this token lacks the {scope!r} scope")

    @staticmethod
    def identity(request: Request) -> str:
        """Who sent an authenticated request, for audit trails: ``token:<first 12 hex of its SHA-256>``
        (tokens have no names, and the token itself must never be written down)."""
        presented = request.headers.get("authorization", "").partition(" ")[2].strip()
        return "token:" + hashlib.sha256(presented.encode()).hexdigest()[:12]

    def require(self, scope: str) -> Any:
        """A FastAPI dependency that admits requests whose token carries ``scope`` (and documents the
        bearer scheme and the scope in the operation's OpenAPI security requirement)."""

        async def dependency(request: Request, _: Any = Security(BEARER, scopes=[scope])) -> None:
            self.check(request, scope)  # pure CPU: no thread hop

        return dependency
