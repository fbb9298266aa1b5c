"""``Knot.map`` against ``ProcessPoolExecutor``: what it costs to ship a trivial function through
scantide on the embedded default, per call.

Starts ``scantide up --fixed --workers 2`` (the API, the monitor and two workers) on a fresh state
dir and a free loopback port, registers the function once (not timed), then times
``Knot(f).map(range(N))`` until every result is back: N uploads, N submits, N tasks each run by a
worker in a process of its own, results polled. The anchor, measured in the same run:
``ProcessPoolExecutor(2).map(f, range(N))``, started cold.

    python benchmarks/map.py [--calls 200] [--workers 2]

Prints a table, the ratio of the pool's rate to ours, and last one JSON line
``{"tasks_per_s", "pool_tasks_per_s", "overhead_ms_per_task"}``; overhead is the extra wall time
per call, ``(ours - pool) / N``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._proc import HOST, free_port, stop, wait_healthy  # noqa: E402
from scantide import Client, Knot  # noqa: E402


def square(x: int) -> int:
    return x * x


def pool_run(calls: int, workers: int) -> float:
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        assert list(pool.map(square, range(calls))) == [x * x for x in range(calls)]
    return time.perf_counter() - started


def knot_run(url: str, token: str, calls: int) -> float:
    with Client(url, token, poll_s=0.05) as client:
        knot = Knot(square, client=client)
        knot.register()
        started = time.perf_counter()
        futures = knot.map(range(calls))
        assert [f.result(timeout=1800) for f in futures] == [x * x for x in range(calls)]
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scantide-bench-map-") as state:
        port = free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SCANTIDE_")},
               "SCANTIDE_STATE_DIR": state, "SCANTIDE_API_PORT": str(port),
               "SCANTIDE_CONFIG": str(Path(state) / "absent.toml"), "SCANTIDE_WORKER_POLL_S": "0.05"}
        log = open(Path(state) / "up.log", "wb")  # noqa: SIM115 - closed after the child stops
        up = subprocess.Popen([sys.executable, "-m", "service.cli", "up", "--fixed", "--workers", str(args.workers)],
                              env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            url = f"http://{HOST}:{port}"
            wait_healthy(url)
            token = (Path(state) / "api_token").read_text().strip()
            ours = knot_run(url, token, args.calls)
        finally:
            stop(up, timeout_s=60)
            log.close()
    pool = pool_run(args.calls, args.workers)
    rate, pool_rate = args.calls / ours, args.calls / pool
    overhead_ms = (ours - pool) / args.calls * 1000
    print(f"{'what':<40} {'wall s':>8} {'calls/s':>9}")
    print(f"{'Knot.map, embedded, ' + str(args.workers) + ' workers':<40} {ours:>8.2f} {rate:>9.2f}")
    print(f"{'ProcessPoolExecutor(' + str(args.workers) + ') (anchor)':<40} {pool:>8.2f} {pool_rate:>9.2f}")
    print(f"ratio anchor/ours: {pool_rate / rate:.0f}x; overhead per call: {overhead_ms:.0f} ms")
    print(json.dumps({"tasks_per_s": round(rate, 3), "pool_tasks_per_s": round(pool_rate, 3),
                      "overhead_ms_per_task": round(overhead_ms, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
