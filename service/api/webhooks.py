"""The webhook events ``scantide monitor`` posts, described under OpenAPI 3.1 ``webhooks``: one
operation per event type, its body the event, its headers the Standard Webhooks ones.

These models describe what ``monitor.events`` builds (``service`` imports nothing of ``monitor``);
``tests/test_openapi.py`` validates events the monitor builds against them. They forbid fields
they do not name, except an output's links by role, which the algorithm names.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI, Header
from pydantic import BaseModel, ConfigDict, Field, create_model

from service.api.schemas import ISO, ErrorDetail, RunState, StepState, TaskErrorBody
from service.domain import JobState

SCAN_EVENTS = ("scan.completed", "scan.failed", "scan.stalled")


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LinkError(Payload):
    file: str
    code: str
    message: str


class ScanOutputs(BaseModel):
    """Links to a completed task's outputs. Besides ``uri``, ``files``, ``figures`` and
    ``link_errors``: a link (or a list of links) per role the algorithm named, such as ``summary``,
    ``contact_sheet`` and ``keyframes``. A link that could not be made is null, and
    ``link_errors`` (present only then) says why."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, str | list[str | None] | None]

    uri: str = Field(description="The output base.")
    files: dict[str, str | None] = Field(default_factory=dict, description="Every output file → its link.")
    figures: dict[str, Any] = Field(description="The result's summary, else result.json's plain values.")
    link_errors: list[LinkError] | None = None


class Timings(Payload):
    queued_at: str | None = Field(description=ISO)
    started_at: str | None = Field(description=ISO)
    finished_at: str | None = Field(description=ISO)


class Stall(Payload):
    reason: Literal["no_heartbeat", "max_runtime", "queued_too_long"]
    detail: str


class ScanData(Payload):
    scan_id: str
    task_id: str
    algorithm: str
    attempt: int
    state: JobState
    outputs: ScanOutputs | None = Field(description="scan.completed only.")
    error: TaskErrorBody | None = Field(description="scan.failed: why (code no_result: completed without a result).")
    timings: Timings
    model_version: str | None
    metadata: dict[str, Any] = Field(description="As submitted: opaque to scantide.")
    request_id: str | None = Field(default=None, description="The X-Request-ID of the request that submitted it "
                                   "(null: submitted otherwise), as every log line about it carries.")
    stall: Stall | None = Field(default=None, description="scan.stalled only.")


class BacklogData(Payload):
    queue: str
    status: Literal["breached", "recovered"]
    oldest_queued_age_s: float = Field(description="Seconds.")
    pending: int
    slo_s: float = Field(description="SCANTIDE_BACKLOG_SLO_S, seconds.")


class LaunchFailedData(Payload):
    pool: str
    reason: str
    option: dict[str, Any] | None = Field(description="The instance option that failed (type, market, price …); "
                                          "null when no option was left to try.")
    at: str | None = Field(description=ISO)


class StepOutputs(Payload):
    uri: str
    files: dict[str, str | None]
    link_errors: list[LinkError] | None = None


class StepOutcome(Payload):
    state: StepState
    task_id: str | None
    algorithm: str
    version: str
    compute: str
    bytes_moved: int
    outputs: StepOutputs | None = None
    figures: dict[str, Any] | None = None
    error: dict[str, Any] | None = Field(default=None, description="{code, message, log_tail} of a failed step.")


class PipelineData(Payload):
    run_id: str
    pipeline: str
    version: str
    scan_id: str
    state: RunState
    retries: int
    error: dict[str, Any] | None = Field(description="{step, code, message, log_tail} of a failed run.")
    steps: dict[str, StepOutcome]
    metadata: dict[str, Any]
    request_id: str | None = Field(default=None, description="The X-Request-ID of the request that submitted it "
                                   "(null: submitted otherwise), as every log line about it carries.")


class DegradedData(Payload):
    what: Literal["output_links"]
    status: Literal["degraded", "recovered"]
    error: ErrorDetail | None = Field(description="The first failure; null on recovery.")


class RejectedData(Payload):
    scan_id: str | None
    scan_uri: str | None
    source: Literal["s3", "sqs"]
    ref: str = Field(description="The object version or message id.")
    error: ErrorDetail


def _event(name: str, types: tuple[str, ...], data: type[BaseModel]) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "__config__": ConfigDict(extra="forbid"),
        "__doc__": f"The body of {', '.join(types)} (the signed bytes).",
        "id": (str, Field(pattern=r"^evt_[0-9a-f]{32}$", description="Also the webhook-id header.")),
        "type": (Literal[types], ...),  # type: ignore[valid-type]
        "created_at": (str, Field(description=f"When it happened, {ISO}.")),
        "data": (data, ...),
    }
    return create_model(name, **fields)


ScanEvent = _event("ScanEvent", SCAN_EVENTS, ScanData)
BacklogEvent = _event("BacklogEvent", ("queue.backlog",), BacklogData)
LaunchFailedEvent = _event("LaunchFailedEvent", ("fleet.launch_failed",), LaunchFailedData)
PipelineEvent = _event("PipelineEvent", ("pipeline.completed", "pipeline.failed"), PipelineData)
DegradedEvent = _event("DegradedEvent", ("monitor.degraded",), DegradedData)
RejectedEvent = _event("RejectedEvent", ("scan.rejected",), RejectedData)

# Each event type, the model of its body and when it is sent.
EVENTS: dict[str, tuple[type[BaseModel], str]] = {
    "scan.completed": (ScanEvent, "The task completed and recorded its result: outputs and figures."),
    "scan.failed": (ScanEvent, "The task failed or was stopped, or completed without a result (no_result)."),
    "scan.stalled": (ScanEvent, "Running without a heartbeat, past its runtime limit, or queued too long; once "
                                "per task, attempt and reason."),
    "queue.backlog": (BacklogEvent, "A queue's oldest task is older than the SLO (breached), and back under it "
                                    "(recovered)."),
    "fleet.launch_failed": (LaunchFailedEvent, "The autoscaler could not start an instance for a pool."),
    "pipeline.completed": (PipelineEvent, "A pipeline run completed: each step's outputs."),
    "pipeline.failed": (PipelineEvent, "A pipeline run failed: the failed step's error."),
    "monitor.degraded": (DegradedEvent, "The monitor cannot link outputs (degraded), and can again (recovered)."),
    "scan.rejected": (RejectedEvent, "The Lambda refused an upload or message (consumed, never retried)."),
}

DELIVERY = ("POSTed to SCANTIDE_WEBHOOK_URL, signed per Standard Webhooks (docs/webhooks.md). Delivery is at "
            "least once and in order per scan: act once per webhook-id. A 2xx answer delivers; 408, 429 "
            "(Retry-After honoured), 5xx and timeouts are retried with backoff for up to 24 h; any other 4xx "
            "sends the event to the dead letters.")


def install_webhooks(app: FastAPI) -> None:
    """Describe every event type under ``app.webhooks`` (nothing is served: scantide sends them)."""
    for name, (model, when) in EVENTS.items():
        _describe(app, name, model, when)


def _describe(app: FastAPI, name: str, model: type[BaseModel], when: str) -> None:
    def receive(
        event: Any,
        webhook_id: str = Header(alias="webhook-id", description="The event's id, the same on every retry."),
        webhook_timestamp: str = Header(alias="webhook-timestamp", description="Unix seconds of this attempt."),
        webhook_signature: str = Header(alias="webhook-signature", description=(
            "v1,<base64 HMAC-SHA256(key, '<webhook-id>.<webhook-timestamp>.<raw body>')>, space-separated when "
            "several.")),
    ) -> None:
        """Never called: the signature documents the request."""

    receive.__annotations__["event"] = model  # the body's model (annotations here are strings)
    app.webhooks.post(name, operation_id=name.replace(".", "_"), summary=when, description=DELIVERY, tags=["webhooks"],
                      responses={200: {"description": "Delivered (any 2xx)."}})(receive)
