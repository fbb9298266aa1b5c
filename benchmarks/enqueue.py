"""Benchmark: ``POST /v1/scans`` against a bare FastAPI endpoint that answers 202.

Both are served the same way, one after the other: one uvicorn process each (httptools/uvloop
when importable, access log off, log level warning) on a free 127.0.0.1 port, warmed up, then
driven by the same closed-loop raw-socket client (``_load.py``) with the same concurrency over
keep-alive connections. Ours is the real app from ``service.api.create_app`` over a real
``EmbeddedBackend`` SQLite file in a temporary state dir, so every request is a distinct scan_id
and a durable insert (WAL, synchronous=FULL); its scan_uri names one small file under the data
root. The bare endpoint gets the very same requests. A third run offers ours a fixed rate
(open loop, ``--rate``) and reports its latency there: at 64 closed-loop connections latency is
64 / throughput by construction, which says little about how fast one request is served.

    python benchmarks/enqueue.py [--duration 8] [--concurrency 64] [--rate 300]

Prints a table, a ratio line, a saturation line per run and, last, one JSON object. Exits 1 if
any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._load import LoadResult, RequestFactory, encode_post, new_event_loop, run_load
from benchmarks._proc import HOST, HTTP, LOOP, busy_cores_s, cpu_s, free_port, stop

TOKEN = "bench-token"
SCAN_FILE = "bench-scan.mp4"
GOAL_RATIO = 0.5
GOAL_P99_MS = 20.0
SATURATED = 0.9  # a process using this share of one core or more is taken to be the bottleneck
ROWS = {"ours": "scantide POST /v1/scans", "bare": "bare FastAPI 202"}


# -- server side (runs in the subprocess) ------------------------------------------------------
def _bare_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()
    body = {"task_id": "0" * 32, "scan_id": "bench-00000000", "algorithm": "video_summary", "state": "queued",
            "created": True, "links": {"task": "/v1/tasks/" + "0" * 32, "scan": "/v1/scans/bench-00000000"}}

    @app.post("/v1/scans", status_code=202)
    async def post_scan() -> dict[str, Any]:
        return body

    return app


def _our_app(state_dir: Path) -> Any:
    from service.api import create_app
    from service.settings import load_settings

    settings = load_settings(backend="embedded", state_dir=state_dir, data_root=state_dir / "data",
                             output_root=state_dir / "outputs", api_tokens={TOKEN: ["enqueue"]})
    return create_app(settings)


def serve(kind: str, port: int, state_dir: Path) -> None:
    """Serve one app until SIGTERM/SIGINT, or until the parent goes away (stdin closes)."""
    import uvicorn

    app = _our_app(state_dir) if kind == "ours" else _bare_app()
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, loop=LOOP, http=HTTP, access_log=False,
                                           log_level="warning"))

    def exit_with_parent() -> None:
        sys.stdin.buffer.read()
        server.should_exit = True

    threading.Thread(target=exit_with_parent, daemon=True).start()
    server.run()


# -- benchmark side ----------------------------------------------------------------------------
@dataclass
class Server:
    proc: subprocess.Popen
    port: int

    def cpu_s(self) -> float | None:
        return cpu_s(self.proc.pid)


@contextmanager
def running(kind: str, state_dir: Path, log: Path, timeout_s: float = 30.0) -> Iterator[Server]:
    """One server subprocess, accepting connections; stopped (and reaped) on exit."""
    port = free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--port", str(port),
            "--state-dir", str(state_dir)]
    # Hermetic: no SCANTIDE_* from our environment, no scantide.toml from our working directory.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANTIDE_")}
    with open(log, "wb") as out:
        # Own session: a Ctrl-C reaches only us, and we stop the server in order.
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=out, env=env, cwd=log.parent,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} server did not accept connections in {timeout_s:.0f} s") from None
                time.sleep(0.05)
        yield Server(proc, port)
    finally:
        stop(proc)


def _request_factory(scan_uri: str) -> RequestFactory:
    """Every request the same size, each with its own scan_id (so each is a real insert)."""
    prefix = b'{"scan_id":"bench-'
    suffix = f'","scan_uri":{json.dumps(scan_uri)}}}'.encode()
    body_len = len(prefix) + 8 + len(suffix)
    # Encode the head for a body of that length, then splice the body in per request.
    head = encode_post("/v1/scans", b"x" * body_len, {"Authorization": f"Bearer {TOKEN}"}, host=HOST)[:-body_len]
    start = head + prefix

    def make(n: int) -> bytes:
        return start + b"%08d" % n + suffix

    return make


@dataclass
class Run:
    load: LoadResult
    server_cpu_s: float | None
    machine_cpu_s: float | None  # every process, ours included

    def server_cores(self) -> float | None:
        return None if self.server_cpu_s is None else self.server_cpu_s / self.load.elapsed_s

    def client_cores(self) -> float:
        return self.load.cpu_s / self.load.elapsed_s

    def server_cpu_ms_per_request(self) -> float | None:
        if self.server_cpu_s is None or not self.load.requests:
            return None
        return self.server_cpu_s / self.load.requests * 1e3

    def other_cores(self) -> float | None:
        """CPU that neither the server nor the client used: other work on a shared machine."""
        if self.machine_cpu_s is None or self.server_cpu_s is None:
            return None
        return max(0.0, (self.machine_cpu_s - self.server_cpu_s - self.load.cpu_s) / self.load.elapsed_s)


def measure(server: Server, make: RequestFactory, numbers: itertools.count, *, concurrency: int, duration_s: float,
            warmup_s: float, rate_per_s: float | None = None) -> Run:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        warm = runner.run(run_load(HOST, server.port, make, concurrency=concurrency, duration_s=warmup_s,
                                   numbers=numbers))
        if warm.errors:
            raise RuntimeError(f"warm-up failed: {warm.errors} errors, e.g. {warm.error_samples}")
        cpu0, busy0 = server.cpu_s(), busy_cores_s()
        load = runner.run(run_load(HOST, server.port, make, concurrency=concurrency, duration_s=duration_s,
                                   numbers=numbers, rate_per_s=rate_per_s))
        cpu1, busy1 = server.cpu_s(), busy_cores_s()
    return Run(load, _delta(cpu0, cpu1), _delta(busy0, busy1))


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _bound(run: Run) -> str:
    """Which process limits the run, from how much CPU each used while it ran."""
    server, client, other = run.server_cores(), run.client_cores(), run.other_cores()
    if server is None or other is None:
        return f"client {client:.0%} of a core (server CPU unknown off Linux)"
    cpus = f"server {server:.0%} of a core, client {client:.0%}, other processes {other:.0%}"
    if server >= SATURATED and server >= client:
        verdict = "server-bound"
    elif client >= SATURATED:
        verdict = "CLIENT-BOUND (the server could do more: its rps is a lower bound)"
    elif server + client + other >= SATURATED * (os.cpu_count() or 1):
        verdict = "CPU-STARVED (every core busy, other processes included: rps is a lower bound)"
    else:
        verdict = "neither saturates a core (the server waits: I/O, locks, GIL hand-offs)"
    return f"{cpus} -> {verdict}"


def report(runs: dict[str, Run], at_rate: Run, rate: float, *, concurrency: int, duration_s: float) -> dict[str, Any]:
    ours, bare = runs["ours"].load, runs["bare"].load
    print(f"uvicorn loop={LOOP} http={HTTP}, 1 process each, {concurrency} keep-alive connections, "
          f"{duration_s:g} s per server, {os.cpu_count()} CPUs")
    print(f"{'':26}{'requests':>10}{'errors':>8}{'rps':>10}{'p50 ms':>9}{'p99 ms':>9}{'server CPU ms/req':>19}")
    for kind, run in runs.items():
        r, cpu = run.load, run.server_cpu_ms_per_request()
        print(f"{ROWS[kind]:26}{r.requests:>10}{r.errors:>8}{r.rps:>10.0f}{r.percentile_ms(50):>9.2f}"
              f"{r.percentile_ms(99):>9.2f}{'-' if cpu is None else f'{cpu:.3f}':>19}")
    ratio = ours.rps / bare.rps if bare.rps else 0.0
    p99 = ours.percentile_ms(99)
    met = ratio >= GOAL_RATIO and p99 <= GOAL_P99_MS
    print(f"ratio ours/bare = {ratio:.2f} (goal >= {GOAL_RATIO}), ours p99 = {p99:.1f} ms (goal <= {GOAL_P99_MS:g}): "
          f"{'goal met' if met else 'GOAL NOT MET'}")
    fixed = at_rate.load
    print(f"{ROWS['ours']} at a fixed {rate:g} req/s offered (open loop, latency from each request's due time): "
          f"p50 {fixed.percentile_ms(50):.2f} ms, p99 {fixed.percentile_ms(99):.2f} ms, {fixed.errors} errors")
    for kind, run in runs.items():
        print(f"{ROWS[kind]}: {_bound(run)}")
        for sample in run.load.error_samples:
            print(f"  error: {sample}")
    return {
        "ratio": round(ratio, 3), "rps": round(ours.rps, 1), "bare_rps": round(bare.rps, 1),
        "p50_ms": round(ours.percentile_ms(50), 2), "p99_ms": round(p99, 2),
        "bare_p50_ms": round(bare.percentile_ms(50), 2), "bare_p99_ms": round(bare.percentile_ms(99), 2),
        "concurrency": concurrency, "duration_s": duration_s, "errors": ours.errors + bare.errors + fixed.errors,
        "rate_per_s": rate, "p50_ms_at_rate": round(fixed.percentile_ms(50), 2),
        "p99_ms_at_rate": round(fixed.percentile_ms(99), 2),
        "goal_met": met,
        "cpu_ms_per_req": _round(runs["ours"].server_cpu_ms_per_request(), 3),
        "bare_cpu_ms_per_req": _round(runs["bare"].server_cpu_ms_per_request(), 3),
        "server_cores": _round(runs["ours"].server_cores()), "bare_server_cores": _round(runs["bare"].server_cores()),
        "client_cores": _round(runs["ours"].client_cores()), "bare_client_cores": _round(runs["bare"].client_cores()),
        "other_cores": _round(runs["ours"].other_cores()), "bare_other_cores": _round(runs["bare"].other_cores()),
        "loop": LOOP, "http": HTTP,
    }


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


def bench(*, concurrency: int, duration_s: float, warmup_s: float, rate: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="scantide-bench-enqueue-") as tmp:
        state_dir = Path(tmp) / "state"
        data_root = state_dir / "data"
        data_root.mkdir(parents=True)
        scan = data_root / SCAN_FILE
        scan.write_bytes(os.urandom(4096))  # enqueue only checks that it exists
        make = _request_factory(str(scan))
        numbers = itertools.count()  # scan_ids stay distinct across warm-up and runs
        runs = {}
        for kind in ("ours", "bare"):
            with running(kind, state_dir, Path(tmp) / f"{kind}.log") as server:
                runs[kind] = measure(server, make, numbers, concurrency=concurrency, duration_s=duration_s,
                                     warmup_s=warmup_s)
                if kind == "ours":
                    at_rate = measure(server, make, numbers, concurrency=concurrency, duration_s=duration_s / 2,
                                      warmup_s=0.2, rate_per_s=rate)
        return report(runs, at_rate, rate, concurrency=concurrency, duration_s=duration_s)


def _sigterm_as_ctrl_c(signum: int, frame: object) -> None:
    # As SIGINT, so that inside a load run asyncio's Runner cancels it cleanly.
    signal.raise_signal(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per server (default 8)")
    parser.add_argument("--concurrency", type=int, default=64, help="keep-alive connections (default 64)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per server (default 1)")
    parser.add_argument("--rate", type=float, default=300.0,
                        help="offered req/s of the open-loop latency run of ours (default 300)")
    parser.add_argument("--serve", choices=ROWS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.state_dir)
        return 0
    # Ctrl-C (even when started in the background, where it is ignored) and SIGTERM unwind, so
    # the servers are stopped and the temp dir removed.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    try:
        summary = bench(concurrency=args.concurrency, duration_s=args.duration, warmup_s=args.warmup, rate=args.rate)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(json.dumps(summary))
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
