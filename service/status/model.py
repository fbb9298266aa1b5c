"""The status snapshot (``GET /v1/status``, and each ``snapshot`` event of ``/v1/status/events``).

Times are ISO-8601 UTC strings; ages are seconds as of ``generated_at``. A section another
process keeps (the fleet: the autoscaler; alerts and the outbox: the monitor) says whether it
could be read here (``available``) and, when not, why (``reason``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from service.domain import JobState

AlertCode = Literal["scan.stalled", "queue.backlog", "fleet.launch_failed", "monitor.degraded"]
RunState = Literal["queued", "running", "completed", "failed"]


class Section(BaseModel):
    available: bool = True
    reason: str | None = Field(None, description="Why the section could not be read here (available false).")


class QueueStatus(BaseModel):
    queue: str
    pending: int = Field(description="Tasks queued.")
    running: int
    oldest_queued_age_s: float = Field(description="Age of the oldest queued task, seconds; 0 when none is.")
    workers: int = Field(description="Workers registered on the queue.")


class FleetInstance(BaseModel):
    id: str
    state: Literal["booting", "idle", "busy", "draining", "stopped", "stopping", "lost"]
    instance_type: str
    market: str
    price_per_hour: float = Field(description="US dollars per hour.")
    state_age_s: float = Field(description="Seconds in this state, as of the autoscaler's last tick.")
    slots: int
    task_ids: list[str]


class FleetPool(BaseModel):
    pool: str
    queue: str
    instances: list[FleetInstance]
    launches_in_flight: int
    cost_per_hour: float = Field(description="What the pool's instances bill, US dollars per hour: every "
                                             "instance but the stopped ones, at its own price.")


class FleetStatus(Section):
    observed_at: str | None = Field(None, description="When the autoscaler last observed the fleet.")
    age_s: float | None = Field(None, description="Seconds since then.")
    pools: list[FleetPool] = Field(default_factory=list)
    cost_per_hour: float = Field(0.0, description="All pools together, US dollars per hour.")


class TaskRow(BaseModel):
    """One task of a recently submitted scan (a pipeline step's task names its run)."""

    scan_id: str
    task_id: str
    algorithm: str
    queue: str
    state: JobState
    progress: float | None = Field(description="0..1: 1 once completed; while running, as the worker last "
                                               "reported (null before it reports).")
    attempt: int
    created_at: str | None
    finished_at: str | None
    error_code: str | None
    pipeline_run: str | None


class RunRow(BaseModel):
    run_id: str
    pipeline: str
    version: str
    scan_id: str
    state: RunState
    steps_total: int
    steps_ended: int = Field(description="Steps completed, failed or skipped.")
    progress: float = Field(description="steps_ended / steps_total.")
    created_at: str | None
    updated_at: str | None
    error_code: str | None


class Alert(BaseModel):
    code: AlertCode = Field(description="The webhook event type that raised it.")
    subject: str = Field(description="What it is about: a queue, a scan's task, a pool, a monitor function.")
    detail: str
    since: str | None


class Alerts(Section):
    open: list[Alert] = Field(default_factory=list)


class OutboxHealth(Section):
    pending: int = 0
    oldest_pending_age_s: float | None = Field(None, description="Seconds the oldest pending event has waited.")
    dead: int = Field(0, description="Dead-lettered events (a 4xx other than 408/429, or retried past "
                                     "webhook_max_age_s): `scantide events retry-dead` sends them again.")
    webhook_configured: bool = False


class StatusPart(BaseModel):
    """The sections one status source (``service.status.sources``) fills; None: not its own."""

    fleet: FleetStatus | None = None
    alerts: Alerts | None = None
    outbox: OutboxHealth | None = None


class StatusSnapshot(BaseModel):
    generated_at: str
    backend: str
    queues: list[QueueStatus]
    fleet: FleetStatus
    tasks: list[TaskRow] = Field(description="The most recently created tasks, newest first.")
    runs: list[RunRow] = Field(description="The most recently created pipeline runs, newest first.")
    alerts: Alerts
    outbox: OutboxHealth

    def fingerprint(self) -> str:
        """The snapshot without what changes by the clock alone (``generated_at``, ages): two
        snapshots with the same fingerprint show the same state."""
        return self.model_dump_json(exclude=_VOLATILE)


_ALL_AGE: dict[str, Any] = {"__all__": {"oldest_queued_age_s"}}
_VOLATILE: dict[str, Any] = {
    "generated_at": True,
    "queues": _ALL_AGE,
    "fleet": {"age_s": True, "pools": {"__all__": {"instances": {"__all__": {"state_age_s"}}}}},
    "outbox": {"oldest_pending_age_s"},
}
