"""Build one status snapshot: queues and recent tasks from the task store, runs from the pipeline
store, and the fleet, alerts and outbox from the status sources (``service.status.sources``).

A source that fails costs only its sections (unavailable, with the reason); the task store
failing fails the snapshot, as it fails every other read of the API.
"""

from __future__ import annotations

import logging
import time

from service.backends.base import TaskBackend
from service.domain import JobState, TaskInfo, iso
from service.pipelines.store import ENDED, PipelineStore, Run
from service.status.model import (
    Alerts,
    FleetStatus,
    OutboxHealth,
    QueueStatus,
    RunRow,
    StatusPart,
    StatusSnapshot,
    TaskRow,
)
from service.status.sources import Source

log = logging.getLogger(__name__)

TASKS_SHOWN = 25
RUNS_SHOWN = 10


class StatusBuilder:
    def __init__(self, backend: TaskBackend, pipelines: PipelineStore, sources: dict[str, Source], *,
                 backend_name: str) -> None:
        self.backend = backend
        self.pipelines = pipelines
        self.sources = sources
        self.backend_name = backend_name

    def __call__(self, now: float | None = None) -> StatusSnapshot:
        now = time.time() if now is None else now
        part, failures = self._sources(now)

        def missing(owner: str) -> str:
            return "; ".join(failures) or f"no {owner} status source is installed"

        return StatusSnapshot(
            generated_at=iso(now) or "", backend=self.backend_name, queues=self._queues(),
            tasks=[task_row(t) for t in self.backend.list_tasks(None, TASKS_SHOWN)],
            runs=[run_row(r) for r in self.pipelines.list_runs(limit=RUNS_SHOWN)],
            fleet=part.fleet or FleetStatus(available=False, reason=missing("autoscaler")),
            alerts=part.alerts or Alerts(available=False, reason=missing("monitor")),
            outbox=part.outbox or OutboxHealth(available=False, reason=missing("monitor")),
        )

    def _queues(self) -> list[QueueStatus]:
        workers: dict[str, int] = {}
        for w in self.backend.workers():
            workers[w.queue] = workers.get(w.queue, 0) + 1
        out = []
        for name in self.backend.queues():
            s = self.backend.queue_stats(name)
            out.append(QueueStatus(queue=name, pending=s.pending, running=s.running,
                                   oldest_queued_age_s=round(s.oldest_queued_age_s, 1), workers=workers.get(name, 0)))
        return out

    def _sources(self, now: float) -> tuple[StatusPart, list[str]]:
        """The sections of every source merged, and why each failing source failed (the sections
        it would have filled read as unavailable, with that reason)."""
        merged, failures = StatusPart(), []
        for name, source in self.sources.items():
            try:
                part = source(now)
            except Exception as exc:  # noqa: BLE001 - one source's failure costs its sections only
                log.warning("status_source_failed name=%s error=%s: %s", name, type(exc).__name__, exc)
                failures.append(f"the {name} status source failed: {type(exc).__name__}: {exc}")
                continue
            for field in StatusPart.model_fields:
                if getattr(part, field) is not None:
                    setattr(merged, field, getattr(part, field))
        return merged, failures


def task_row(t: TaskInfo) -> TaskRow:
    progress = 1.0 if t.state is JobState.completed else 0.0 if t.state is JobState.queued else t.progress
    return TaskRow(scan_id=t.scan_id, task_id=t.task_id, algorithm=t.algorithm, queue=t.queue, state=t.state,
                   progress=progress, attempt=t.attempt, created_at=iso(t.created_at), finished_at=iso(t.finished_at),
                   error_code=t.error.code if t.error else None, pipeline_run=t.params.get("pipeline_run"))


def run_row(r: Run) -> RunRow:
    ended = sum(1 for s in r.steps.values() if s.state in ENDED)
    total = len(r.steps)
    return RunRow(run_id=r.run_id, pipeline=r.pipeline, version=r.version, scan_id=r.scan_id,
                  state=r.state,  # type: ignore[arg-type]  # one of RUN_STATES, as the store writes it
                  steps_total=total, steps_ended=ended, progress=round(ended / total, 3) if total else 0.0,
                  created_at=iso(r.created_at), updated_at=iso(r.updated_at),
                  error_code=(r.error or {}).get("code"))
