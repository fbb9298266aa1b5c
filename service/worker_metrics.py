"""The worker's Prometheus series (``scantide worker``: embedded workers, and any run by hand; on
EC2 the ClearML agent runs tasks, and the monitor's ``scantide_tasks_total`` counts them all)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

WORKER_TASKS = Counter("scantide_worker_tasks", "Tasks a worker ran to an end, by algorithm and outcome: the "
                       "state it recorded (completed, failed), or lost (its lease had moved on).",
                       ["algorithm", "outcome"])
SLOTS = Gauge("scantide_worker_slots", "Worker slots (tasks the live workers can run at once).",
              multiprocess_mode="livesum")
SLOTS_BUSY = Gauge("scantide_worker_slots_busy", "Worker slots running a task now.", multiprocess_mode="livesum")
