"""Benchmark: scans per hour of one worker with 1, 2 and 4 slots, and of a process per task.

For each scan length (``--frames``, default 120 and 1,800 frames of the synthetic scan at 320×240)
and each slot count, a real ``scantide worker`` (``SCANTIDE_WORKER_SLOTS``) serves a fresh
embedded store: one warm-up scan per slot first (each slot's executor imports torch and loads the
weights once, as it does once per worker's life), then ``--scans`` scans queued at once; the rate
is those scans over the time from their submit to the last one's end. The anchor, measured in the
same run on the short scans: one slot with ``SCANTIDE_WORKER_WARM=false``, a process per task as
every task ran before the warm executor (its warm-up scan is not counted either).

    python benchmarks/throughput.py [--scans 40] [--long-scans 8] [--slots 1 2 4] [--frames 120 1800]
                                    [--write benchmarks/results/throughput.json]

Prints a table, the warm/process ratio on the short scans, and last one JSON line
``{"scans_per_hour": {"1", "2", "4"}, "best_slots", "speedup", "frames", "by_frames", ...}``, whose
top-level figures are the longest scans' (a real scan is closer to 1,800 frames than to 120). It is
also written to ``--write``: the slot profile the autoscaler and the simulator read the per-slot
slowdown from (``resources.slot_profile``). Goal on a 2-core machine: the warm executor alone gives
at least 5x the scans/hour of a process per task on 120-frame scans.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.algorithms import ensure_builtin  # noqa: E402
from service.backends import open_backend  # noqa: E402
from service.domain import JobState, ScanRequest  # noqa: E402
from service.enqueue import submit_scan  # noqa: E402
from service.settings import load_settings  # noqa: E402
from service.supervisor import cli_argv, settings_env  # noqa: E402
from service.synthetic import write_scan_video  # noqa: E402

GOAL_WARM_VS_PROCESS = 5.0
DEFAULT_PROFILE = REPO / "benchmarks" / "results" / "throughput.json"


def scans_per_hour(video: Path, scans: int, slots: int, warm: bool) -> float:
    """One worker with ``slots`` on a fresh store: warm-up, then ``scans`` queued at once."""
    with tempfile.TemporaryDirectory(prefix="scantide-bench-throughput-") as state:
        settings = load_settings(state_dir=Path(state), worker_poll_s=0.05, worker_slots=slots, worker_warm=warm,
                                 task_timeout_s=3600.0)
        assert settings.data_root is not None
        settings.data_root.mkdir(parents=True, exist_ok=True)
        (settings.data_root / video.name).write_bytes(video.read_bytes())
        backend = open_backend(settings)
        ensure_builtin(backend, settings)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SCANTIDE_")}, **settings_env(settings)}
        log = open(Path(state) / "worker.log", "wb")  # noqa: SIM115 - closed after the worker stops
        worker = subprocess.Popen(cli_argv("worker"), env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            def submit(prefix: str, n: int) -> list[str]:
                return [submit_scan(backend, settings, ScanRequest(scan_id=f"{prefix}-{i}", scan_uri=video.name))
                        .task.task_id for i in range(n)]

            def finish(ids: list[str]) -> float:
                while True:
                    tasks = [backend.get_task(i) for i in ids]
                    if all(t.state.terminal for t in tasks):
                        failed = [t.error for t in tasks if t.state is not JobState.completed]
                        if failed:
                            raise SystemExit(f"scans failed: {failed[:3]}")
                        return max(t.finished_at or 0.0 for t in tasks)
                    time.sleep(0.05)

            finish(submit("warm-up", slots))
            started = time.time()
            ended = finish(submit("scan", scans))
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=120)
            log.close()
            backend.close()
    return scans / (ended - started) * 3600


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=40, help="scans per measurement on the short scans")
    parser.add_argument("--long-scans", type=int, default=8, help="scans per measurement on the longest scans")
    parser.add_argument("--process-scans", type=int, default=12, help="scans for the process-per-task anchor")
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--frames", type=int, nargs="+", default=[120, 1800])
    parser.add_argument("--write", type=Path, default=DEFAULT_PROFILE, help="where the profile goes ('-': nowhere)")
    args = parser.parse_args(argv)
    frames = sorted(args.frames)
    by_frames: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="scantide-bench-videos-") as videos:
        paths = {}
        for n in frames:
            paths[n] = Path(videos) / f"scan-{n}.mp4"
            write_scan_video(paths[n], frames=n, seed=n)
        process = scans_per_hour(paths[frames[0]], args.process_scans, 1, warm=False)
        for n in frames:
            count = args.scans if n == frames[0] else args.long_scans
            by_frames[str(n)] = {str(s): round(scans_per_hour(paths[n], count * max(1, s // 2), s, warm=True), 1)
                                 for s in args.slots}
    print(f"{'frames':>6} {'mode':<22} {'slots':>5} {'scans/hour':>11} {'vs 1 slot':>9}")
    print(f"{frames[0]:>6} {'process per task':<22} {1:>5} {process:>11.0f} {'':>9}")
    for n, rates in by_frames.items():
        for s, rate in rates.items():
            print(f"{n:>6} {'warm executor':<22} {s:>5} {rate:>11.0f} {rate / rates['1']:>8.2f}x")
    short = by_frames[str(frames[0])]["1"]
    ratio = short / process
    print(f"ratio warm/process per task ({frames[0]} frames, 1 slot): {ratio:.1f}x "
          f"(goal >= {GOAL_WARM_VS_PROCESS:.0f}x: {'met' if ratio >= GOAL_WARM_VS_PROCESS else 'NOT met'})")
    top = by_frames[str(frames[-1])]
    best = max(top, key=lambda s: top[s])
    figures = {"scans_per_hour": top, "best_slots": int(best), "speedup": round(top[best] / top["1"], 2),
               "frames": frames[-1], "by_frames": by_frames, "process_per_task_scans_per_hour": round(process, 1),
               "warm_vs_process": round(ratio, 2), "machine": f"{os.cpu_count()} cores, {platform.machine()}",
               "measured": time.strftime("%Y-%m-%d")}
    line = json.dumps(figures)
    if str(args.write) != "-":
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
