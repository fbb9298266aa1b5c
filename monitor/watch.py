"""Watch the task store: page through state changes from a persisted server-side cursor.

The cursor is the store's own watermark (never this process's clock) and is saved in the
outbox in the same transaction as the events a page produced, so a restarted monitor resumes
exactly where it stopped. The alert rules run on a snapshot of queued and running tasks.

An output that cannot be linked (no credentials for its store) does not stop the watcher: its
event goes out with the reason in ``outputs.link_errors``, and ``monitor.degraded`` is raised once
for the spell (and once more when links are made again), not once per event.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from monitor import events
from monitor.alerts import AlertConfig, backlog_transitions, find_stalls
from monitor.events import Event, Linker, local_link
from monitor.fleet import Position, is_final_launch_failure, read_new
from monitor.metrics import count_changes
from monitor.outbox import Outbox
from service.backends.base import TaskBackend
from service.domain import JobState
from service.errors import ScantideError
from service.rejections import RejectionStore
from service.storage import is_remote

log = logging.getLogger(__name__)

CURSOR = "changes_cursor"
BACKLOG = "backlog_state"  # {"breached": [queues], "breaches": {queue: count}}
JOURNAL = "journal_position"
REJECTIONS = "rejections_cursor"  # how far the refused input (service.rejections) was read  # how far the autoscaler's journal was read
LINKS = "links_state"  # {"degraded": bool, "episodes": count}: the output-link alert
ACTIVE_LIMIT = 10_000  # queued/running tasks the stall rules look at per tick


class LinkTally:
    """A linker that notes, since ``reset()``, the first failure, how many failed, and how many links
    to remote stores it made (local links cannot fail, so they say nothing of a recovery). The
    failures still propagate: ``events`` turns them into ``link_errors``."""

    def __init__(self, link: Linker) -> None:
        self.link = link
        self.reset()

    def reset(self) -> None:
        self.first_error: ScantideError | None = None
        self.failed = 0
        self.made_remote = 0

    def __call__(self, uri: str) -> str:
        try:
            url = self.link(uri)
        except ScantideError as exc:
            self.failed += 1
            self.first_error = self.first_error or exc
            raise
        self.made_remote += is_remote(uri)
        return url


class Watcher:
    def __init__(self, backend: TaskBackend, outbox: Outbox, alerts: AlertConfig, *, page_size: int = 500,
                 link: Linker = local_link, journal: Path | None = None, step_events: bool = False,
                 rejections: RejectionStore | None = None) -> None:
        self.rejections = rejections
        self.step_events = step_events
        self.backend = backend
        self.journal = journal
        self.outbox = outbox
        self.alerts = alerts
        self.page_size = page_size
        self.link = LinkTally(link)

    def poll_changes(self) -> int:
        """Turn every change since the cursor into events; returns how many events were new."""
        cursor = self.outbox.get(CURSOR)
        added = 0
        while True:
            page = self.backend.changes(cursor, self.page_size)
            self.link.reset()
            built = [e for e in (events.from_change(c, self.link, step_events=self.step_events) for c in page.changes) if e is not None]
            state: dict[str, Any] = {CURSOR: page.cursor}
            if page.changes:
                built += self._link_alert(max(c.at for c in page.changes), state)
            added += self.outbox.append(built, state=state)
            count_changes(page.changes)  # after the save: a crash before it loses the counts, never doubles them
            cursor = page.cursor
            if not page.more:
                return added

    def _link_alert(self, at: float, state: dict[str, Any]) -> list[Event]:
        """``monitor.degraded`` for output links, on a change of spell only; the spell is kept in
        ``state`` (saved with the page) so a restarted monitor does not raise it again."""
        tally = self.link
        was = self.outbox.get(LINKS, {"degraded": False, "episodes": 0})
        if tally.first_error is not None:
            error = tally.first_error
            if was["degraded"]:  # alerted already: the events say which links are missing
                log.info("output_links_failed failed=%d code=%s error=%s", tally.failed, error.code, error.message)
                return []
            now = {"degraded": True, "episodes": was["episodes"] + 1}
            log.warning("monitor_degraded what=output_links episode=%d failed=%d code=%s error=%s", now["episodes"],
                        tally.failed, error.code, error.message)
            alert = events.degraded("output_links", "degraded", now["episodes"], at, error)
        elif tally.made_remote and was["degraded"]:
            now = {"degraded": False, "episodes": was["episodes"]}
            log.warning("monitor_recovered what=output_links episode=%d", now["episodes"])
            alert = events.degraded("output_links", "recovered", now["episodes"], at)
        else:
            return []
        state[LINKS] = now
        return [alert]

    def poll_rejections(self) -> int:
        """Input the Lambda refused and reported, as ``scan.rejected``; returns how many were new."""
        if self.rejections is None:
            return 0
        cursor, added = int(self.outbox.get(REJECTIONS, 0)), 0
        while True:
            found, cursor = self.rejections.since(cursor)
            added += self.outbox.append([events.rejected(r) for r in found], state={REJECTIONS: cursor})
            if not found:
                return added

    def poll_journal(self) -> int:
        """Launches the autoscaler gave up on, as ``fleet.launch_failed``; returns how many were new."""
        if self.journal is None:
            return 0
        entries, pos = read_new(self.journal, Position.from_json(self.outbox.get(JOURNAL)))
        built = [events.launch_failed(e) for e in entries if is_final_launch_failure(e)]
        for e in built:
            log.warning("fleet_launch_failed pool=%s reason=%s", e.data["pool"], e.data["reason"])
        return self.outbox.append(built, state={JOURNAL: pos.to_json()})

    def check_alerts(self, now: float | None = None) -> int:
        """Stall and backlog rules; returns how many events were new."""
        now = time.time() if now is None else now
        limits = {t.name: t.max_runtime_s for t in self.backend.templates()}
        active = (self.backend.list_tasks(JobState.running, ACTIVE_LIMIT)
                  + self.backend.list_tasks(JobState.queued, ACTIVE_LIMIT))
        built = [events.stalled(s.task, s.reason, s.detail, now) for s in find_stalls(active, limits, now, self.alerts)]

        state = self.outbox.get(BACKLOG, {"breached": [], "breaches": {}})
        breached, breaches = set(state["breached"]), dict(state["breaches"])
        stats = {q: self.backend.queue_stats(q) for q in self.backend.queues()}
        for queue, status in backlog_transitions(list(stats.values()), breached, self.alerts):
            if status == "breached":
                breaches[queue] = breaches.get(queue, 0) + 1
                breached.add(queue)
            else:
                breached.discard(queue)
            s = stats[queue]
            built.append(events.backlog(queue, status, breaches[queue], s.oldest_queued_age_s, s.pending,
                                        self.alerts.backlog_slo_s, now))
            log.warning("queue_backlog queue=%s status=%s oldest_s=%.0f", queue, status, s.oldest_queued_age_s)
        return self.outbox.append(built, state={BACKLOG: {"breached": sorted(breached), "breaches": breaches}})
