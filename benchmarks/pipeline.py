"""Pipelines on the embedded default: how many 3-step runs a second, and how long a step waits
between its upstream finishing and itself starting.

Starts ``scantide up --fixed --workers 2`` (the API, the monitor, the conductor and two workers, the
conductor polling at its default 0.2 s, the workers at theirs) on a fresh state dir and a free
loopback port, registers once (not timed) the trivial command algorithm in
``benchmarks/pipeline_algorithms/bench_step`` and a pipeline of three steps of it, ``a -> b -> c``
(``b`` reads ``a``'s outputs, ``c`` reads both), then runs it on N scans (``POST /v1/scans`` with
``pipeline``; every scan id names the same small file under the data root, which the steps do not
read) until every run has ended; a run that fails, or does not end, fails the benchmark.

- ``runs/s``: N / the wall time from the first submit to the last run's end (its ``updated_at``).
- step overhead: for every step with an upstream (``b`` and ``c``; N * 2 samples), the step task's
  ``started_at`` - the latest ``finished_at`` of its upstream steps' tasks: the conductor seeing
  the upstream end and submitting the step (``handoff``: its task's ``queued_at`` - that end), then
  the task waiting in the queue until a worker claims it (``claim``: ``started_at`` - ``queued_at``).
  Reported as p50 / p95 / max, ms.

At most ``--in-flight`` runs (default: as many as workers) are under way at once; the next is
submitted as one ends. This keeps every ready step a free worker, so the overhead measured is the
orchestration's, not a backlog's: with all N runs submitted at once the steps of later runs queue
behind the first steps of the others and the "overhead" is the backlog's drain time (``--in-flight
0`` does that, to see it).

The anchor, measured in the same run: the same system and pipeline with the conductor polling every
12 s (``SCANTIDE_CONDUCTOR_POLL_S=12``, and no wake-ups: ``SCANTIDE_WAKE_UPS=false``), like ClearML's ``PipelineController``, which checks its
steps every ``pool_frequency=0.2`` minutes by default; a second ``scantide up`` on its own fresh
state dir and port, over ``--anchor-scans`` runs submitted at once (each run costs about four
polls, 48 s; ten trivial tasks at a time clear two workers in two or three seconds, well inside one
poll).

    python benchmarks/pipeline.py [--scans 100] [--workers 2] [--anchor-scans 10] [--in-flight N]

Prints a table, the ratio of the anchor's p95 step overhead to ours, and last one JSON line
``{"runs_per_s", "step_overhead_ms_p95", "anchor_step_overhead_ms_p95", "scans", "workers"}``.
Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._proc import HOST, free_port, stop, wait_healthy  # noqa: E402
from scantide import Client  # noqa: E402

ALGORITHM = Path(__file__).resolve().parent / "pipeline_algorithms" / "bench_step"
PIPELINE = "bench_chain"
UPSTREAM = {"a": (), "b": ("a",), "c": ("a", "b")}  # step -> the steps it needs (and reads)
PIPELINE_YAML = f"""\
name: {PIPELINE}
version: "1"
description: Three trivial steps in a chain, for benchmarks/pipeline.py.
steps:
  - name: a
    algorithm: bench_step
  - name: b
    algorithm: bench_step
    needs: [a]
    inputs: [steps.a.outputs]
  - name: c
    algorithm: bench_step
    needs: [a, b]
    inputs: [steps.a.outputs, steps.b.outputs]
"""
ANCHOR_POLL_S = 12.0  # ClearML PipelineController's default pool_frequency, 0.2 minutes
SCAN_NAME = "bench-scan.bin"


@dataclass
class Measured:
    label: str
    runs: int
    wall_s: float
    overhead_ms: list[float]
    handoff_ms: list[float]
    claim_ms: list[float]

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.wall_s


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1), nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ts(value: str | None) -> float:
    if value is None:
        raise SystemExit("a task of a completed step has no timestamp")
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@contextlib.contextmanager
def scantide_up(workers: int, extra_env: dict[str, str]) -> Iterator[tuple[str, str, Path]]:
    """``scantide up --fixed --workers N`` on a fresh state dir and free loopback port: (url, token, state)."""
    with tempfile.TemporaryDirectory(prefix="scantide-bench-pipeline-") as tmp:
        state = Path(tmp)
        port = free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SCANTIDE_")},
               "SCANTIDE_STATE_DIR": str(state), "SCANTIDE_API_HOST": HOST, "SCANTIDE_API_PORT": str(port),
               "SCANTIDE_CONFIG": str(state / "absent.toml"), **extra_env}
        log = open(state / "up.log", "wb")  # noqa: SIM115 - closed after the child stops
        up = subprocess.Popen([sys.executable, "-m", "service.cli", "up", "--fixed", "--workers", str(workers)],
                              env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                              cwd=Path(__file__).resolve().parents[1])
        try:
            url = f"http://{HOST}:{port}"
            wait_healthy(url, up)
            yield url, (state / "api_token").read_text().strip(), state
        except BaseException:
            log.flush()
            tail = (state / "up.log").read_bytes()[-3000:].decode(errors="replace")
            print(f"--- the tail of scantide up's log ---\n{tail}", file=sys.stderr)
            raise
        finally:
            stop(up, timeout_s=60)
            log.close()


def prepare(url: str, token: str, state: Path) -> None:
    """Register the algorithm and the pipeline, and write the one scan file (none of it timed)."""
    with Client(url, token) as client:
        client.register_algorithm(ALGORITHM)
    r = httpx.post(f"{url}/v1/pipelines", content=PIPELINE_YAML, timeout=30,
                   headers={"Authorization": f"Bearer {token}", "Content-Type": "application/yaml"})
    if r.status_code not in (200, 201):
        raise SystemExit(f"registering the pipeline: {r.status_code} {r.text}")
    data = state / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / SCAN_NAME).write_bytes(b"scantide benchmark scan\n")


def drive(url: str, token: str, label: str, scans: int, in_flight: int, timeout_s: float) -> Measured:
    """Run the pipeline on ``scans`` scans, at most ``in_flight`` at once (0: all), and measure."""
    window = scans if in_flight <= 0 else in_flight
    ended: dict[str, dict] = {}
    running: list[str] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        def submit(i: int) -> None:
            r = http.post("/v1/scans", json={"scan_id": f"bench-{i:05d}", "scan_uri": SCAN_NAME,
                                             "pipeline": PIPELINE})
            if r.status_code != 202:
                raise SystemExit(f"[{label}] POST /v1/scans: {r.status_code} {r.text}")
            running.append(r.json()["run_id"])

        next_scan = 0
        started = time.time()
        deadline = time.monotonic() + timeout_s
        said = time.monotonic()
        while len(ended) < scans:
            while next_scan < scans and len(running) < window:
                submit(next_scan)
                next_scan += 1
            for run_id in list(running):
                r = http.get(f"/v1/runs/{run_id}")
                r.raise_for_status()
                run = r.json()
                if run["state"] == "failed":
                    raise SystemExit(f"[{label}] run {run_id} failed: {json.dumps(run['error'])}")
                if run["state"] == "completed":
                    running.remove(run_id)
                    ended[run_id] = run
            if time.monotonic() >= deadline:
                raise SystemExit(f"[{label}] only {len(ended)} of {scans} runs ended in {timeout_s:.0f} s")
            if time.monotonic() - said >= 3.0:
                said = time.monotonic()
                print(f"[{label}] {len(ended)}/{scans} runs ended, {time.time() - started:.0f} s", file=sys.stderr)
            if len(ended) < scans:
                time.sleep(0.1 if window <= 4 else 0.5)
        print(f"[{label}] {scans}/{scans} runs ended, {time.time() - started:.0f} s; reading their tasks",
              file=sys.stderr)
        wall = max(ts(run["updated_at"]) for run in ended.values()) - started
        overhead, handoff, claim = [], [], []
        for run in ended.values():
            tasks = {}
            for step, s in run["steps"].items():
                if s["state"] != "completed" or not s["task_id"]:
                    raise SystemExit(f"[{label}] run {run['run_id']} step {step} is {s['state']}, not completed")
                r = http.get(f"/v1/tasks/{s['task_id']}")
                r.raise_for_status()
                tasks[step] = r.json()
            for step, needs in UPSTREAM.items():
                if not needs:
                    continue
                upstream_end = max(ts(tasks[n]["finished_at"]) for n in needs)
                start, queued = ts(tasks[step]["started_at"]), ts(tasks[step]["queued_at"])
                overhead.append((start - upstream_end) * 1000)
                handoff.append((queued - upstream_end) * 1000)
                claim.append((start - queued) * 1000)
    return Measured(label, scans, wall, overhead, handoff, claim)


def measure(label: str, workers: int, scans: int, in_flight: int, extra_env: dict[str, str],
            timeout_s: float) -> Measured:
    with scantide_up(workers, extra_env) as (url, token, state):
        prepare(url, token, state)
        return drive(url, token, label, scans, in_flight, timeout_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=100, help="Pipeline runs of ours (default 100).")
    parser.add_argument("--workers", type=int, default=2, help="Fixed workers of each scantide up (default 2).")
    parser.add_argument("--anchor-scans", type=int, default=10, help="Pipeline runs of the anchor (default 10).")
    parser.add_argument("--in-flight", type=int, default=None,
                        help="Most of our runs under way at once (default: --workers; 0: all at once).")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="Give up on a side after this long.")
    args = parser.parse_args(argv)
    in_flight = args.workers if args.in_flight is None else args.in_flight
    ours = measure("ours", args.workers, args.scans, in_flight, {}, args.timeout_s)
    anchor = measure("anchor", args.workers, args.anchor_scans, 0,
                     {"SCANTIDE_CONDUCTOR_POLL_S": str(ANCHOR_POLL_S), "SCANTIDE_WAKE_UPS": "false"}, args.timeout_s)

    width = 56
    print(f"{'what':<{width}} {'runs':>5} {'wall s':>7} {'runs/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}"
          f"   {'handoff p50/p95':>15} {'claim p50/p95':>13}")
    for m, what in ((ours, f"scantide, conductor poll 0.2 s, {args.workers} workers, "
                           f"{in_flight or 'all'} in flight"),
                    (anchor, f"conductor poll {ANCHOR_POLL_S:.0f} s (ClearML default, anchor)")):
        print(f"{what:<{width}} {m.runs:>5} {m.wall_s:>7.1f} {m.runs_per_s:>7.2f} {pct(m.overhead_ms, .5):>8.0f} "
              f"{pct(m.overhead_ms, .95):>8.0f} {max(m.overhead_ms):>8.0f}   "
              f"{pct(m.handoff_ms, .5):>7.0f}/{pct(m.handoff_ms, .95):<7.0f} "
              f"{pct(m.claim_ms, .5):>6.0f}/{pct(m.claim_ms, .95):<6.0f}")
    p95, anchor_p95 = pct(ours.overhead_ms, .95), pct(anchor.overhead_ms, .95)
    print(f"ratio anchor/ours, step overhead p95: {anchor_p95 / p95:.1f}x "
          f"({anchor_p95:.0f} ms / {p95:.0f} ms); goal p95 <= 1000 ms: {'met' if p95 <= 1000 else 'NOT met'}")
    print(json.dumps({"runs_per_s": round(ours.runs_per_s, 3), "step_overhead_ms_p95": round(p95, 1),
                      "anchor_step_overhead_ms_p95": round(anchor_p95, 1), "scans": args.scans,
                      "workers": args.workers}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
