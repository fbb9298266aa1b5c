"""Per-token rate limit on the API: GCRA (the generic cell rate algorithm, a token bucket kept as one
number per key), keyed by the SHA-256 of the bearer token.

A request that presents a bearer token on any path but the unauthenticated ones (``/healthz``, the
OpenAPI pages) is counted against its token before anything else runs: over the limit it is answered
429 ``rate_limited`` with ``Retry-After`` (whole seconds, at least 1) before its body is read or
its token checked. Invalid tokens are counted too, which throttles guessing; a request without a
token passes on to be answered 401. Off unless ``api_rate_limit_per_s`` is set.

Limits are per API process: behind a load balancer spreading N of them, a token gets up to N times
the rate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import RateLimited

log = logging.getLogger(__name__)

MAX_KEYS = 10_000  # tokens tracked at once; beyond it the least recently seen are forgotten
_EPSILON_S = 1e-9  # float error must not turn "just refilled" into "wait"


class RateLimiter:
    """``per_s`` requests a second per key, with bursts of up to ``burst`` back to back.

    Each key keeps its theoretical arrival time (TAT): when its next request would be due at the
    steady rate. A request may go while the TAT is at most ``(burst - 1) / per_s`` seconds ahead of
    now, and moves it one interval on. A key whose TAT has passed has its whole burst back, exactly
    as a key never seen, so forgetting it loses nothing: that is how idle keys are evicted. Only
    when more than ``max_keys`` keys are busy at once is the least recently allowed one forgotten
    early (it gets a fresh burst): the price of bounded memory under a flood of distinct tokens.

    ``clock`` returns seconds (monotonic). Not thread-safe: the middleware calls it on the event
    loop, where ``acquire`` (which never awaits) runs whole.
    """

    def __init__(self, per_s: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = MAX_KEYS) -> None:
        if per_s <= 0 or burst < 1 or max_keys < 1:
            raise ValueError(f"need per_s > 0, burst >= 1 and max_keys >= 1; got {per_s}, {burst}, {max_keys}")
        self.interval_s = 1.0 / per_s
        self.tolerance_s = (burst - 1) * self.interval_s
        self.clock = clock
        self.max_keys = max_keys
        self._tat: OrderedDict[bytes, float] = OrderedDict()  # least recently allowed first

    def acquire(self, key: bytes) -> float:
        """Count one request of ``key``: 0.0 when it may go, else the seconds until one may."""
        now = self.clock()
        tat = max(self._tat.get(key, now), now)
        wait_s = tat - self.tolerance_s - now
        if wait_s > _EPSILON_S:
            return wait_s  # refused requests are not counted: a client that waits as told gets through
        self._tat[key] = tat + self.interval_s
        self._tat.move_to_end(key)
        self._evict(now)
        return 0.0

    def __len__(self) -> int:
        return len(self._tat)

    def _evict(self, now: float) -> None:
        while self._tat:
            key, tat = next(iter(self._tat.items()))
            if tat > now and len(self._tat) <= self.max_keys:
                return
            del self._tat[key]


class RateLimit:
    """ASGI middleware: the limiter in front of every path but ``exempt``, keyed by bearer token."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, exempt: Collection[str] = ()) -> None:
        self.app = app
        self.limiter = limiter
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = token_key(scope) if scope["type"] == "http" and scope["path"] not in self.exempt else None
        wait_s = self.limiter.acquire(key) if key is not None else 0.0
        if wait_s <= 0:
            await self.app(scope, receive, send)
            return
        retry_after = max(1, math.ceil(wait_s))
        # The hash prefix is TokenAuth.identity's; the token itself is never written down.
        log.debug("rate_limited who=token:%s path=%s retry_after_s=%d", key.hex()[:12], scope["path"], retry_after)
        error = RateLimited(f"too many requests with this token; retry after {retry_after} s")
        body = json.dumps({"error": error.to_dict()}).encode()
        await send({"type": "http.response.start", "status": error.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", str(retry_after).encode())]})
        await send({"type": "http.response.body", "body": body})


def token_key(scope: Scope) -> bytes | None:
    """The SHA-256 of the request's bearer token, or None when it presents none."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            kind, _, presented = value.partition(b" ")
            presented = presented.strip()
            return hashlib.sha256(presented).digest() if kind.lower() == b"bearer" and presented else None
    return None


def install_rate_limit(app: FastAPI, per_s: float | None, burst: int,
                       clock: Callable[[], float] = time.monotonic) -> RateLimiter | None:
    """Put the limiter in front of ``app`` (outermost of the middleware added so far) and on
    ``app.state.rate_limiter``; nothing when ``per_s`` is None or 0. ``burst`` 0: one second's
    worth of requests (at least 1)."""
    app.state.rate_limiter = None
    if not per_s:
        return None
    limiter = RateLimiter(per_s, burst or max(1, math.ceil(per_s)), clock=clock)
    unauthenticated = {"/healthz", app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url}
    app.add_middleware(RateLimit, limiter=limiter, exempt={p for p in unauthenticated if p})
    app.state.rate_limiter = limiter
    return limiter
