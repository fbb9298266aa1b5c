"""A real webhook receiver for the monitor's tests: Starlette served by uvicorn on a loopback port.

It verifies every request twice, with ``service.verify_signature`` and with the ``standardwebhooks``
package (the maintained Standard Webhooks verifier a platform would use), records each one in arrival order and
answers as the test tells it at runtime: 200, a given status, 429 with ``Retry-After``, after a
delay (so a delivery stays in flight), once the test releases it (``hold()``: how many deliveries
are in flight at once is then counted, not timed), a redirect from its path (``move()``: it
moved, to ``MOVED_PATH`` or elsewhere), or not at all (the server is down; ``up()`` brings it back
on the same port).

The port is its own for its whole life: the listening socket is bound once, in ``__init__``, and
stays open until ``close()``. uvicorn serves a duplicate of it while up; while down, a refuser
thread accepts each connection on it and resets it at once, so a sender fails as fast as against
a closed port, and no other process can take the port between a ``down()`` and an ``up()``.
"""

from __future__ import annotations

import asyncio
import json
import selectors
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service import SignatureError, verify_signature
from service.signing import EVENT_ID_HEADER, standard_secret

PATH = "/hooks/scantide"
MOVED_PATH = "/hooks/scantide/v2"  # served too, for a receiver that redirects PATH here


@dataclass(frozen=True)
class Reply:
    """How to answer one request: a status, an optional Retry-After value and a delay, seconds."""

    status: int = 200
    retry_after: str | None = None
    delay_s: float = 0.0
    location: str | None = None  # the Location header of a redirect


@dataclass
class Received:
    event_id: str | None  # the webhook-id header
    body: dict[str, Any] | None  # the parsed JSON body
    raw: bytes
    headers: dict[str, str]
    arrived_at: float  # time.monotonic() when the request was read
    status: int  # what the receiver answered (or was about to, when the sender went away)
    signature_error: str | None  # SignatureError.code, or None when the signature is genuine
    standard_error: str | None = None  # what standardwebhooks refused, or None when it verified the request
    answered_at: float | None = None  # time.monotonic() when the answer was handed to the server
    path: str = PATH  # the path it was posted to

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300

    @property
    def type(self) -> str | None:
        return self.body.get("type") if self.body else None


@dataclass
class _Behaviour:
    default: Reply = field(default_factory=Reply)
    queued: deque[Reply] = field(default_factory=deque)  # one-shot replies, used before the default

    def next(self) -> Reply:
        return self.queued.popleft() if self.queued else self.default


class _Refuser:
    """While the receiver is down: accepts every connection on its listening socket and resets it
    (RST), so a sender gets a connection error at once and the socket stays bound and listening."""

    def __init__(self, listener: socket.socket) -> None:
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name=f"refuser-{listener.getsockname()[1]}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._listener.setblocking(False)
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in sel.select()}
                if self._wake_r in ready:
                    return
                try:
                    conn, _ = self._listener.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
                conn.close()

    def stop(self) -> None:
        """Stop accepting; connections that arrive from here on wait in the backlog for uvicorn."""
        self._wake_w.send(b"x")
        self._thread.join(timeout=15)
        if self._thread.is_alive():
            raise RuntimeError("the webhook receiver's refuser did not stop")
        self._wake_r.close()
        self._wake_w.close()


class Receiver:
    def __init__(self, secret: str, tolerance_s: float = 300.0) -> None:
        self.secret = secret
        self.tolerance_s = tolerance_s
        # Bound once and kept until close(): up() and down() never give the port away.
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}{PATH}"
        self._lock = threading.Lock()
        self._records: list[Received] = []
        self._behaviour = _Behaviour()
        self._moved: Reply | None = None  # how requests to PATH are answered once it moved
        self._held = False  # requests wait for release() before they are answered
        self._in_flight: list[Received] = []  # read and not yet answered, in arrival order
        self._peak_in_flight = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._refuser: _Refuser | None = _Refuser(self._listener)  # down until up()
        self._closed = False
        self.app = Starlette(routes=[Route(PATH, self._handle, methods=["POST"]),
                                     Route(MOVED_PATH, self._handle, methods=["POST"])])

    def __enter__(self) -> Receiver:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url_for(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    # -- what it answers -------------------------------------------------------------------
    def answer_ok(self, delay_s: float = 0.0) -> None:
        self._set(Reply(200, delay_s=delay_s))

    def fail(self, status: int, delay_s: float = 0.0) -> None:
        self._set(Reply(status, delay_s=delay_s))

    def throttle(self, retry_after: str) -> None:
        self._set(Reply(429, retry_after=retry_after))

    def delay(self, seconds: float) -> None:
        """Answer 200 after ``seconds``, so each delivery stays in flight that long."""
        self._set(Reply(200, delay_s=seconds))

    def move(self, location: str, status: int = 308) -> None:
        """Answer every request to ``PATH`` with a redirect to ``location``; ``MOVED_PATH`` answers as
        before. ``location`` is sent as given (relative or absolute)."""
        with self._lock:
            self._moved = Reply(status, location=location)

    def respond_next(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, one each, then go back to the default."""
        with self._lock:
            self._behaviour.queued.extend(replies)

    def hold(self) -> None:
        """Keep every request from now on unanswered (in flight) until ``release()``; what it is then
        answered is decided when it arrives, as always."""
        with self._lock:
            self._held = True

    def release(self) -> None:
        """Answer the held requests, and answer the next ones without holding them."""
        with self._lock:
            self._held = False

    def _set(self, reply: Reply) -> None:
        with self._lock:
            self._behaviour.default = reply
            self._behaviour.queued.clear()

    # -- up and down -----------------------------------------------------------------------
    @property
    def is_up(self) -> bool:
        return self._server is not None

    def up(self) -> None:
        """Serve on ``self.port`` (the same socket every time)."""
        if self._closed:
            raise RuntimeError("the webhook receiver is closed")
        if self._server is not None:
            return
        if self._refuser is not None:
            self._refuser.stop()
            self._refuser = None
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, timeout_graceful_shutdown=1,
                                lifespan="off")
        server = uvicorn.Server(config)
        # uvicorn closes the sockets it serves when it stops: it gets a duplicate, the port stays ours.
        thread = threading.Thread(target=server.run, kwargs={"sockets": [self._listener.dup()]},
                                  name=f"receiver-{self.port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                server.should_exit = True
                thread.join(timeout=15)
                self._refuser = _Refuser(self._listener)
                raise RuntimeError(f"the webhook receiver did not start on port {self.port}")
            time.sleep(0.01)
        self._server, self._thread = server, thread

    def down(self) -> None:
        """Stop serving: senders' connections are reset at once until ``up()``; the port stays bound."""
        if self._server is None:
            return
        self._server.should_exit = True
        assert self._thread is not None
        self._thread.join(timeout=15)
        if self._thread.is_alive():
            raise RuntimeError("the webhook receiver did not stop")
        self._server = self._thread = None
        self._refuser = _Refuser(self._listener)

    def close(self) -> None:
        """Stop for good and give the port back."""
        if self._closed:
            return
        self.down()
        if self._refuser is not None:
            self._refuser.stop()
            self._refuser = None
        self._listener.close()
        self._closed = True

    # -- what it got -----------------------------------------------------------------------
    def records(self) -> list[Received]:
        with self._lock:
            return list(self._records)

    def accepted(self) -> list[Received]:
        return [r for r in self.records() if r.accepted]

    def received_ids(self) -> list[str]:
        """Ids of the events it accepted (2xx), in arrival order, repeats included."""
        return [r.event_id for r in self.accepted() if r.event_id is not None]

    def events_for(self, scan_id: str) -> list[Received]:
        """Accepted requests about one scan, in arrival order."""
        return [r for r in self.accepted() if r.body and r.body.get("data", {}).get("scan_id") == scan_id]

    def attempts_for(self, event_id: str) -> list[Received]:
        """Every request that carried ``event_id``, whatever it was answered."""
        return [r for r in self.records() if r.event_id == event_id]

    def in_flight(self) -> list[Received]:
        """Requests read and not yet answered (held or delayed), in arrival order."""
        with self._lock:
            return list(self._in_flight)

    @property
    def peak_in_flight(self) -> int:
        """The most requests that were in flight at once."""
        with self._lock:
            return self._peak_in_flight

    # -- the endpoint ----------------------------------------------------------------------
    async def _handle(self, request: Request) -> JSONResponse:
        raw = await request.body()
        arrived = time.monotonic()
        headers = dict(request.headers)
        try:
            verify_signature(self.secret, request.headers, raw, self.tolerance_s)
            problem = None
        except SignatureError as exc:
            problem = exc.code
        try:
            Webhook(standard_secret(self.secret)).verify(raw, dict(request.headers), json_parse=False)
            standard = None
        except WebhookVerificationError as exc:
            standard = str(exc)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        path = request.url.path
        with self._lock:
            if problem is not None or standard is not None:
                reply = Reply(401)
            elif path == PATH and self._moved is not None:
                reply = self._moved
            else:
                reply = self._behaviour.next()
            record = Received(event_id=request.headers.get(EVENT_ID_HEADER), body=body, raw=raw, headers=headers,
                              arrived_at=arrived, status=reply.status, signature_error=problem, standard_error=standard,
                              path=path)
            self._records.append(record)
            self._in_flight.append(record)
            self._peak_in_flight = max(self._peak_in_flight, len(self._in_flight))
        try:
            while self._held:
                await asyncio.sleep(0.005)
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            record.answered_at = time.monotonic()
        finally:
            with self._lock:
                self._in_flight = [r for r in self._in_flight if r is not record]
        extra = {"Retry-After": reply.retry_after} if reply.retry_after is not None else {}
        if reply.location is not None:
            extra["Location"] = reply.location
        return JSONResponse({"status": reply.status}, status_code=reply.status, headers=extra or None)
