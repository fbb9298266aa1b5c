"""A stand-in for the EC2 instance metadata service on a loopback port, for the spot notice tests
(never 169.254.169.254).

IMDSv2 only, as the instances are launched (``HttpTokens=required``): ``PUT /latest/api/token``
with ``X-aws-ec2-metadata-token-ttl-seconds`` (1–21600, else 400) returns a token; every ``GET``
must carry a live one in ``X-aws-ec2-metadata-token`` (else 401). Paths:
``/latest/meta-data/spot/instance-action`` (404 until ``interrupt()``, then
``{"action", "time"}``), ``/latest/meta-data/instance-life-cycle`` (``spot``) and
``/latest/meta-data/instance-id``.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_TTL_S = 21600


class Imds:
    def __init__(self, instance_id: str = "i-0123456789abcdef0") -> None:
        self.instance_id = instance_id
        self.notice: dict[str, str] | None = None
        self.tokens: dict[str, float] = {}  # token → expires at (monotonic)
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> Imds:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def interrupt(self, action: str = "terminate", in_s: float = 120.0) -> None:
        """Post the two-minute notice, as EC2 does before it takes the instance back."""
        when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=in_s)
        with self._lock:
            self.notice = {"action": action, "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def expire_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    def notice_reads(self) -> int:
        with self._lock:
            return sum(1 for m, p, _ in self.requests if m == "GET" and p.endswith("/spot/instance-action"))

    def _answer(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
        with self._lock:
            if method == "PUT" and path == "/latest/api/token":
                try:
                    ttl = int(headers.get("x-aws-ec2-metadata-token-ttl-seconds", ""))
                except ValueError:
                    return 400, ""
                if not 1 <= ttl <= MAX_TTL_S:
                    return 400, ""
                token = secrets.token_urlsafe(24)
                self.tokens[token] = time.monotonic() + ttl
                return 200, token
            if method != "GET":
                return 405, ""
            if self.tokens.get(headers.get("x-aws-ec2-metadata-token", ""), 0.0) <= time.monotonic():
                return 401, ""
            if path == "/latest/meta-data/spot/instance-action":
                return (200, json.dumps(self.notice)) if self.notice else (404, "")
            if path == "/latest/meta-data/instance-life-cycle":
                return 200, "spot"
            if path == "/latest/meta-data/instance-id":
                return 200, self.instance_id
            return 404, ""

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                status, body = imds._answer(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
                with imds._lock:
                    imds.requests.append((self.command, self.path, status))
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = _serve

            def log_message(self, *args: object) -> None:
                pass

        return Handler
