"""Webhook events: built from task changes and alerts, as data, validated when built.

Event ids are deterministic (a hash of what the event is about), so an event built twice, by a
restarted monitor or a replay, carries the same id and receivers can drop duplicates.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.domain import Change, JobState, TaskInfo, iso
from service.errors import ScantideError

if TYPE_CHECKING:
    from service.pipelines.store import Run
    from service.rejections import Rejection
    from service.settings import Settings

EVENT_TYPES = ("scan.completed", "scan.failed", "scan.stalled", "queue.backlog", "fleet.launch_failed",
               "pipeline.completed", "pipeline.failed", "monitor.degraded", "scan.rejected")

Linker = Callable[[str], str]  # output file URI → a link the platform can fetch; raises ScantideError


def local_link(uri: str) -> str:
    """Local outputs are linked as file:// URLs; anything with a scheme is passed through."""
    return uri if "://" in uri else Path(uri).as_uri()


def linker_for(settings: Settings) -> Linker:
    """s3:// outputs become presigned GET URLs valid ``settings.presign_ttl_s`` seconds (one S3 client
    per process); everything else is linked as ``local_link`` does. A link is made when its event is
    built and stored in the outbox, so the TTL counts from then, retries included."""
    from service.storage import storage_for

    def link(uri: str) -> str:
        if uri.startswith("s3://"):
            return storage_for(uri, settings).link(uri, settings.presign_ttl_s)
        return local_link(uri)

    return link


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    key: str  # delivery order is kept per key: "scan:<id>" or "queue:<name>"
    created_at: float  # unix seconds, from the store's clock where there is one
    data: dict[str, Any]

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}")
        if not self.id.startswith("evt_"):
            raise ValueError(f"event id {self.id!r} must start with evt_")

    def body(self) -> bytes:
        """The exact bytes that are signed and posted."""
        return json.dumps({"id": self.id, "type": self.type, "created_at": iso(self.created_at), "data": self.data},
                          separators=(",", ":"), sort_keys=True).encode()


def event_id(*parts: object) -> str:
    return "evt_" + hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:32]


def _timings(task: TaskInfo) -> dict[str, str | None]:
    return {"queued_at": iso(task.queued_at), "started_at": iso(task.started_at), "finished_at": iso(task.finished_at)}


RESULT_KEYS = ("output_uri", "outputs", "algorithm_version", "model_version", "return_pickle", "checksums")  # ours, not figures


class _Links:
    """Links to the files under one output base, each made once. A file that cannot be linked (no
    credentials, a store that refuses) is linked as None with its reason in ``errors``: an event
    is worth sending without a link, and one that could not be built would hold up every later
    change behind the watcher's cursor."""

    def __init__(self, link: Linker, base: str) -> None:
        self.link = link
        self.base = base
        self.made: dict[str, str | None] = {}
        self.errors: list[dict[str, str]] = []  # {file, code, message}, in the order first met

    def __call__(self, rel: str | None) -> str | None:
        if not rel:
            return None
        if rel not in self.made:
            try:
                self.made[rel] = self.link(f"{self.base}/{rel}")
            except ScantideError as exc:
                self.made[rel] = None
                self.errors.append({"file": rel, "code": exc.code, "message": exc.message})
        return self.made[rel]


def _outputs(task: TaskInfo, link: Linker) -> dict[str, Any] | None:
    """Links to the outputs, by the roles the algorithm named (``outputs.summary``, ``.keyframes``
    …) and every file (``files``), and the headline figures: the result's ``summary``, else the
    plain values of its result.json. ``link_errors`` lists the files that could not be linked
    (their links are None); it is there only when one could not."""
    result = task.result
    if not result:
        return None
    base = str(result.get("output_uri") or task.output_uri).rstrip("/")
    at = _Links(link, base)
    out: dict[str, Any] = {"uri": base}
    for role, value in (result.get("outputs") or {}).items():
        if role == "files":
            out["files"] = {name: at(name) for name in value}
        elif isinstance(value, list):
            out[role] = [at(v) for v in value]
        else:
            out[role] = at(value)
    figures = result.get("summary")
    out["figures"] = figures if isinstance(figures, dict) else {
        k: v for k, v in result.items() if k not in RESULT_KEYS and isinstance(v, (str, int, float, bool))}
    if at.errors:
        out["link_errors"] = at.errors
    return out


def scan_data(task: TaskInfo, state: JobState, *, outputs: dict | None = None, error: dict | None = None,
              **extra: Any) -> dict[str, Any]:
    return {
        "scan_id": task.scan_id,
        "task_id": task.task_id,
        "algorithm": task.algorithm,
        "attempt": task.attempt,
        "state": state.value,
        "outputs": outputs,
        "error": error,
        "timings": _timings(task),
        "model_version": task.params.get("model_version"),
        "metadata": task.params.get("metadata") or {},
        "request_id": task.request_id,
        **extra,
    }


def from_change(change: Change, link: Linker = local_link, *, step_events: bool = False) -> Event | None:
    """The webhook event a state change calls for, or None (queued and running need none, and the
    tasks of pipeline steps none unless ``step_events``: their run sends ``pipeline.*``)."""
    task, state = change.task, change.state
    if task.params.get("pipeline_run") and not step_events:
        return None
    eid = event_id(change.task_id, state.value, change.attempt)
    key = f"scan:{task.scan_id}"
    if state is JobState.completed:
        if not task.result:
            # The false-success guard: an agent killed by SIGTERM can mark a task completed
            # without a result; the platform must hear it failed.
            error = {"code": "no_result", "message": "the task ended as completed but recorded no result",
                     "log_tail": ""}
            return Event(eid, "scan.failed", key, change.at, scan_data(task, JobState.failed, error=error))
        return Event(eid, "scan.completed", key, change.at, scan_data(task, state, outputs=_outputs(task, link)))
    if state in (JobState.failed, JobState.stopped):
        err = task.error
        error = ({"code": err.code, "message": err.message, "log_tail": err.log_tail} if err else
                 {"code": state.value, "message": f"the task was {state.value}", "log_tail": ""})
        return Event(eid, "scan.failed", key, change.at, scan_data(task, state, error=error))
    return None


def stalled(task: TaskInfo, reason: str, detail: str, now: float) -> Event:
    """``scan.stalled``: one per task, attempt and reason."""
    return Event(event_id(task.task_id, "stalled", task.attempt, reason), "scan.stalled", f"scan:{task.scan_id}",
                 now, scan_data(task, task.state, stall={"reason": reason, "detail": detail}))


def backlog(queue: str, status: str, breach: int, oldest_age_s: float, pending: int, slo_s: float,
            now: float) -> Event:
    """``queue.backlog``: once when a queue breaches its SLO (status "breached"), once when it recovers."""
    return Event(event_id("backlog", queue, breach, status), "queue.backlog", f"queue:{queue}", now,
                 {"queue": queue, "status": status, "oldest_queued_age_s": round(oldest_age_s, 1),
                  "pending": pending, "slo_s": slo_s})


def launch_failed(entry: dict[str, Any]) -> Event:
    """``fleet.launch_failed``: the autoscaler could not start capacity for a pool on any option."""
    at = float(entry.get("at") or 0.0)
    pool = str(entry.get("pool", ""))
    reason = str(entry.get("reason", ""))
    data = {"pool": pool, "reason": reason, "option": entry.get("option"), "at": iso(at)}
    return Event(event_id("launch_failed", pool, at, reason), "fleet.launch_failed", f"pool:{pool}", at, data)


def degraded(what: str, status: str, episode: int, at: float, error: ScantideError | None = None) -> Event:
    """``monitor.degraded``: once when the monitor starts failing at ``what`` (status "degraded", with
    the first failure as ``error``), once more when it manages again ("recovered", ``error`` null)."""
    return Event(event_id("degraded", what, episode, status), "monitor.degraded", f"monitor:{what}", at,
                 {"what": what, "status": status, "error": error.to_dict() if error else None})


def pipeline_outcome(run: Run, link: Linker = local_link) -> Event:
    """``pipeline.completed`` or ``pipeline.failed``: one per run outcome (a retried run that ends
    again sends its new outcome under a new id)."""
    steps = {}
    for name, step in run.steps.items():
        entry: dict[str, Any] = {"state": step.state, "task_id": step.task_id, "algorithm": step.algorithm,
                                 "version": step.version, "compute": step.compute, "bytes_moved": step.bytes_moved}
        if step.result:
            base = str(step.result.get("output_uri", "")).rstrip("/")
            at = _Links(link, base)
            entry["outputs"] = {"uri": base, "files": {f: at(f) for f in (step.result.get("outputs") or {}).get("files", [])}}
            if at.errors:
                entry["outputs"]["link_errors"] = at.errors
            entry["figures"] = {k: v for k, v in step.result.items()
                                if k not in RESULT_KEYS and isinstance(v, (str, int, float, bool))}
        if step.error:
            entry["error"] = step.error
        steps[name] = entry
    data = {"run_id": run.run_id, "pipeline": run.pipeline, "version": run.version, "scan_id": run.scan_id,
            "state": run.state, "retries": run.retries, "error": run.error, "steps": steps,
            "metadata": run.metadata, "request_id": run.request_id}
    return Event(event_id(run.run_id, run.state, run.retries), f"pipeline.{run.state}", f"scan:{run.scan_id}",
                 run.updated_at or run.created_at, data)


def rejected(rejection: Rejection) -> Event:
    """``scan.rejected``: input the Lambda refused (consumed, never retried), once per refused record."""
    data = {"scan_id": rejection.scan_id, "scan_uri": rejection.scan_uri, "source": rejection.source,
            "ref": rejection.ref, "error": {"code": rejection.code, "message": rejection.message}}
    return Event(event_id("rejected", rejection.ref), "scan.rejected", f"scan:{rejection.scan_id or rejection.ref}",
                 rejection.at, data)
