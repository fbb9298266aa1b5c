"""A lean closed-loop HTTP/1.1 load generator over raw asyncio sockets.

No HTTP library: each connection writes one pre-encoded request (with Content-Length), reads the
status line, the headers and a Content-Length body, and sends the next one on the same keep-alive
connection. That keeps the client's per-request cost to a few microseconds of Python, so that on a
small machine the server, not the client, is what gets measured. Times are ``time.perf_counter``
seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

RequestFactory = Callable[[int], bytes]  # request number -> one whole encoded HTTP/1.1 request

_MAX_ERROR_SAMPLES = 3


@dataclass
class LoadResult:
    """What one closed-loop run measured."""

    requests: int  # responses received, every status
    errors: int  # non-2xx responses plus failed connections/exchanges
    elapsed_s: float  # from all connections open to the last response
    cpu_s: float  # this (client) process's CPU time over the run
    latencies_s: list[float] = field(repr=False)  # one per response, seconds
    error_samples: list[str] = field(default_factory=list)  # the first few, for the report

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile of the latencies, ``q`` in 0..100, milliseconds."""
        if not self.latencies_s:
            return math.nan
        ordered = sorted(self.latencies_s)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1] * 1e3


def encode_post(path: str, body: bytes, headers: dict[str, str] | None = None, host: str = "127.0.0.1") -> bytes:
    """A complete keep-alive ``POST`` request."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Exchange(Exception):
    """The server answered something this client does not read (no Content-Length)."""


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep_alive) of one response."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise _Exchange(f"response without content-length: {head[:200]!r}")
    end = lower.index(b"\r\n", at + 17)
    body = await reader.readexactly(int(lower[at + 17:end]))
    return status, body, b"\r\nconnection: close" not in lower


async def run_load(
    host: str, port: int, make_request: RequestFactory, *, concurrency: int, duration_s: float,
    numbers: itertools.count | None = None, rate_per_s: float | None = None,
) -> LoadResult:
    """``concurrency`` connections, each sending its next request as soon as the last is answered,
    until ``duration_s`` seconds have passed; requests in flight at the deadline are still counted.

    ``numbers`` hands out request numbers (shared across runs to keep them distinct).
    ``rate_per_s`` makes it an open loop: request k is due at start + k / rate, and its latency
    counts from that due time (a late send is the server's delay too: no coordinated omission).
    """
    numbers = numbers if numbers is not None else itertools.count()
    latencies: list[float] = []
    samples: list[str] = []
    errors = 0
    streams = await asyncio.gather(*(asyncio.open_connection(host, port) for _ in range(concurrency)))
    perf = time.perf_counter

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal errors
        record = latencies.append
        try:
            while perf() < deadline:
                request = make_request(next(numbers))
                if rate_per_s is None:
                    t0 = perf()
                else:
                    t0 = start + next(slots) / rate_per_s
                    if t0 >= deadline:
                        break
                    if t0 > perf():
                        await asyncio.sleep(t0 - perf())
                try:
                    # One request in flight per connection: the write buffer never grows, no drain.
                    writer.write(request)
                    status, body, keep_alive = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                        _Exchange) as exc:
                    errors += 1
                    if len(samples) < _MAX_ERROR_SAMPLES:
                        samples.append(f"{type(exc).__name__}: {exc}")
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                record(perf() - t0)
                if not 200 <= status < 300:
                    errors += 1
                    if len(samples) < _MAX_ERROR_SAMPLES:
                        samples.append(f"HTTP {status}: {body[:300].decode(errors='replace')}")
                if not keep_alive:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    slots = itertools.count()
    cpu0 = time.process_time()
    start = perf()
    deadline = start + duration_s
    await asyncio.gather(*(connection(r, w) for r, w in streams))
    elapsed = perf() - start
    return LoadResult(requests=len(latencies), errors=errors, elapsed_s=elapsed, cpu_s=time.process_time() - cpu0,
                      latencies_s=latencies, error_samples=samples)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed (a cheaper client), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
