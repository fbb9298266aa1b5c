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

Any other name is read as a CSV file with a header and the columns ``arrival_s,service_s``
(seconds from the start of the trace; extra columns are ignored).
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

SERVICE_S = (40.0, 120.0)
HOUR = 3600.0
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
    """A built-in trace by name, or a CSV file by path."""
    if name in _BUILTINS:
        return _BUILTINS[name](seed)
    path = Path(name)
    if not path.is_file():
        raise TraceError(f"unknown trace {name!r}: use one of {', '.join(_BUILTINS)} or a CSV file path")
    return read_csv(path)


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


def _finish(name: str, rng: random.Random, arrivals: list[float], duration_s: float) -> Trace:
    jobs = tuple((round(t, 3), round(rng.uniform(*SERVICE_S), 3)) for t in sorted(arrivals))
    return Trace(name=name, jobs=jobs, duration_s=duration_s)


_BUILTINS = {"grin-day": grin_day, "steady": steady, "burst": burst}
