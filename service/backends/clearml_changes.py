"""The change feed over ClearML: every scan task whose ``status_changed`` (the server's clock) is
past a cursor, oldest first, each exactly once.

ClearML keeps no change log, only each task's latest status and when it changed, so a change is a
(task, ``status_changed``) pair and a task that changed twice between two reads is seen once, in
its newest state. The cursor is ``"<status_changed>|<task id>"`` and pages are keyset pages: ask
``tasks.get_all`` for ``status_changed >= cursor`` ordered by (``status_changed``, ``id``) and drop
what is not after the cursor, so a task that changes again while we page moves behind us instead of
shifting a page boundary. Many tasks can share one timestamp (the server keeps milliseconds): when a
whole server page (at most 500 tasks) shares the cursor's timestamp, that group is read by offset
and read again until no new task shows up, since a task leaving the group mid-read shifts the rest.

A change stamped at time T but written after a reader already passed T is missed; on a ClearML
server that window is the few milliseconds between stamping and writing one status change.
"""

from __future__ import annotations

from collections.abc import Callable

from service.backends.clearml_tasks import EPOCH, ChangeKey, change_key, decode_cursor

# fetch(status_changed conditions, page, page_size) → tasks ordered by (status_changed, id)
Fetch = Callable[[list[str], int, int], list[dict]]


def read_changes(fetch: Fetch, cursor: str | None, limit: int, page_size: int) -> tuple[list[dict], bool]:
    """Up to ``limit`` task documents changed after ``cursor``, in order, and whether more follow."""
    want = limit + 1
    after = decode_cursor(cursor)
    stamp, key = after if after else (EPOCH, None)
    strict = False  # ask for "> stamp": the group at the cursor's timestamp is used up
    out: list[dict] = []
    while len(out) < want:
        rows = fetch([(">" if strict else ">=") + stamp], 0, page_size)
        strict = False
        fresh = [r for r in rows if key is None or change_key(r) > key]
        if fresh:
            out.extend(fresh)
            stamp, key = fresh[-1]["status_changed"], change_key(fresh[-1])
            if len(rows) < page_size:
                break
            continue
        if len(rows) < page_size or key is None:
            break
        # A full page and nothing after the cursor: the whole page shares the cursor's timestamp.
        group = _rest_of_group(fetch, stamp, key, page_size)
        taken = group[: want - len(out)]
        out.extend(taken)
        if taken:
            stamp, key = taken[-1]["status_changed"], change_key(taken[-1])
        strict = len(taken) == len(group)
    return out[:limit], len(out) > limit


def _rest_of_group(fetch: Fetch, stamp: str, key: ChangeKey, page_size: int) -> list[dict]:
    """Every task at exactly the cursor's timestamp with an id after the cursor's, by id."""
    found: dict[str, dict] = {}
    while True:
        new, page = 0, 0
        while True:
            rows = fetch([">=" + stamp, "<=" + stamp], page, page_size)
            for row in rows:
                if change_key(row) > key and row["id"] not in found:
                    found[row["id"]] = row
                    new += 1
            if len(rows) < page_size:
                break
            page += 1
        if new == 0 or page == 0:  # one page read at once cannot have shifted
            return sorted(found.values(), key=change_key)
