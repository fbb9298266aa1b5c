"""How the API is served: the uvicorn options every server of it shares (``scantide api`` and the
tests' ``api`` fixture), which bound a request's line and headers.

uvicorn reads a request's line and headers whole before the app sees them, so no ASGI middleware
can bound them: a 64 MB header was read, and answered, before authentication. h11 has a limit of
its own (``h11_max_incomplete_event_size``: over it, a plain 400); httptools, which uvicorn
prefers, has none, so ``HeaderLimitedHttpTools`` counts the bytes of a request's head as they
arrive and answers 431 in our error shape past the same limit.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # uvicorn[standard] brings httptools

from service.errors import RequestHeaderTooLarge

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024  # request line and headers together; browsers and proxies send a few KiB


def server_options(max_header_bytes: int = MAX_HEADER_BYTES) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` / ``uvicorn.run``: the HTTP protocol and its header
    limit. max_header_bytes: the most a request's line and headers may take, bytes."""
    return {"http": HeaderLimitedHttpTools, "h11_max_incomplete_event_size": max_header_bytes}


def _431_response(limit: int) -> bytes:
    error = RequestHeaderTooLarge(f"the request line and headers exceed {limit} bytes; send fewer or shorter headers")
    body = json.dumps({"error": error.to_dict()}).encode()
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


class HeaderLimitedHttpTools(HttpToolsProtocol):
    """httptools with a bound on each request's head: the limit is the config's
    ``h11_max_incomplete_event_size``, so both parsers read one number.

    Bytes are counted per chunk read while a head is incomplete, so a head is refused once it
    passes the limit by at most one chunk (the event loop reads up to 256 KiB at a time). A chunk
    that completes a head is never counted, so a body beside it cannot trip the limit; the chunk a
    head starts in is counted whole, which with pipelining may include the end of the request before.
    """

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._max_head_bytes: int = config.h11_max_incomplete_event_size or MAX_HEADER_BYTES
        self._in_head = True  # a new connection starts with a request's head
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown closes idle connections and waits for each response in progress.
        A response already streaming can be an event stream (``/v1/status/events``), which never ends:
        its connection is closed instead, as a stopping process would; the client sees the stream end
        and reconnects. Other responses are sent whole once started, so none is cut short."""
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self.transport.close()
            return
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > self._max_head_bytes:
            log.warning("request_header_too_large client=%s limit_bytes=%d", _client(self.client),
                        self._max_head_bytes)
            self._in_head = False
            self.transport.write(_431_response(self._max_head_bytes))
            self.transport.close()


def _client(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "-"
