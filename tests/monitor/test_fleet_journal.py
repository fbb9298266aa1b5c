"""Reading the autoscaler's journal: only complete lines, each once, and from the start again
when the file is replaced or truncated."""

from __future__ import annotations

import json
import os
from pathlib import Path

from autoscaler.daemon import Journal
from monitor.fleet import Position, is_final_launch_failure, read_new


def test_reads_complete_lines_once(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    assert read_new(path, Position()) == ([], Position())  # no journal yet: nothing, no error

    journal.record(1.0, "launch", "gpu", "1 queued", count=1)
    journal.record(2.0, "launch_failed", "gpu", "no option had capacity", fallback=False)
    entries, pos = read_new(path, Position())
    assert [e["kind"] for e in entries] == ["launch", "launch_failed"]
    assert [is_final_launch_failure(e) for e in entries] == [False, True]
    assert read_new(path, pos) == ([], pos)

    with open(path, "a") as f:  # a line the autoscaler is still writing
        f.write('{"at": 3.0, "kind": "launch_fa')
    entries, held = read_new(path, pos)
    assert entries == [] and held == pos
    with open(path, "a") as f:
        f.write('iled", "pool": "gpu", "reason": "x", "fallback": true}\nnot json\n')
    entries, after = read_new(path, held)
    assert [e["at"] for e in entries] == [3.0] and not is_final_launch_failure(entries[0])
    assert after.offset == path.stat().st_size


def test_replaced_or_truncated_journal_is_read_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    Journal(path).record(1.0, "launch", "gpu", "first")
    _, pos = read_new(path, Position())

    path.write_text("")  # truncated in place
    Journal(path).record(2.0, "launch", "gpu", "again")
    entries, pos = read_new(path, Position(pos.inode, pos.offset + 100))
    assert [e["reason"] for e in entries] == ["again"]

    replacement = tmp_path / "new.jsonl"
    replacement.write_text(json.dumps({"at": 5.0, "kind": "launch", "pool": "gpu", "reason": "rotated"}) + "\n")
    os.replace(replacement, path)  # rotated: a new inode, maybe longer than the old offset
    entries, _ = read_new(path, pos)
    assert [e["reason"] for e in entries] == ["rotated"]
