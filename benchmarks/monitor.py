"""Benchmark: task completion → signed webhook received, through the real monitor.

The monitor is the shipped one, ``python -m service.cli monitor``, as a subprocess with the
settings passed as ``SCANTIDE_*`` variables (``settings_env``) and every monitor and webhook
setting at its default except the URL and secret. It watches a real ``EmbeddedBackend`` SQLite
file in a temporary state dir. The receiver runs in this process: uvicorn on a free 127.0.0.1
port serving a bare ASGI app that verifies each signature and records the arrival time
(``time.time()``) of each event id. This process also plays the worker (submit, claim, finish).

1. Latency: one completion every ``--interval`` seconds; latency = arrival − the time ``finish()``
   returned, per event.
2. Throughput: the monitor is stopped, ``--backlog`` completions (one scan each, so delivery runs
   at full concurrency) are written, the monitor is started again and the receiver waits for all
   of them. events/s counts from the monitor's spawn (start-up and catching up on the change
   feed included); "steady" counts from the first arrival to the last.
3. Lost: completions whose event never arrived within ``--straggler-s`` of the end of a phase.
4. Anchor: ClearML's Slack monitor polls every 10-15 s. It is MODELLED, not measured: for each
   latency-run completion, the time to the next tick of a 10 s poller whose phase is drawn from a
   seeded RNG (the send after the tick is taken to cost nothing, which favours the anchor).

    python benchmarks/monitor.py [--events 300] [--interval 0.06] [--backlog 3000]

Prints a table, a ratio line and, last, one JSON object. Exits 1 if an event was lost or a
signature failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
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

if __package__ in (None, ""):  # run as a script: make `benchmarks` and the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._proc import HOST, HTTP, LOOP, cpu_s, stop
from monitor.daemon import outbox_for
from monitor.events import event_id
from service.backends import open_backend
from service.backends.base import TaskBackend
from service.demo_receiver import free_port
from service.domain import JobState, TaskInfo
from service.settings import Settings, load_settings
from service.signing import EVENT_ID_HEADER, SignatureError, verify_signature
from service.supervisor import cli_argv, settings_env

REPO = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789abcdef"
WORKER = "bench-worker"
ALGORITHM = "video_summary"
ANCHOR_POLL_S = 10.0  # ClearML's Slack monitor polls every 10-15 s; the low end favours it
GOAL_P95_S = 2.0
MONITOR_FIELDS = ("monitor_poll_s", "webhook_timeout_s", "webhook_max_age_s", "webhook_backoff_base_s",
                  "webhook_backoff_cap_s", "webhook_concurrency", "stall_no_heartbeat_s", "max_queue_wait_s",
                  "backlog_slo_s")
ANCHOR_ROW = f"anchor: ClearML-style {ANCHOR_POLL_S:g} s poll (modelled)"


# -- the platform's side -----------------------------------------------------------------------
class Receiver:
    """A webhook endpoint on loopback: verifies every signature, keeps the first arrival per event id.

    A bare ASGI app rather than FastAPI, so that on a small machine the receiver costs the monitor
    as little CPU as possible. A bad signature is answered 400, which the monitor dead-letters: it
    then shows up as a lost event.
    """

    def __init__(self, secret: str) -> None:
        import uvicorn

        self.secret = secret
        self.arrivals: dict[str, float] = {}  # event id → unix seconds of its first arrival
        self.duplicates = 0
        self.bad = 0
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self._app, host=HOST, port=self.port, loop=LOOP, http=HTTP,
                                                    interface="asgi3", lifespan="off", access_log=False, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hooks/scantide"

    async def _app(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        status = self._record({k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}, body,
                              time.time())
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    def _record(self, headers: dict[str, str], body: bytes, at: float) -> int:
        try:
            verify_signature(self.secret, headers, body)
            eid = json.loads(body)["id"]
        except (SignatureError, ValueError, KeyError):
            self.bad += 1
            return 400
        if headers.get(EVENT_ID_HEADER) != eid:
            self.bad += 1
            return 400
        if eid in self.arrivals:
            self.duplicates += 1
        else:
            self.arrivals[eid] = at
        return 200

    def wait_for(self, ids: list[str], timeout_s: float, monitor: subprocess.Popen | None = None) -> bool:
        """Wait until every id has arrived (True) or ``timeout_s`` passes (False)."""
        deadline = time.monotonic() + timeout_s
        pending = [i for i in ids if i not in self.arrivals]
        while pending:
            if time.monotonic() > deadline:
                return False
            if monitor is not None and monitor.poll() is not None:
                raise RuntimeError(f"the monitor exited with status {monitor.returncode}")
            time.sleep(0.01)
            pending = [i for i in pending if i not in self.arrivals]
        return True

    def __enter__(self) -> Receiver:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the receiver did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


# -- the worker's side -------------------------------------------------------------------------
class Worker:
    """Submits, claims and finishes tasks the way a worker process would, one at a time."""

    def __init__(self, backend: TaskBackend, queue: str, output_root: Path) -> None:
        self.backend = backend
        self.queue = queue
        self.output_root = output_root
        backend.register_worker(WORKER, queue)

    def start(self, scan_id: str) -> TaskInfo:
        """Submit a scan and claim it: the task is running."""
        self.backend.submit(ALGORITHM, scan_id, {"metadata": {"bench": True}}, str(self.output_root / scan_id))
        task = self.backend.claim(self.queue, WORKER, lease_s=300.0)
        if task is None or task.scan_id != scan_id:
            raise RuntimeError(f"claimed {task and task.scan_id!r}, expected {scan_id!r}")
        return task

    def finish(self, task: TaskInfo) -> tuple[str, float]:
        """Complete the task; (the id of the event it calls for, unix seconds when finish() returned)."""
        done = self.backend.finish(task.task_id, WORKER, result=_result(task))
        at = time.time()
        return event_id(done.task_id, JobState.completed.value, done.attempt), at


def _result(task: TaskInfo) -> dict[str, Any]:
    """A result shaped like the video summary's, so events have their real size."""
    return {"output_uri": task.output_uri,
            "outputs": {"summary": "summary.json", "contact_sheet": "contact_sheet.jpg",
                        "keyframes": [f"keyframes/{i:02d}.jpg" for i in range(8)]},
            "summary": {"frames": 900, "duration_s": 30.0, "keyframes": 8, "segments": 10}}


# -- the monitor -------------------------------------------------------------------------------
@contextmanager
def running_monitor(settings: Settings, log: Path) -> Iterator[subprocess.Popen]:
    """``scantide monitor`` as a subprocess with our settings; stopped with SIGTERM (and reaped) on exit."""
    env = {**os.environ, **settings_env(settings)}
    with open(log, "ab") as out:
        # Own session: a Ctrl-C reaches only us, and we stop the monitor in order.
        proc = subprocess.Popen(cli_argv("monitor"), cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=out, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc, timeout_s=15)


# -- the phases --------------------------------------------------------------------------------
@dataclass
class Phase:
    completions: list[tuple[str, float]]  # (event id, unix seconds the task completed)
    arrivals: dict[str, float]  # event id → unix seconds it arrived, for those that did

    @property
    def lost(self) -> int:
        return sum(1 for eid, _ in self.completions if eid not in self.arrivals)

    def latencies_s(self) -> list[float]:
        return [self.arrivals[eid] - at for eid, at in self.completions if eid in self.arrivals]


def warm_up(worker: Worker, receiver: Receiver, monitor: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """One unmeasured completion, end to end: the monitor is up and delivering."""
    eid, _ = worker.finish(worker.start("warmup-00000"))
    if not receiver.wait_for([eid], timeout_s, monitor):
        raise RuntimeError(f"the warm-up event did not arrive in {timeout_s:.0f} s")


def latency_phase(worker: Worker, receiver: Receiver, monitor: subprocess.Popen, *, events: int, interval_s: float,
                  straggler_s: float) -> Phase:
    """A steady stream of completions, one every ``interval_s`` (on a fixed schedule, so no drift)."""
    completions = []
    t0 = time.time() + interval_s
    for i in range(events):
        task = worker.start(f"lat-{i:05d}")
        time.sleep(max(0.0, t0 + i * interval_s - time.time()))
        completions.append(worker.finish(task))
    ids = [eid for eid, _ in completions]
    receiver.wait_for(ids, straggler_s, monitor)
    return Phase(completions, {eid: receiver.arrivals[eid] for eid in ids if eid in receiver.arrivals})


@dataclass
class Throughput:
    phase: Phase
    spawned_at: float  # unix seconds
    monitor_cpu_s: float | None

    def _span(self, since: float) -> float:
        return max(self.phase.arrivals.values()) - since if self.phase.arrivals else math.nan

    @property
    def wall_s(self) -> float:
        return self._span(self.spawned_at)

    @property
    def events_per_s(self) -> float:
        return len(self.phase.arrivals) / self.wall_s if self.phase.arrivals else 0.0

    @property
    def steady_events_per_s(self) -> float:
        if len(self.phase.arrivals) < 2:
            return 0.0
        return (len(self.phase.arrivals) - 1) / self._span(min(self.phase.arrivals.values()))


def throughput_phase(settings: Settings, worker: Worker, receiver: Receiver, log: Path, *, events: int,
                     timeout_s: float) -> Throughput:
    """A backlog written while the monitor is down, then drained by a freshly started monitor."""
    completions = [worker.finish(worker.start(f"tput-{i:05d}")) for i in range(events)]
    ids = [eid for eid, _ in completions]
    spawned_at = time.time()
    with running_monitor(settings, log) as monitor:
        receiver.wait_for(ids, timeout_s, monitor)
        cpu = cpu_s(monitor.pid)
    return Throughput(Phase(completions, {eid: receiver.arrivals[eid] for eid in ids if eid in receiver.arrivals}),
                      spawned_at, cpu)


def anchor_latencies_s(completed_at: list[float], poll_s: float, rng: random.Random) -> list[float]:
    """Modelled: from each completion to the next tick of a ``poll_s`` poller with a random phase."""
    origin = min(completed_at) + rng.uniform(0.0, poll_s)
    return [(origin - at) % poll_s for at in completed_at]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in 0..100."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


# -- the report --------------------------------------------------------------------------------
def _settings_line(settings: Settings) -> str:
    fields = Settings.model_fields
    changed = [f"{f}={getattr(settings, f)}" for f in MONITOR_FIELDS if getattr(settings, f) != fields[f].default]
    return (f"monitor: poll {settings.monitor_poll_s:g} s, webhook concurrency {settings.webhook_concurrency}, "
            f"timeout {settings.webhook_timeout_s:g} s; "
            + (f"NON-DEFAULT: {', '.join(changed)}" if changed else "all monitor/webhook settings at their defaults")
            + f"; receiver uvicorn loop={LOOP} http={HTTP} in this process; {os.cpu_count()} CPUs")


def report(settings: Settings, latency: Phase, anchor_s: list[float], tput: Throughput, receiver: Receiver, *,
           interval_s: float, seed: int, outbox: dict[str, Any]) -> dict[str, Any]:
    ours_s = latency.latencies_s()
    p50, p95, mx = percentile(ours_s, 50), percentile(ours_s, 95), max(ours_s, default=math.nan)
    a50, a95, amx = percentile(anchor_s, 50), percentile(anchor_s, 95), max(anchor_s, default=math.nan)
    lost = latency.lost + tput.phase.lost
    ratio = p95 / a95 if a95 else math.nan
    n_tput = len(tput.phase.completions)
    print(_settings_line(settings))
    print(f"{'':44}{'events':>7}{'lost':>6}{'p50 s':>8}{'p95 s':>8}{'max s':>8}{'events/s':>10}")
    print(f"{'latency: scantide monitor (measured)':44}{len(latency.completions):>7}{latency.lost:>6}"
          f"{p50:>8.3f}{p95:>8.3f}{mx:>8.3f}{'-':>10}")
    print(f"{ANCHOR_ROW:44}{len(anchor_s):>7}{'-':>6}{a50:>8.3f}{a95:>8.3f}{amx:>8.3f}{'-':>10}")
    print(f"{f'throughput: {n_tput}-event backlog, from spawn':44}{n_tput:>7}{tput.phase.lost:>6}{'-':>8}{'-':>8}"
          f"{'-':>8}{tput.events_per_s:>10.0f}")
    print(f"{'  same, first to last arrival':44}{'':>7}{'':>6}{'':>8}{'':>8}{'':>8}{tput.steady_events_per_s:>10.0f}")
    cores = f", monitor used {tput.monitor_cpu_s / tput.wall_s:.0%} of a core" if tput.monitor_cpu_s else ""
    print(f"latency run: one completion every {interval_s * 1e3:.0f} ms; throughput run drained in "
          f"{tput.wall_s:.2f} s from spawn{cores}; outbox {outbox['counts']}, {outbox['retries']} retries, "
          f"receiver {receiver.duplicates} duplicates, {receiver.bad} bad signatures")
    met = p95 <= GOAL_P95_S and lost == 0 and receiver.bad == 0
    print(f"ratio ours_p95 / anchor_p95 = {p95:.3f} / {a95:.3f} = {ratio:.3f} (anchor MODELLED from the same "
          f"completion times as a {ANCHOR_POLL_S:g} s poller, phase seed {seed}; not measured); "
          f"p95 goal <= {GOAL_P95_S:g} s, lost = {lost}: {'goal met' if met else 'GOAL NOT MET'}")
    return {
        "p50_s": round(p50, 4), "p95_s": round(p95, 4), "max_s": round(mx, 4),
        "events_per_s": round(tput.events_per_s, 1), "steady_events_per_s": round(tput.steady_events_per_s, 1),
        "lost": lost, "events": len(latency.completions) + n_tput,
        "latency_events": len(latency.completions), "throughput_events": n_tput,
        "throughput_wall_s": round(tput.wall_s, 3),
        "anchor_p50_s": round(a50, 3), "anchor_p95_s": round(a95, 3), "anchor_modelled": True,
        "anchor_poll_s": ANCHOR_POLL_S, "ratio_p95_vs_anchor": round(ratio, 4),
        "duplicates": receiver.duplicates, "bad_signatures": receiver.bad, "retries": outbox["retries"],
        "dead": outbox["counts"].get("dead", 0), "monitor_poll_s": settings.monitor_poll_s,
        "webhook_concurrency": settings.webhook_concurrency, "interval_s": interval_s, "seed": seed,
        "goal_met": met,
    }


def _outbox_summary(settings: Settings) -> dict[str, Any]:
    outbox = outbox_for(settings)
    try:
        entries = outbox.list(limit=10**7)
        return {"counts": outbox.counts(), "retries": sum(max(0, e.attempts - 1) for e in entries)}
    finally:
        outbox.close()


def bench(*, events: int, interval_s: float, backlog: int, straggler_s: float, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="scantide-bench-monitor-") as tmp, Receiver(SECRET) as receiver:
        settings = load_settings(backend="embedded", state_dir=Path(tmp) / "state", webhook_url=receiver.url,
                                 webhook_secret=SECRET)
        backend = open_backend(settings)
        log = Path(tmp) / "monitor.log"
        try:
            worker = Worker(backend, settings.default_queue, settings.output_root)
            with running_monitor(settings, log) as monitor:
                warm_up(worker, receiver, monitor)
                latency = latency_phase(worker, receiver, monitor, events=events, interval_s=interval_s,
                                        straggler_s=straggler_s)
            tput = throughput_phase(settings, worker, receiver, log, events=backlog, timeout_s=straggler_s + 30.0)
        except BaseException:
            if log.exists():
                print(f"monitor log (tail):\n{log.read_text()[-3000:]}", file=sys.stderr)
            raise
        finally:
            backend.close()
        anchor_s = anchor_latencies_s([at for _, at in latency.completions], ANCHOR_POLL_S, random.Random(seed))
        return report(settings, latency, anchor_s, tput, receiver, interval_s=interval_s, seed=seed,
                      outbox=_outbox_summary(settings))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300, help="completions in the latency run (default 300)")
    parser.add_argument("--interval", type=float, default=0.06,
                        help="seconds between completions in the latency run (default 0.06)")
    parser.add_argument("--backlog", type=int, default=3000, help="completions in the throughput run (default 3000)")
    parser.add_argument("--straggler-s", type=float, default=10.0,
                        help="how long to wait for late events after the latency run (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the anchor poller's phase (default 1)")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the monitor is stopped and the temp dir removed.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = bench(events=args.events, interval_s=args.interval, backlog=args.backlog,
                        straggler_s=args.straggler_s, seed=args.seed)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(json.dumps(summary))
    return 0 if summary["lost"] == 0 and summary["bad_signatures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
