"""The API's response bodies as pydantic models: what ``/openapi.json`` publishes for every 2xx answer.

Each model matches the dict its route builds (``TaskInfo.to_dict`` and the like). They forbid extra
fields at run time, so a field a route returns without a model that names it fails loudly (a 500 in
every test that reaches the route) instead of vanishing from the answer; the published schema leaves
``additionalProperties`` open, so clients keep ignoring fields added later. Times are ISO-8601 UTC.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.catalog.descriptor import RUNNERS
from service.domain import JobState
from service.pipelines.store import RUN_STATES, STEP_STATES


def published(*examples: dict[str, Any]) -> ConfigDict:
    """A body's config: extra fields forbidden at run time, left open in the published schema, with
    ``examples``."""

    def edit(schema: dict[str, Any]) -> None:
        schema.pop("additionalProperties", None)
        if examples:
            schema["examples"] = list(examples)

    return ConfigDict(extra="forbid", json_schema_extra=edit)


class Body(BaseModel):
    """A response body: exactly these fields (see the module docstring)."""

    model_config = published()


ISO = "ISO-8601 UTC time"
RunnerName = Literal[RUNNERS]  # type: ignore[valid-type]
RunState = Literal[RUN_STATES]  # type: ignore[valid-type]
StepState = Literal[STEP_STATES]  # type: ignore[valid-type]


# -- tasks and scans -------------------------------------------------------------------------------
class TaskLinks(Body):
    task: str = Field(description="GET this path for the task.", examples=["/v1/tasks/9b2e4c1f"])
    scan: str = Field(description="GET this path for every task of its scan.", examples=["/v1/scans/patient-42"])


class TaskErrorBody(Body):
    code: str = Field(description="Stable: invalid_input, invalid_video, timeout, algorithm_crashed, worker_lost, "
                      "fetch_failed, cancelled … (docs/api.md, Errors).")
    message: str
    log_tail: str = Field(description="The last 2 KB of the algorithm's output, else of the task's log.")


class EndedRun(Body):
    """A run of the task that ended before it ran again (a lost worker, a retry, a spot interruption)."""

    attempt: int
    state: JobState
    error: TaskErrorBody | None
    finished_at: str | None = Field(description=ISO)


class Task(Body):
    model_config = published({
        "task_id": "9b2e4c1f", "algorithm": "video_summary", "scan_id": "patient-42-visit-3", "queue": "default",
        "state": "completed", "params": {"scan_id": "patient-42-visit-3", "scan_uri": "/srv/data/scan.mp4"},
        "output_uri": "/srv/outputs/video_summary/patient-42-visit-3", "attempt": 1, "worker_id": "host-1:0",
        "created_at": "2026-11-22T09:13:58.002Z", "queued_at": "2026-11-22T09:13:58.002Z",
        "started_at": "2026-11-22T09:13:58.410Z", "finished_at": "2026-11-22T09:14:03.100Z",
        "result": {"summary": {"frame_count": 144}}, "error": None, "progress": 1.0,
        "heartbeat_at": "2026-11-22T09:14:02.900Z", "history": [], "request_id": "7f3a9c0e5b1d4e2f8a6c3b9d0e1f2a3b",
        "links": {"task": "/v1/tasks/9b2e4c1f", "scan": "/v1/scans/patient-42-visit-3"}})

    task_id: str
    algorithm: str
    scan_id: str
    queue: str
    state: JobState
    params: dict[str, Any] = Field(description="The task's parameters as pinned at enqueue.")
    output_uri: str
    attempt: int = Field(description="1 on the first run; one more each time the task runs again.")
    worker_id: str | None
    created_at: str | None = Field(description=ISO)
    queued_at: str | None = Field(description=ISO)
    started_at: str | None = Field(description=ISO)
    finished_at: str | None = Field(description=ISO)
    result: dict[str, Any] | None = Field(description="What the algorithm recorded (completed tasks).")
    error: TaskErrorBody | None
    progress: float | None = Field(description="0..1 while running, as last reported.")
    heartbeat_at: str | None = Field(description=ISO)
    history: list[EndedRun]
    request_id: str | None = Field(description="The X-Request-ID of the request that submitted the task (null: "
                                   "submitted otherwise): every log line about the task carries it.")
    links: TaskLinks


class RunLinks(Body):
    run: str = Field(examples=["/v1/runs/run_5d1c"])
    retry: str = Field(examples=["/v1/runs/run_5d1c/retry"])


class StepRun(Body):
    algorithm: str
    version: str = Field(description="The algorithm version pinned when the run was made.")
    compute: str = Field(description="The compute target the step runs on.")
    state: StepState
    task_id: str | None
    attempt: int
    result: dict[str, Any] | None
    error: dict[str, Any] | None = Field(description="{code, message, log_tail} of a failed step.")
    bytes_moved: int = Field(description="Input bytes copied between compute targets for the step.")


class Run(Body):
    run_id: str
    pipeline: str
    version: str
    scan_id: str
    scan_uri: str
    state: RunState
    error: dict[str, Any] | None = Field(description="{step, code, message, log_tail} of a failed run.")
    retries: int
    metadata: dict[str, Any]
    created_at: str | None = Field(description=ISO)
    updated_at: str | None = Field(description=ISO)
    steps: dict[str, StepRun] = Field(description="Each step by name.")
    links: RunLinks


class Submitted(Body):
    """``POST /v1/scans`` with an algorithm."""

    model_config = published({
        "task_id": "9b2e4c1f", "scan_id": "patient-42-visit-3", "algorithm": "video_summary", "state": "queued",
        "created": True, "links": {"task": "/v1/tasks/9b2e4c1f", "scan": "/v1/scans/patient-42-visit-3"}})

    task_id: str
    scan_id: str
    algorithm: str
    state: JobState
    created: bool = Field(description="False: the (algorithm, scan_id) pair had a task already; this is it.")
    links: TaskLinks


class RunSubmitted(Body):
    """``POST /v1/scans`` with a pipeline."""

    model_config = published({
        "run_id": "run_5d1c", "scan_id": "patient-42-visit-3", "pipeline": "triage", "version": "1",
        "state": "queued", "created": True, "links": {"run": "/v1/runs/run_5d1c", "retry": "/v1/runs/run_5d1c/retry"}})

    run_id: str
    scan_id: str
    pipeline: str
    version: str
    state: RunState
    created: bool = Field(description="False: the (pipeline, scan_id) pair had a run already; this is it.")
    links: RunLinks


class Scan(Body):
    scan_id: str
    tasks: list[Task]
    runs: list[Run]


class RetriedScan(Body):
    scan_id: str
    tasks: list[Task] = Field(description="The tasks queued again.")


class Outputs(Body):
    task_id: str
    outputs: dict[str, str] = Field(description="Each output file → a local path (embedded) or a presigned URL.")


class QueueView(Body):
    queue: str
    pending: int
    running: int
    oldest_queued_age_s: float = Field(description="Seconds; 0 when nothing is queued.")
    enqueued_total: int | None = Field(description="Tasks ever enqueued on the queue, when the store knows.")
    workers: int


class Queues(Body):
    queues: list[QueueView]


class ErrorDetail(Body):
    code: str
    message: str


class Health(Body):
    model_config = published({"status": "ok", "backend": "embedded"})

    status: Literal["ok", "unavailable"]
    backend: str = Field(description="embedded or clearml.")
    error: ErrorDetail | None = Field(default=None, description="Why the task store is unavailable (503 only).")


# -- registries ------------------------------------------------------------------------------------
class ModelVersion(Body):
    algorithm: str
    version: str
    uri: str
    sha256: str
    size: int = Field(description="Bytes.")
    notes: str
    registered_at: str | None = Field(description=ISO)
    registered_by: str
    promoted: bool


class AuditEntry(Body):
    algorithm: str
    action: Literal["register", "promote", "rollback"]
    from_version: str | None
    to_version: str | None
    by: str
    at: str | None = Field(description=ISO)


class ModelRegistry(Body):
    algorithm: str
    promoted: str | None = Field(description="The version new tasks run; null: the algorithm's bundled weights.")
    versions: list[ModelVersion]
    history: list[AuditEntry] = Field(description="The audit trail, oldest first.")


class ModelChange(ModelRegistry):
    changed: bool = Field(description="False when the version was promoted already.")
    audit: AuditEntry | None


class AlgorithmVersion(Body):
    name: str
    version: str
    sha256: str = Field(description="Of the bundle.")
    size: int = Field(description="Bytes of the bundle.")
    uri: str
    queue: str
    descriptor: dict[str, Any] = Field(description="The descriptor as registered (scantide-algorithm.yaml).")
    registered_at: str | None = Field(description=ISO)
    registered_by: str
    runner: RunnerName


class RegisteredAlgorithm(AlgorithmVersion):
    created: bool = Field(description="False: this content was registered already (answered 200).")


class Algorithm(Body):
    name: str
    version: str = Field(description="The newest version.")
    runner: RunnerName
    description: str
    queue: str
    registered_at: str | None = Field(description=ISO)
    latest: str
    versions: list[AlgorithmVersion]


class Algorithms(Body):
    algorithms: list[Algorithm]


class Blob(Body):
    uri: str = Field(description="Submit it as a scan_uri.")
    sha256: str
    size: int = Field(description="Bytes.")


class PipelineVersion(Body):
    name: str
    version: str
    sha256: str = Field(description="Of the canonical descriptor JSON.")
    descriptor: dict[str, Any] = Field(description="The descriptor as registered (scantide-pipeline.yaml).")
    registered_at: str | None = Field(description=ISO)
    registered_by: str


class RegisteredPipeline(PipelineVersion):
    created: bool = Field(description="False: this descriptor was registered already (answered 200).")


class Pipeline(Body):
    name: str
    latest: str
    versions: list[PipelineVersion]


class Pipelines(Body):
    pipelines: list[Pipeline]


class RejectionRecorded(Body):
    ref: str
    recorded: bool = Field(description="False: this ref was reported already (answered 200).")
