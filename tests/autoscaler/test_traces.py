"""Traces: the generated stress traces stay reproducible, load by short name and path, and have the
shape their docstring promises."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from autoscaler.sim.traces import (
    GENERATED,
    TRACE_DIR,
    TraceError,
    all_trace_names,
    generate,
    load_trace,
    write_generated,
)

HOUR = 3600


def test_regenerating_the_traces_gives_the_committed_files_byte_for_byte(tmp_path) -> None:
    write_generated(tmp_path)
    committed = sorted(p.name for p in TRACE_DIR.glob("*.csv"))
    assert committed == sorted(f"{name}.csv" for name in GENERATED)
    for name in committed:
        assert (tmp_path / name).read_bytes() == (TRACE_DIR / name).read_bytes(), name
    assert sum((TRACE_DIR / n).stat().st_size for n in committed) < 1_000_000


def test_the_module_entry_point_writes_them(tmp_path) -> None:
    out = subprocess.run([sys.executable, "-m", "autoscaler.sim.traces", "--write", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert len(out.splitlines()) == len(GENERATED)
    assert (tmp_path / "ramp.csv").read_bytes() == (TRACE_DIR / "ramp.csv").read_bytes()


@pytest.mark.parametrize("name", list(GENERATED))
def test_a_generated_trace_loads_by_short_name_and_by_path_as_its_seed_0_draw(name: str) -> None:
    trace = load_trace(name, seed=5)  # a file: the seed drives boots and dispatch, not the jobs
    assert trace == generate(name, 0)
    assert trace.name == name and trace.duration_s == GENERATED[name][1]
    assert load_trace(str(TRACE_DIR / f"{name}.csv")).jobs == trace.jobs
    assert generate(name, 1) != trace


def test_every_name_loads_and_an_unknown_one_lists_them() -> None:
    names = all_trace_names()
    assert names[:3] == ("grin-day", "steady", "burst") and set(GENERATED) <= set(names)
    for name in names:
        assert load_trace(name).jobs
    with pytest.raises(TraceError) as err:
        load_trace("steady-70")
    assert all(name in str(err.value) for name in names)


def per_hour(name: str) -> Counter[int]:
    return Counter(int(a // HOUR) for a, _ in load_trace(name).jobs)


@pytest.mark.parametrize("rate", [30, 60, 80, 120])
def test_steady_traces_hold_their_rate_for_a_day(rate: int) -> None:
    jobs = load_trace(f"steady-{rate}").jobs
    assert abs(len(jobs) - 24 * rate) < 4 * (24 * rate) ** 0.5  # within 4 standard deviations
    assert all(40 <= s <= 120 for _, s in jobs) and jobs[-1][0] < 24 * HOUR


def test_the_ramp_climbs_to_its_peak_at_noon_and_back() -> None:
    hours = per_hour("ramp")
    first, peak, last = (sum(hours[h] for h in r) for r in (range(0, 3), range(10, 14), range(21, 24)))
    assert first < 80 and last < 80 and peak > 370  # expected 45, 440, 45


def test_spikes_come_every_two_hours() -> None:
    arrivals = [a for a, _ in load_trace("spikes").jobs]
    windows = Counter(int(a // 1200) for a in arrivals)  # 20-minute windows
    spiky = sorted({w * 1200 // (2 * HOUR) for w, n in windows.items() if n >= 15})
    assert spiky == list(range(12))


def test_the_quiet_week_has_two_busy_days() -> None:
    days = Counter(int(a // (24 * HOUR)) for a, _ in load_trace("quiet-week").jobs)
    busy = sorted(d for d, n in days.items() if n > 200)
    assert busy == [2, 4] and max(n for d, n in days.items() if d not in busy) < 80


def test_long_jobs_run_twenty_to_forty_minutes() -> None:
    jobs = load_trace("long-jobs").jobs
    assert all(1200 <= s <= 2400 for _, s in jobs) and 60 < len(jobs) < 140
