"""Benchmark: the embedded ``GET /metrics`` exposition over a metrics directory that dead processes
filled (a worker the autoscaler starts and stops leaves a counter file and a gauge file), tidied
(``service.metrics.exposition``: the first scrape folds the dead files into an archive, the next
ones read one file) against prometheus-client's collector reading every file at every scrape.

    python benchmarks/metrics_scrape.py [--processes 10 200 1000] [--scrapes 20]

Prints a table and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from service.metrics import exposition
from service.metrics_files import fresh
from service.settings import METRICS_DIR_ENV

NO_PID = 4_100_000  # above any pid this machine hands out: every file's process is dead


def fill(folder: Path, processes: int) -> None:
    """What ``processes`` ended workers leave: their task counts and their slot gauge."""
    for i in range(processes):
        counters = MmapedDict(str(folder / f"counter_{NO_PID + i}.db"))
        for algorithm in ("video_summary", "frame_stats"):
            key = mmap_key("scantide_worker_tasks", "scantide_worker_tasks_total", ["algorithm", "outcome"],
                           [algorithm, "completed"], "tasks")
            counters.write_value(key, 3.0, 0.0)
        counters.close()
        gauges = MmapedDict(str(folder / f"gauge_livesum_{NO_PID + i}.db"))
        gauges.write_value(mmap_key("scantide_worker_slots", "scantide_worker_slots", [], [], "slots"), 1.0, 0.0)
        gauges.close()


def timed(call, scrapes: int) -> tuple[float, float]:
    """(the first call, the median of the next ``scrapes``), milliseconds."""
    times = []
    for _ in range(scrapes + 1):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times[0], statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[10, 200, 1000])
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    rows = []
    for n in args.processes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = fresh(Path(tmp) / "raw")
            fill(folder, n)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(folder))
            _, raw = timed(lambda: generate_latest(registry), args.scrapes)
            folder = fresh(Path(tmp) / "tidied")
            fill(folder, n)
            os.environ[METRICS_DIR_ENV] = str(folder)
            first, tidied = timed(exposition, args.scrapes)
            rows.append({"processes": n, "untidied_ms": round(raw, 2), "first_ms": round(first, 2),
                         "tidied_ms": round(tidied, 2), "ratio": round(raw / tidied, 1)})
    print(f"{'dead processes':>15} {'untidied ms':>12} {'first tidy ms':>14} {'tidied ms':>10} {'ratio':>7}")
    for r in rows:
        print(f"{r['processes']:>15} {r['untidied_ms']:>12} {r['first_ms']:>14} {r['tidied_ms']:>10} {r['ratio']:>6}x")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
