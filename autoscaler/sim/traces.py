"""Arrival traces: when scans arrive and how long each takes on a GPU.

Built-ins (seeded, service times uniform 40–120 s):

- ``grin-day``: 24 h of a clinic network's day, a scan every 4 minutes on average (~360; 327–393
  over seeds 0–4): quiet nights (about 1.4 scans/h from midnight to 5 am), a daytime peak (about
  30 scans/h late in the morning and mid-afternoon, 2.4x the day's mean) and ten short bursts of
  4–8 scans within two minutes between 8 am and 6 pm.
- ``steady``: a constant rate for 24 h, Poisson arrivals one scan every 15 minutes on average
  (~96): a small steady site, where the whole question is whether to idle or to boot for each scan.
- ``burst``: 12 h, quiet (a scan every 30 minutes on average) broken by six bursts of 10–25 scans
  each, all within three minutes (a batch upload), about two hours apart.

Generated stress traces, committed as CSV files in ``autoscaler/sim/traces/`` (written at seed 0
by ``python -m autoscaler.sim.traces --write``; a test regenerates them byte for byte) and loaded by
short name. Like any CSV, ``load_trace``'s seed does not change them (it still drives boot times
and dispatch); ``generate(name, seed)`` draws another seed. Service times uniform 40–120 s
unless said otherwise:

- ``steady-30``, ``steady-60``, ``steady-80``, ``steady-120``: Poisson arrivals at that many scans
  per hour for 24 h (0.7, 1.3, 1.8 and 2.7 instances busy on average).
- ``ramp``: 24 h, the rate climbing linearly from 0 to 120 scans/h over 12 h and back to 0.
- ``spikes``: 24 h, 4 scans/h in the background and every 2 h (±15 min) a spike of 20–40 scans
  within 10 minutes.
- ``quiet-week``: 7 days of ``grin-day``'s hourly profile, about 48 scans a day, except days 2 and
  4 (from 0), busy at about 480 (peaks near 48/h).
- ``long-jobs``: 24 h, Poisson at 4 scans/h, each 20–40 minutes (2 instances busy on average).

Any other name is read as a CSV file with a header and the columns ``arrival_s,service_s``
(seconds from the start of the trace; extra columns are ignored).
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

SERVICE_S = (40.0, 120.0)
HOUR = 3600.0
DAY = 24 * HOUR
TRACE_DIR = Path(__file__).with_name("traces")  # the generated traces' CSV files
# grin-day: relative arrival rate per hour of the day
_DAY_PROFILE = (0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.4, 0.8, 1.5, 2.0, 2.2, 2.0,
                1.4, 1.8, 2.0, 2.0, 1.6, 1.2, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1)


class TraceError(ValueError):
    """A trace name or file that cannot be used; the message says what is wrong and where."""


@dataclass(frozen=True)
class Trace:
    name: str
    jobs: tuple[tuple[float, float], ...]  # (arrival_s, service_s), sorted by arrival
    duration_s: float


def load_trace(name: str, seed: int = 0) -> Trace:
    """A built-in trace by name (drawn for ``seed``), a generated one by short name (its CSV file in
    ``TRACE_DIR``), or a CSV file by path."""
    if name in _BUILTINS:
        return _BUILTINS[name](seed)
    if name in GENERATED:
        return replace(read_csv(TRACE_DIR / f"{name}.csv"), name=name, duration_s=GENERATED[name][1])
    path = Path(name)
    if not path.is_file():
        raise TraceError(f"unknown trace {name!r}: use one of {', '.join(all_trace_names())} or a CSV file path")
    return read_csv(path)


def all_trace_names() -> tuple[str, ...]:
    """Every trace ``load_trace`` knows by name: the built-ins, then the generated ones."""
    return (*_BUILTINS, *GENERATED)


def read_csv(path: Path) -> Trace:
    jobs = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"arrival_s", "service_s"} - set(reader.fieldnames or ())
        if missing:
            raise TraceError(f"{path}: header must name the columns arrival_s,service_s (missing: "
                             f"{', '.join(sorted(missing))})")
        for line, row in enumerate(reader, start=2):
            try:
                arrival, service = float(row["arrival_s"]), float(row["service_s"])
            except (TypeError, ValueError):
                raise TraceError(f"{path}:{line}: arrival_s and service_s must be numbers, got "
                                 f"{row.get('arrival_s')!r}, {row.get('service_s')!r}") from None
            if not (math.isfinite(arrival) and math.isfinite(service)) or arrival < 0 or service <= 0:
                raise TraceError(f"{path}:{line}: need arrival_s >= 0 and service_s > 0, got {arrival}, {service}")
            jobs.append((arrival, service))
    if not jobs:
        raise TraceError(f"{path}: no jobs")
    jobs.sort()
    return Trace(name=path.name, jobs=tuple(jobs), duration_s=jobs[-1][0])


def grin_day(seed: int) -> Trace:
    rng = random.Random(f"{seed}:grin-day")
    background = 300.0  # expected scans outside the bursts
    per_weight = background / sum(_DAY_PROFILE) / HOUR  # arrivals/s per unit of weight
    peak = max(_DAY_PROFILE) * per_weight
    # a Poisson stream at the peak rate, thinned to each hour's share of it
    arrivals = [t for t in poisson_arrivals(rng, peak, 24 * HOUR)
                if rng.random() < _DAY_PROFILE[int(t // HOUR)] / max(_DAY_PROFILE)]
    for _ in range(10):
        start = rng.uniform(8 * HOUR, 18 * HOUR)
        arrivals += [start + rng.uniform(0, 120) for _ in range(rng.randint(4, 8))]
    return _finish("grin-day", rng, arrivals, 24 * HOUR)


def steady(seed: int) -> Trace:
    rng = random.Random(f"{seed}:steady")
    return _finish("steady", rng, poisson_arrivals(rng, 1 / 900, 24 * HOUR), 24 * HOUR)


def burst(seed: int) -> Trace:
    rng = random.Random(f"{seed}:burst")
    arrivals = poisson_arrivals(rng, 1 / 1800, 12 * HOUR)
    for k in range(6):
        start = (k + 0.5) * 2 * HOUR + rng.uniform(-20 * 60, 20 * 60)
        arrivals += [start + rng.uniform(0, 180) for _ in range(rng.randint(10, 25))]
    return _finish("burst", rng, arrivals, 12 * HOUR)


def poisson_arrivals(rng: random.Random, rate_per_s: float, duration_s: float) -> list[float]:
    """Arrival times (seconds) of a Poisson stream at ``rate_per_s`` over ``[0, duration_s)``."""
    out, t = [], rng.expovariate(rate_per_s)
    while t < duration_s:
        out.append(t)
        t += rng.expovariate(rate_per_s)
    return out


def thinned(rng: random.Random, peak_per_s: float, duration_s: float, share: Callable[[float], float]) -> list[float]:
    """A Poisson stream at ``peak_per_s``, each arrival at time t kept with probability ``share(t)``
    (0–1): an inhomogeneous Poisson stream at ``peak_per_s × share(t)``."""
    return [t for t in poisson_arrivals(rng, peak_per_s, duration_s) if rng.random() < share(t)]


def _finish(name: str, rng: random.Random, arrivals: list[float], duration_s: float,
            service_s: tuple[float, float] = SERVICE_S) -> Trace:
    jobs = tuple((round(t, 3), round(rng.uniform(*service_s), 3)) for t in sorted(arrivals))
    return Trace(name=name, jobs=jobs, duration_s=duration_s)


_BUILTINS = {"grin-day": grin_day, "steady": steady, "burst": burst}


# -- generated stress traces (written to TRACE_DIR) ------------------------------------------------
def _steady(rate_per_h: int) -> Callable[[int], Trace]:
    def generate(seed: int) -> Trace:
        name = f"steady-{rate_per_h}"
        rng = random.Random(f"{seed}:{name}")
        return _finish(name, rng, poisson_arrivals(rng, rate_per_h / HOUR, DAY), DAY)

    return generate


def ramp(seed: int) -> Trace:
    rng = random.Random(f"{seed}:ramp")
    arrivals = thinned(rng, 120 / HOUR, DAY, lambda t: 1 - abs(t - 12 * HOUR) / (12 * HOUR))
    return _finish("ramp", rng, arrivals, DAY)


def spikes(seed: int) -> Trace:
    rng = random.Random(f"{seed}:spikes")
    arrivals = poisson_arrivals(rng, 4 / HOUR, DAY)
    for k in range(12):
        start = (2 * k + 1) * HOUR + rng.uniform(-15 * 60, 15 * 60)
        arrivals += [start + rng.uniform(0, 600) for _ in range(rng.randint(20, 40))]
    return _finish("spikes", rng, arrivals, DAY)


def quiet_week(seed: int) -> Trace:
    rng = random.Random(f"{seed}:quiet-week")
    busy_days, quiet_per_day, busy_per_day = (2, 4), 48, 480
    peak = max(_DAY_PROFILE) * busy_per_day / sum(_DAY_PROFILE) / HOUR  # busy days' peak, arrivals/s

    def share(t: float) -> float:
        day, hour = divmod(int(t // HOUR), 24)
        per_day = busy_per_day if day in busy_days else quiet_per_day
        return _DAY_PROFILE[hour] / max(_DAY_PROFILE) * per_day / busy_per_day

    return _finish("quiet-week", rng, thinned(rng, peak, 7 * DAY, share), 7 * DAY)


def long_jobs(seed: int) -> Trace:
    rng = random.Random(f"{seed}:long-jobs")
    return _finish("long-jobs", rng, poisson_arrivals(rng, 4 / HOUR, DAY), DAY, service_s=(1200.0, 2400.0))


# name → (generator, duration in seconds: a CSV file only says when its last scan arrived)
GENERATED: dict[str, tuple[Callable[[int], Trace], float]] = {
    **{f"steady-{r}": (_steady(r), DAY) for r in (30, 60, 80, 120)},
    "ramp": (ramp, DAY), "spikes": (spikes, DAY), "quiet-week": (quiet_week, 7 * DAY), "long-jobs": (long_jobs, DAY),
}


def generate(name: str, seed: int = 0) -> Trace:
    """A generated trace drawn for ``seed`` (its committed file is seed 0)."""
    if name not in GENERATED:
        raise TraceError(f"unknown generated trace {name!r}: use one of {', '.join(GENERATED)}")
    return GENERATED[name][0](seed)


def write_csv(trace: Trace, path: Path) -> None:
    """``arrival_s,service_s`` with a header, three decimals (what ``read_csv`` reads back exactly)."""
    lines = ["arrival_s,service_s", *(f"{a:.3f},{s:.3f}" for a, s in trace.jobs)]
    path.write_text("\n".join(lines) + "\n")


def write_generated(directory: Path = TRACE_DIR, seed: int = 0) -> list[Path]:
    """Write every generated trace to ``directory/<name>.csv``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in GENERATED:
        write_csv(generate(name, seed), directory / f"{name}.csv")
        paths.append(directory / f"{name}.csv")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m autoscaler.sim.traces",
                                     description="Write the generated stress traces as CSV files.")
    parser.add_argument("--write", action="store_true", required=True, help="write every generated trace")
    parser.add_argument("--out", type=Path, default=TRACE_DIR, help=f"directory (default {TRACE_DIR})")
    parser.add_argument("--seed", type=int, default=0, help="seed (the committed files are seed 0)")
    args = parser.parse_args(argv)
    for path in write_generated(args.out, args.seed):
        print(path)


if __name__ == "__main__":
    main()
