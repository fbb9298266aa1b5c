"""Follow the autoscaler's journal (JSON lines) for launches that failed for good.

The autoscaler journals every decision; a launch that failed on every instance option (or failed
for a reason no fallback can fix) is entry ``kind == "launch_failed"`` with ``fallback`` false.
Those become ``fleet.launch_failed`` events. The read position (byte offset and the file's inode)
is kept in the outbox with the events it produced, so a restarted monitor neither repeats nor
skips one; a journal that was replaced or truncated is read again from its start (event ids are
derived from the entry, so re-reading adds nothing twice).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_READ = 1 << 20  # bytes read per poll; the rest waits for the next one


@dataclass(frozen=True)
class Position:
    inode: int = 0
    offset: int = 0

    def to_json(self) -> dict[str, int]:
        return {"inode": self.inode, "offset": self.offset}

    @classmethod
    def from_json(cls, raw: dict[str, int] | None) -> Position:
        return cls(**raw) if raw else cls()


def read_new(path: Path, pos: Position) -> tuple[list[dict[str, Any]], Position]:
    """Complete entries written since ``pos`` and the position after them."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())  # the file opened, even if the path was replaced since
            if st.st_ino != pos.inode or st.st_size < pos.offset:
                pos = Position(st.st_ino, 0)
            f.seek(pos.offset)
            chunk = f.read(MAX_READ)
    except FileNotFoundError:
        return [], pos
    end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next poll
    entries = []
    for line in chunk[:end].splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            log.warning("journal_line_unreadable path=%s line=%r", path, line[:200])
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries, Position(pos.inode, pos.offset + end)


def is_final_launch_failure(entry: dict[str, Any]) -> bool:
    return entry.get("kind") == "launch_failed" and not entry.get("fallback", False)
