"""The directory where `scantide up`'s processes keep their Prometheus series (prometheus-client's
multiprocess mode): one file per process and kind, written through ``mmap`` as values change.

Why files and not a server per process: a file outlives its process. A process killed outright
(``kill -9``) loses nothing it counted; the supervisor restarts it under a new pid and its counters
go on in a new file, so the sums the API serves never go down. The supervisor empties the directory
when it starts (``fresh``): counters start again from zero, which Prometheus reads as a reset.

``tidy`` runs before each read, under a lock, and keeps the directory small however many
processes come and go (the autoscaler starts and stops workers all day):

- a dead process's ``live*`` gauges (what it holds now: busy slots, the fleet) are removed, as
  ``prometheus_client.multiprocess.mark_process_dead`` does;
- a dead process's counters and histograms are added into one ``<kind>_archive.db`` file and its
  own removed. Each step leaves the directory in a state ``tidy`` can finish from, so a reader
  killed in the middle neither loses nor doubles a count (see ``_absorb``).

A process is dead when no process has its pid (``os.kill(pid, 0)``); a pid reused by a new
process before the old one's files were tidied only makes the new one continue its counts.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import mark_process_dead

log = logging.getLogger(__name__)

ADDITIVE = ("counter", "histogram")  # kinds whose values from several processes add up
ARCHIVE = "archive"  # the pid part of the file that holds what dead processes counted
LOCK = ".lock"
ABSORBED = ".absorbed"  # a dead process's file, being added into its kind's archive
MERGING = ".merging"  # the new archive, being written
READY = ".ready"  # the new archive, complete, before it replaces the old


def fresh(folder: Path) -> Path:
    """An empty ``folder`` (made, or emptied of what an earlier run left)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the directory's lock: one reader at a time tidies and reads it."""
    with open(folder / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def tidy(folder: Path) -> None:
    """Drop dead processes' live gauges and fold their counters and histograms into the archives.
    Call under ``locked``."""
    dead: dict[str, list[Path]] = defaultdict(list)
    for path in folder.glob("*.db"):
        kind, pid = _kind_and_pid(path)
        if pid is None or _alive(pid):
            continue
        if kind.startswith("gauge_live"):
            mark_process_dead(pid, str(folder))
        elif kind in ADDITIVE:
            dead[kind].append(path)
    for kind in ADDITIVE:
        if dead[kind] or any(folder.glob(f"{kind}_*{ABSORBED}")) or _ready(folder, kind).exists():
            _absorb(folder, kind, dead[kind])


def _absorb(folder: Path, kind: str, dead: list[Path]) -> None:
    """Add the ``dead`` files of ``kind`` into its archive. The steps, and where a killed run left off:

    1. each dead file is renamed ``.absorbed`` (out of the scrape: a reader holds the lock meanwhile);
    2. the archive plus every ``.absorbed`` file is written to ``.merging``, then renamed ``.ready``;
    3. the ``.absorbed`` files are removed; 4. ``.ready`` replaces the archive.

    A ``.ready`` file means 2 is done: finish 3 and 4. ``.absorbed`` files without one mean 2 is
    not: do it again from the archive, which none of them is in yet.
    """
    archive, ready = folder / f"{kind}_{ARCHIVE}.db", _ready(folder, kind)
    if not ready.exists():
        for path in dead:
            path.rename(path.with_suffix(ABSORBED))
        absorbed = sorted(folder.glob(f"{kind}_*{ABSORBED}"))
        totals: dict[str, float] = defaultdict(float)
        for path in ([archive] if archive.exists() else []) + absorbed:
            for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
                totals[key] += value
        merging = folder / f"{kind}_{ARCHIVE}{MERGING}"
        merging.unlink(missing_ok=True)
        out = MmapedDict(str(merging))
        for key, value in totals.items():
            out.write_value(key, value, 0.0)
        out.close()
        merging.rename(ready)
        log.info("metrics_archived kind=%s files=%d", kind, len(absorbed))
    for path in folder.glob(f"{kind}_*{ABSORBED}"):
        path.unlink()
    ready.replace(archive)


def _ready(folder: Path, kind: str) -> Path:
    return folder / f"{kind}_{ARCHIVE}{READY}"


def _kind_and_pid(path: Path) -> tuple[str, int | None]:
    """``counter_123.db`` → ("counter", 123); ``gauge_livesum_123.db`` → ("gauge_livesum", 123);
    an archive's pid is None."""
    kind, _, pid = path.stem.rpartition("_")
    return kind, int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
