"""The monitor's Prometheus series: what it reads from the change feed, what it delivers, what waits.

Task changes are counted once their page is saved with the cursor (``Watcher.poll_changes``): a
monitor killed in between loses that page's counts rather than counting it twice. ClearML reports
a task's latest status, so a state it passed through between two reads is not counted there.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from service.domain import Change, JobState

TASKS = Counter("scantide_tasks", "Task state changes read from the task store, by algorithm and the state entered "
                "(queued, running, completed, failed, stopped).", ["algorithm", "state"])
TASK_DURATION = Histogram("scantide_task_duration_seconds", "A task's run, started to finished, for tasks that "
                          "ended (completed, failed, stopped), seconds.", ["algorithm"],
                          buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200))
WEBHOOK_DELIVERIES = Counter("scantide_webhook_deliveries", "Webhook sends by outcome: delivered, retry (failed, "
                             "sent again later), dead (dead-lettered).", ["outcome"])
WEBHOOK_LAG = Histogram("scantide_webhook_lag_seconds", "From the change an event reports to its delivery "
                        "(retries included), seconds.",
                        buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600))
OUTBOX_PENDING = Gauge("scantide_outbox_pending", "Events in the outbox not yet delivered nor dead-lettered.",
                       multiprocess_mode="livemostrecent")
EVENTS = Counter("scantide_events", "Webhook events put in the outbox (each once), by type; the alerts are "
                 "scan.stalled, queue.backlog, fleet.launch_failed, monitor.degraded and scan.rejected.", ["type"])
DEGRADED = Gauge("scantide_monitor_degraded", "1 while the monitor fails at `what` (output_links: linking "
                 "outputs in events), else 0.", ["what"], multiprocess_mode="livemostrecent")


def count_changes(changes: list[Change]) -> None:
    """Count each change by algorithm and state, and the run time of each that ended."""
    for change in changes:
        task = change.task
        TASKS.labels(task.algorithm, change.state.value).inc()
        ended = change.state in (JobState.completed, JobState.failed, JobState.stopped)
        # the task as it is now: its times are this change's only while it is on the same attempt
        if ended and change.attempt == task.attempt and task.started_at is not None and task.finished_at is not None:
            TASK_DURATION.labels(task.algorithm).observe(max(0.0, task.finished_at - task.started_at))
