"""Open alerts and the outbox's health for the status page, read from the monitor's outbox
(``<state_dir>/monitor.db``; the ``monitor`` entry point of ``scantide.status``).

An alert is open while its condition holds, judged from what the monitor keeps:
- ``queue.backlog``: the queues the monitor holds breached (it raises the event on the breach and
  again on the recovery);
- ``monitor.degraded``: output links failing, until the monitor sees them made again;
- ``scan.stalled``: a task the monitor reported stalled in the last ``STALL_WINDOW_S`` that the
  same rule (``monitor.alerts.find_stalls``) still finds stalled now;
- ``fleet.launch_failed``: launches the autoscaler gave up on in the last ``LAUNCH_WINDOW_S``
  (nothing marks one over: a later launch may fail again for the same reason).
"""

from __future__ import annotations

import json
from pathlib import Path

from monitor.alerts import find_stalls
from monitor.daemon import alert_config
from monitor.outbox import Entry, Outbox
from monitor.watch import BACKLOG, LINKS
from service.backends.base import TaskBackend
from service.domain import TaskInfo, iso
from service.errors import TaskNotFound
from service.settings import Settings
from service.status.model import Alert, Alerts, OutboxHealth, StatusPart
from service.status.sources import Source

ALERT_TYPES = ("scan.stalled", "queue.backlog", "fleet.launch_failed", "monitor.degraded")
STALL_WINDOW_S = 24 * 3600.0
LAUNCH_WINDOW_S = 3600.0
RECENT_ALERTS = 50  # alert events read per snapshot, newest first


class MonitorStatus:
    def __init__(self, settings: Settings, backend: TaskBackend) -> None:
        self.path = settings.state_dir / "monitor.db"
        self.backend = backend
        self.config = alert_config(settings)
        self.webhook_configured = bool(settings.webhook_url)
        self._outbox: Outbox | None = None

    def __call__(self, now: float) -> StatusPart:
        outbox = self._open()
        if outbox is None:
            reason = f"no monitor outbox at {self.path} (the monitor creates it when it starts)"
            return StatusPart(alerts=Alerts(available=False, reason=reason),
                              outbox=OutboxHealth(available=False, reason=reason,
                                                  webhook_configured=self.webhook_configured))
        pending, oldest, dead = outbox.health()
        health = OutboxHealth(pending=pending, dead=dead, webhook_configured=self.webhook_configured,
                              oldest_pending_age_s=None if oldest is None else round(max(0.0, now - oldest), 1))
        return StatusPart(alerts=Alerts(open=self._alerts(outbox, now)), outbox=health)

    def _open(self) -> Outbox | None:
        """The outbox, once the monitor has made it (never created here: an API without a monitor
        beside it must not leave an empty one behind)."""
        if self._outbox is None and Path(self.path).exists():
            self._outbox = Outbox(self.path)
        return self._outbox

    def _alerts(self, outbox: Outbox, now: float) -> list[Alert]:
        recent = outbox.recent(ALERT_TYPES, now - STALL_WINDOW_S, RECENT_ALERTS)
        latest: dict[str, Entry] = {}  # the newest of each type and key
        for e in recent:
            latest.setdefault(f"{e.type} {e.key}", e)
        return (self._backlogs(outbox, latest) + self._degraded(outbox, latest)
                + self._stalls([e for e in recent if e.type == "scan.stalled"], now)
                + [Alert(code="fleet.launch_failed", subject=f"pool {_data(e).get('pool', '')}",
                         detail=str(_data(e).get("reason", "")), since=iso(e.created_at))
                   for e in recent if e.type == "fleet.launch_failed" and e.created_at >= now - LAUNCH_WINDOW_S])

    def _backlogs(self, outbox: Outbox, latest: dict[str, Entry]) -> list[Alert]:
        """The queues the monitor holds breached, with their depth now."""
        alerts = []
        for queue in outbox.get(BACKLOG, {"breached": []})["breached"]:
            e = latest.get(f"queue.backlog queue:{queue}")
            stats = self.backend.queue_stats(queue)
            alerts.append(Alert(code="queue.backlog", subject=f"queue {queue}", since=iso(e.created_at) if e else None,
                                detail=f"oldest queued task {stats.oldest_queued_age_s:.0f} s old "
                                       f"(SLO {self.config.backlog_slo_s:.0f} s), {stats.pending} queued"))
        return alerts

    def _degraded(self, outbox: Outbox, latest: dict[str, Entry]) -> list[Alert]:
        if not outbox.get(LINKS, {"degraded": False})["degraded"]:
            return []
        e = latest.get("monitor.degraded monitor:output_links")
        error = _data(e).get("error") or {}
        return [Alert(code="monitor.degraded", subject="output links", since=iso(e.created_at) if e else None,
                      detail=f"outputs cannot be linked: {error.get('message', 'see the monitor log')}")]

    def _stalls(self, reported: list[Entry], now: float) -> list[Alert]:
        """The reported stalls the rule still finds, each task read anew from the store; since: the
        first report of that task and reason in the window."""
        tasks: dict[str, TaskInfo] = {}
        for e in reported:
            task_id = _data(e).get("task_id")
            if task_id and task_id not in tasks:
                try:
                    tasks[task_id] = self.backend.get_task(task_id)
                except TaskNotFound:
                    continue
        if not tasks:
            return []
        limits = {t.name: t.max_runtime_s for t in self.backend.templates()}
        since = {(_data(e).get("task_id"), (_data(e).get("stall") or {}).get("reason")): e.created_at for e in reported}
        return [Alert(code="scan.stalled", subject=f"scan {s.task.scan_id} (task {s.task.task_id})", detail=s.detail,
                      since=iso(since.get((s.task.task_id, s.reason))))
                for s in find_stalls(list(tasks.values()), limits, now, self.config)]


def _data(entry: Entry | None) -> dict:
    return json.loads(entry.body).get("data", {}) if entry is not None else {}


def source(settings: Settings, backend: TaskBackend) -> Source:
    return MonitorStatus(settings, backend)
