"""``scantide monitor``: watch task changes, run the alert rules, deliver webhooks, until SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from monitor.alerts import AlertConfig
from monitor.events import linker_for
from monitor.metrics import DEGRADED, OUTBOX_PENDING
from monitor.outbox import Outbox
from monitor.watch import LINKS, Watcher
from monitor.webhook import Deliverer, DeliveryPolicy
from service import logs
from service.backends.base import TaskBackend
from service.doorbell import CHANGES
from service.errors import BackendUnavailable
from service.rejections import RejectionStore
from service.settings import Settings, reveal

log = logging.getLogger(__name__)

ALERT_EVERY_S = 5.0  # the stall and backlog rules need no faster tick
STOP_DELIVERY_S = 10.0  # on stop: how long the events already due may take to go out


def outbox_for(settings: Settings) -> Outbox:
    return Outbox(settings.state_dir / "monitor.db")


def alert_config(settings: Settings) -> AlertConfig:
    return AlertConfig(stall_no_heartbeat_s=settings.stall_no_heartbeat_s, max_queue_wait_s=settings.max_queue_wait_s,
                       backlog_slo_s=settings.backlog_slo_s)


def delivery_policy(settings: Settings) -> DeliveryPolicy | None:
    if not settings.webhook_url:
        return None
    return DeliveryPolicy(url=settings.webhook_url, secret=reveal(settings.webhook_secret),
                          timeout_s=settings.webhook_timeout_s, max_age_s=settings.webhook_max_age_s,
                          backoff_base_s=settings.webhook_backoff_base_s, backoff_cap_s=settings.webhook_backoff_cap_s,
                          concurrency=settings.webhook_concurrency)


class MonitorDaemon:
    def __init__(self, backend: TaskBackend, settings: Settings) -> None:
        self.settings = settings
        self.outbox = outbox_for(settings)
        self.watcher = Watcher(backend, self.outbox, alert_config(settings), link=linker_for(settings),
                               journal=settings.autoscaler_journal, step_events=settings.webhook_step_events,
                               rejections=RejectionStore(settings.rejections_db))
        policy = delivery_policy(settings)
        self.deliverer = Deliverer(self.outbox, policy) if policy else None
        self._stop = threading.Event()
        self._changes = backend.listener(CHANGES)  # embedded: rung by every change, so none waits a poll

    def stop(self, *_: Any) -> None:
        self._stop.set()
        self._changes.wake()

    def _reap(self) -> None:
        """Re-queue (or fail, past their attempt limit) the tasks of lost workers. In production no other
        daemon does: ClearML's own watchdog would only stop them."""
        for task in self.watcher.backend.reap_expired():
            with logs.bind(task_id=task.task_id, scan_id=task.scan_id, request_id=task.request_id):
                log.warning("lost_worker_task task=%s scan=%s now=%s attempt=%d", task.task_id, task.scan_id,
                            task.state.value, task.attempt)

    def _set_gauges(self) -> None:
        """The outbox's gauges as they are now (a send that ended since the last tick included)."""
        OUTBOX_PENDING.set(self.outbox.health()[0])
        DEGRADED.labels("output_links").set(int(self.outbox.get(LINKS, {}).get("degraded", False)))

    def _deliver_what_is_due(self, within_s: float) -> None:
        """On stop: read the changes made since the last tick (the workers' last tasks, finished while
        the stack drained) and give what is due, those included, ``within_s`` to be delivered."""
        try:
            self.watcher.poll_changes()
        except Exception as exc:  # noqa: BLE001 - stopping: what is not read now is read at the next start
            log.warning("monitor_last_poll_failed error=%s", exc)
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            due = self.watcher.outbox.next_due_at()
            if due is None or due > time.time():
                return
            self.deliverer.wake()  # type: ignore[union-attr]
            time.sleep(0.1)
        log.warning("monitor_stopped_with_due_events: they go out at the next start")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        sender = None
        if self.deliverer is not None:
            sender = threading.Thread(target=self.deliverer.run, name="deliverer", daemon=True)
            sender.start()
        else:
            log.warning("monitor_no_webhook events are kept in the outbox but not sent: set SCANTIDE_WEBHOOK_URL")
        log.info("monitor_started poll_s=%.2f", self.settings.monitor_poll_s)
        failures = 0
        next_alerts = 0.0
        while not self._stop.is_set():
            try:
                added = self.watcher.poll_changes()
                if time.monotonic() >= next_alerts:
                    next_alerts = time.monotonic() + ALERT_EVERY_S
                    self._reap()
                    added += self.watcher.check_alerts() + self.watcher.poll_journal() + self.watcher.poll_rejections()
                if added and self.deliverer is not None:
                    self.deliverer.wake()
                self._set_gauges()
                failures = 0
                wait = self.settings.monitor_poll_s
            except BackendUnavailable as exc:
                failures += 1
                wait = min(30.0, self.settings.monitor_poll_s * 2 ** failures)
                log.warning("monitor_backend_unavailable retry_in_s=%.1f error=%s", wait, exc.message)
            except Exception:  # noqa: BLE001 - the deliverer must keep sending what is queued through a bug here
                failures += 1
                wait = min(30.0, self.settings.monitor_poll_s * 2 ** failures)
                log.exception("monitor_tick_crashed retry_in_s=%.1f", wait)
            if not self._stop.is_set():
                self._changes.wait(wait)
        self._changes.close()
        if self.deliverer is not None and sender is not None:
            self._deliver_what_is_due(STOP_DELIVERY_S)
            self.deliverer.stop()
            sender.join(timeout=self.settings.webhook_timeout_s + 5)
        log.info("monitor_stopped")
        return 0
