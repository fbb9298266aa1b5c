"""Domain types shared by every entry point, backend and daemon.

Times are unix seconds (float, server clock) unless a name says otherwise.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"
    stopped = "stopped"

    @property
    def terminal(self) -> bool:
        return self in (JobState.completed, JobState.failed, JobState.stopped)


SCAN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class ScanRequest(BaseModel):
    """What the platform asks for: analyse this scan with this algorithm."""

    model_config = ConfigDict(extra="forbid")

    scan_id: str = Field(pattern=SCAN_ID_PATTERN, description="Platform's id for the scan.")
    scan_uri: str = Field(min_length=1, max_length=2048, description="s3://, https:// or a path under the data root.")
    algorithm: str | None = Field(default=None, max_length=64, description="Defaults to the configured algorithm.")
    algorithm_version: str | None = Field(
        default=None, max_length=64, description="A registered version of the algorithm; default: the newest.")
    params: dict[str, Any] | None = Field(
        default=None, description="The algorithm's parameters, checked against its descriptor: unknown names and "
        "values out of bounds are refused (422 invalid_params, naming the field).")
    metadata: dict[str, Any] | None = Field(default=None, description="Opaque; echoed in webhooks.")
    pipeline: str | None = Field(default=None, max_length=64, description="Run this registered pipeline on the "
                                 "scan instead of one algorithm (idempotent on pipeline + scan_id); answers with a "
                                 "run_id.")
    pipeline_version: str | None = Field(default=None, max_length=64, description="A registered version of the "
                                         "pipeline; default: the newest.")

    @model_validator(mode="after")
    def _version_needs_pipeline(self) -> ScanRequest:
        if self.pipeline_version is not None and self.pipeline is None:
            raise ValueError("pipeline_version names a version of a pipeline: give pipeline too")
        return self
    previous_scan_id: str | None = Field(
        default=None, pattern=SCAN_ID_PATTERN,
        description="An earlier scan of the same patient, analysed by the same algorithm and completed, to compare "
        "this one with (treatment tracking). Unknown: 422 previous_scan_not_found; not completed yet: 409 "
        "previous_scan_not_completed.")


@dataclass(frozen=True)
class Template:
    """The task every scan of one algorithm is cloned from."""

    name: str
    entry_point: str = "algorithms.entry"
    queue: str = "default"
    params: dict[str, Any] = field(default_factory=dict)
    max_runtime_s: float = 1800.0


@dataclass(frozen=True)
class TaskError:
    code: str
    message: str
    log_tail: str = ""  # last <= 2 KB of the task's log

    LOG_TAIL_BYTES = 2048

    @classmethod
    def make(cls, code: str, message: str, log: str = "") -> TaskError:
        tail = log.encode("utf-8", "replace")[-cls.LOG_TAIL_BYTES:].decode("utf-8", "ignore")
        return cls(code=code, message=message[:1000], log_tail=tail)


@dataclass(frozen=True)
class TaskInfo:
    task_id: str
    algorithm: str
    scan_id: str
    queue: str
    state: JobState
    params: dict[str, Any]
    output_uri: str
    attempt: int = 0  # 1 on first run; increases each time an expired lease re-queues the task
    worker_id: str | None = None
    created_at: float | None = None
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: TaskError | None = None
    progress: float | None = None  # 0..1 while running, as last reported by the worker
    heartbeat_at: float | None = None  # the worker's last lease renewal
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier runs ended before a retry:
    # {attempt, state, error, finished_at (ISO-8601)}, oldest first
    request_id: str | None = None  # the request that submitted it (service.logs): its lines carry it

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        for key in ("created_at", "queued_at", "started_at", "finished_at", "heartbeat_at"):
            d[key] = iso(d[key])
        return d


def ended_run(task: TaskInfo) -> dict[str, Any]:
    """What ``task.history`` keeps of the run ``task`` ended before it is run again."""
    return {"attempt": task.attempt, "state": task.state.value, "error": asdict(task.error) if task.error else None,
            "finished_at": iso(task.finished_at)}


@dataclass(frozen=True)
class SubmitItem:
    """A validated request to clone an algorithm's template for one scan."""

    algorithm: str
    scan_id: str
    params: dict[str, Any]
    output_uri: str
    queue: str | None = None  # the pinned algorithm version's queue; None: the template's
    max_attempts: int | None = None  # runs before a lost worker fails the task; None: the backend's setting
    user_params: dict[str, Any] | None = None  # the request's own params, checked against the descriptor at pin
    scan_is_blob: bool = False  # the scan is an uploaded blob (POST /v1/blobs, register scope)
    request_id: str | None = None  # the request that asked for it, kept with the task


@dataclass(frozen=True)
class Submission:
    task: TaskInfo
    created: bool  # False when the (algorithm, scan_id) pair already had a task


@dataclass(frozen=True)
class Change:
    """One state change of one task, as the store recorded it."""

    cursor: str  # resume after this change
    task_id: str
    state: JobState
    attempt: int
    at: float
    task: TaskInfo  # the task as it is now


@dataclass(frozen=True)
class ChangePage:
    changes: list[Change]
    cursor: str | None  # where the next call starts; unchanged when the page is empty
    more: bool


@dataclass(frozen=True)
class QueueStats:
    queue: str
    pending: int
    running: int
    oldest_queued_age_s: float  # 0 when nothing is queued
    enqueued_total: int | None = None  # tasks ever enqueued on the queue (re-queues excluded), if known

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    queue: str
    task_id: str | None
    last_seen: float
    idle_since: float | None  # None while busy
    draining: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["last_seen"] = iso(self.last_seen)
        d["idle_since"] = iso(self.idle_since)
        return d


def iso(ts: float | None) -> str | None:
    """Unix seconds → ISO-8601 UTC, or None."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
