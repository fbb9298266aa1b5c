"""The platform's side, for the demo: a webhook endpoint on loopback that checks every Standard Webhooks
signature (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) with scantide's helper."""

from __future__ import annotations

import json
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI, Request

from service.signing import EVENT_ID_HEADER, SignatureError, verify_signature


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """The platform's side, for the demo: a webhook endpoint that checks every signature."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.events: list[tuple[dict, bool]] = []  # (event, signature valid)
        self._arrived: list[float] = []  # time.time() each event arrived, beside events
        self.port = free_port()
        app = FastAPI()

        @app.post("/hooks/scantide")
        async def hook(request: Request) -> dict:
            body = await request.body()
            try:
                verify_signature(secret, request.headers, body)
                valid = True
            except SignatureError:
                valid = False
            event = json.loads(body)
            if request.headers.get(EVENT_ID_HEADER) != event["id"]:
                valid = False
            self._arrived.append(time.time())
            self.events.append((event, valid))
            return {"ok": True}

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def arrivals(self) -> list[tuple[dict, bool, float]]:
        """(event, signature valid, time.time() it arrived), in order of arrival."""
        return [(e, v, t) for (e, v), t in zip(list(self.events), list(self._arrived), strict=False)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/scantide"

    def __enter__(self) -> Receiver:
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
