"""The shared metrics directory: real processes write their series in it and end (or are killed
outright); what they counted stays, what they held goes, and a tidy interrupted at any step is
finished by the next one without losing or doubling a count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import exposition
from service.metrics_files import ABSORBED, READY, fresh, locked, tidy
from service.settings import METRICS_DIR_ENV

# A process under `scantide up`: counts `n`, observes `n` seconds, holds `n` busy slots, then exits
# or (with "wait") stays until killed.
CHILD = """
import sys, time
from prometheus_client import Counter, Gauge, Histogram
n, stay = int(sys.argv[1]), sys.argv[2] == "wait"
Counter("t_things", "things", ["kind"]).labels("a").inc(n)
Histogram("t_seconds", "seconds", buckets=(1, 10)).observe(n)
Gauge("t_busy", "busy", multiprocess_mode="livesum").set(n)
print("ready", flush=True)
while stay:
    time.sleep(1)
"""


def child(folder: Path, n: int, stay: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(n), "wait" if stay else "go"],
                            env={**os.environ, METRICS_DIR_ENV: str(folder)}, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def read(folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    monkeypatch.setenv(METRICS_DIR_ENV, str(folder))
    text = exposition().decode()
    return {s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_dead_processes_keep_their_counts_and_lose_their_gauges(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder = fresh(tmp_path / "metrics")
    child(folder, 1).wait()
    killed = child(folder, 2, stay=True)
    alive = child(folder, 4, stay=True)
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        series = read(folder, monkeypatch)
        assert series["t_things_total|kind=a"] == 7  # 1 + 2 + 4: an ended and a killed process counted too
        assert series["t_seconds_count"] == 3 and series["t_seconds_sum"] == 7
        assert series["t_seconds_bucket|le=1.0"] == 1 and series["t_seconds_bucket|le=10.0"] == 3
        assert series["t_busy"] == 4  # only the live process holds slots
        left = sorted(p.name for p in folder.glob("*.db"))
        assert left == sorted(["counter_archive.db", "histogram_archive.db", f"counter_{alive.pid}.db",
                               f"histogram_{alive.pid}.db", f"gauge_livesum_{alive.pid}.db"])
        assert read(folder, monkeypatch) == series  # a second read adds nothing
    finally:
        alive.kill()
        alive.wait()
    series = read(folder, monkeypatch)
    assert series["t_things_total|kind=a"] == 7 and "t_busy" not in series
    assert sorted(p.name for p in folder.glob("*.db")) == ["counter_archive.db", "histogram_archive.db"]


@pytest.mark.parametrize("stopped_after", ["renamed", "ready", "absorbed removed"])
def test_a_tidy_killed_midway_is_finished_by_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      stopped_after: str) -> None:
    """The states a reader killed inside ``_absorb`` leaves behind, made by hand from a tidy that ran
    to its end: each is finished to the same counts."""
    folder = fresh(tmp_path / "metrics")
    for n in (1, 2):
        child(folder, n).wait()
    with locked(folder):
        tidy(folder)
    archive = folder / "counter_archive.db"
    done = archive.read_bytes()
    child(folder, 4).wait()
    (dead,) = [p for p in folder.glob("counter_*.db") if p != archive]
    if stopped_after == "renamed":  # step 1 done: the dead file is out of the scrape, not yet in the archive
        dead.rename(dead.with_suffix(ABSORBED))
    else:  # step 2 done: a complete new archive waits as .ready (in step 3, the dead file went too)
        with locked(folder):
            tidy(folder)
        (folder / f"counter_archive{READY}").write_bytes(archive.read_bytes())
        archive.write_bytes(done)
        dead.write_bytes(b"")  # stands for the dead file, renamed
        if stopped_after == "ready":
            dead.rename(dead.with_suffix(ABSORBED))
        else:
            dead.unlink()
    assert read(folder, monkeypatch)["t_things_total|kind=a"] == 7
    assert not list(folder.glob(f"*{ABSORBED}")) and not list(folder.glob(f"*{READY}"))


def test_a_task_process_never_sees_the_metrics_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.worker import task_env

    monkeypatch.setenv(METRICS_DIR_ENV, str(tmp_path))
    assert METRICS_DIR_ENV not in task_env()
