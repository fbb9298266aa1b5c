"""The change feed over ClearML: every scan task whose ``status_changed`` (the server's clock) moved,
oldest first, each change once.

ClearML keeps no change log, only each task's latest status and when it changed, so a change is a
(task, state, ``status_changed``) triple and a task that changed twice between two reads is seen
once, in its newest state.

Stamps land out of order. The server takes ``status_changed`` before it writes the change
(``ChangeStatusRequest.execute``), its watchdog stamps a whole batch of stopped tasks with one time
and then writes them one by one, and ``queues.get_next_task`` turns a stopped task back to queued
without stamping it again. A change can therefore appear below a stamp a reader has already passed.
So each read looks back ``LOOKBACK_S`` behind the newest stamp it delivered, and the cursor keeps
the triples it delivered inside that window, so a late change is delivered once and nothing twice.
The state is in the triple because the re-queue keeps the stamp: (t, stopped, s) then (t, queued, s).

The cursor is JSON text, ``{"v": 2, "high": H, "floor": F, "seen": [[ms, task, state], ...]}``:
H is the newest ``status_changed`` delivered (unix ms), ``seen`` the triples delivered at H minus
the lookback or later, oldest first. It is bounded: past ``MAX_SEEN`` triples the oldest are
dropped and ``floor`` ([ms, task] or null) marks the last dropped one; nothing at or before it is
read again, so under such a load the lookback shrinks to what the cursor can hold. A version 1
cursor, ``"<status_changed>|<task id>"``, still reads: it is its own floor.

Reads are keyset pages ordered by (``status_changed``, ``id``): ask ``tasks.get_all`` for
``status_changed >= position`` and drop what is not after it, so a task that changes again while we
page moves behind us instead of shifting a page boundary. Many tasks can share one timestamp (the
server keeps milliseconds): when a whole page shares the position's timestamp, that group is read by
offset and read again until no new task shows up, since a task leaving the group mid-read shifts
the rest. The server's page cap may be below the page size asked for (``clearml_store.pages``).
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator

from service.backends.clearml_store import pages
from service.backends.clearml_tasks import parse_time
from service.domain import TaskInfo
from service.errors import InvalidRequest

log = logging.getLogger(__name__)

LOOKBACK_S = 30.0  # how late a status change may land after its stamp and still be delivered
MAX_SEEN = 1000  # triples a cursor keeps (about 50 bytes each)

Key = tuple[int, str]  # (status_changed in unix ms, task id): the feed's order
Seen = tuple[int, str, str]  # (status_changed in unix ms, task id, state)
# fetch(status_changed conditions, page, page_size) → tasks ordered by (status_changed, id)
Fetch = Callable[[list[str], int, int], list[dict]]


def stamp_ms(value: str) -> int:
    """A server timestamp (ISO-8601; naive means UTC) → unix milliseconds, the server's precision."""
    return round(parse_time(value).timestamp() * 1000)


def iso_ms(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def key_of(doc: dict) -> Key:
    return stamp_ms(doc["status_changed"]), doc["id"]


class Window:
    """What a reader delivered lately: the cursor, decoded. Tokens are kept encoded, so a cursor
    per delivered change costs one join."""

    def __init__(self, high: int | None = None, floor: Key | None = None, seen: list[Seen] | None = None) -> None:
        self.high, self.floor = high, floor
        self._seen: list[Seen] = sorted(seen or [])
        self._members = set(self._seen)
        self._tokens = [_token(s) for s in self._seen]

    def __contains__(self, item: Seen) -> bool:
        return item in self._members

    def start(self, lookback_ms: int) -> Key:
        """Read after this key: the lookback window, or the floor when it is later."""
        low: Key = (self.high - lookback_ms, "") if self.high is not None else (0, "")
        return max(low, self.floor) if self.floor is not None else low

    def add(self, item: Seen, lookback_ms: int, max_seen: int) -> None:
        self.high = item[0] if self.high is None else max(self.high, item[0])
        at = bisect.bisect(self._seen, item)
        self._seen.insert(at, item)
        self._tokens.insert(at, _token(item))
        self._members.add(item)
        keep = bisect.bisect_left(self._seen, (self.high - lookback_ms,))  # below the window: never read again
        if len(self._seen) - keep > max_seen:  # too many to remember: the oldest are not read again either
            keep = len(self._seen) - max_seen
            dropped = self._seen[keep - 1]
            self.floor = max(self.floor, dropped[:2]) if self.floor is not None else dropped[:2]
            log.info("change_window_full kept=%d floor=%s: the lookback is shorter than %.0f s", max_seen,
                     iso_ms(dropped[0]), lookback_ms / 1000)
        if keep:
            self._members.difference_update(self._seen[:keep])
            del self._seen[:keep], self._tokens[:keep]

    def encode(self) -> str:
        floor = "null" if self.floor is None else json.dumps(list(self.floor), separators=(",", ":"))
        return f'{{"v":2,"high":{json.dumps(self.high)},"floor":{floor},"seen":[{",".join(self._tokens)}]}}'

    @classmethod
    def decode(cls, cursor: str | None) -> Window:
        """Raises ``InvalidRequest`` for anything but a cursor this feed made."""
        if cursor in (None, ""):
            return cls()
        assert cursor is not None
        try:
            if not cursor.startswith("{"):  # version 1: "<status_changed>|<task id>"
                stamp, sep, task_id = cursor.rpartition("|")
                if not sep or not task_id:
                    raise ValueError(cursor)
                at = stamp_ms(stamp)
                return cls(high=at, floor=(at, task_id))
            data = json.loads(cursor)
            if not isinstance(data, dict) or data.get("v") != 2:
                raise ValueError(cursor)
            high, floor, seen = data["high"], data["floor"], data["seen"]
            if high is not None and type(high) is not int:
                raise ValueError(high)
            if floor is not None:
                if not (isinstance(floor, list) and len(floor) == 2 and type(floor[0]) is int
                        and isinstance(floor[1], str)):
                    raise ValueError(floor)
                floor = (floor[0], floor[1])
            items = []
            for s in seen:
                if not (isinstance(s, list) and len(s) == 3 and type(s[0]) is int and isinstance(s[1], str)
                        and isinstance(s[2], str)):
                    raise ValueError(s)
                items.append((s[0], s[1], s[2]))
            if items and high is None:
                raise ValueError(cursor)
            return cls(high=high, floor=floor, seen=items)
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise InvalidRequest(f"invalid change cursor {cursor[:200]!r}") from exc


def _token(item: Seen) -> str:
    return json.dumps(list(item), separators=(",", ":"))


def read_changes(fetch: Fetch, cursor: str | None, limit: int, page_size: int, describe: Callable[[dict], TaskInfo],
                 *, lookback_s: float = LOOKBACK_S, max_seen: int = MAX_SEEN
                 ) -> tuple[list[tuple[dict, TaskInfo, str]], bool]:
    """Up to ``limit`` changes after ``cursor``, each as (task document, its ``TaskInfo``, the cursor
    that resumes after it), in order, and whether more follow."""
    window = Window.decode(cursor)
    lookback_ms = round(lookback_s * 1000)
    out: list[tuple[dict, TaskInfo, str]] = []
    for doc in _scan(fetch, window.start(lookback_ms), page_size):
        info = describe(doc)
        item = (*key_of(doc), info.state.value)
        if item in window:
            continue
        if len(out) == limit:
            return out, True
        window.add(item, lookback_ms, max_seen)
        out.append((doc, info, window.encode()))
    return out, False


def _scan(fetch: Fetch, start: Key, page_size: int) -> Iterator[dict]:
    """Every task after ``start`` in (``status_changed``, ``id``) order, read lazily."""
    key, size = start, page_size
    strict = False  # ask for "> stamp": the group at the position's timestamp is used up
    capped = False  # size is the server's page cap, learned: a shorter page is the last
    while True:
        conditions = [(">" if strict else ">=") + iso_ms(key[0])]
        rows = fetch(conditions, 0, size)
        strict = False
        # A short page is the last unless the server caps pages below size: its next page tells.
        last = len(rows) < size and (capped or not rows or not fetch(conditions, 1, size))
        if not last and len(rows) < size:
            size, capped = len(rows), True
        fresh = [r for r in rows if key_of(r) > key]
        yield from fresh
        if last:
            return
        if fresh:
            key = key_of(fresh[-1])
            continue
        # A full page and nothing after the position: the whole page shares the position's timestamp.
        group = _rest_of_group(fetch, key, size)
        yield from group
        if group:
            key = key_of(group[-1])
        strict = True


def _rest_of_group(fetch: Fetch, key: Key, page_size: int) -> list[dict]:
    """Every task at exactly the timestamp of ``key`` with an id after its id, by id."""
    stamp = iso_ms(key[0])
    found: dict[str, dict] = {}
    while True:
        new, read = 0, 0
        for rows in pages(lambda page, size: fetch([">=" + stamp, "<=" + stamp], page, size), page_size):
            read += 1
            for row in rows:
                if key_of(row) > key and row["id"] not in found:
                    found[row["id"]] = row
                    new += 1
        if new == 0 or read <= 1:  # one page read at once cannot have shifted
            return sorted(found.values(), key=key_of)
