"""How scantide's templates and tasks are written in ClearML, and read back: pure functions over
the API's task documents.

A template is a task named ``template/<algorithm>`` tagged ``scantide-template`` in the project
``settings.clearml_project``; it stays ``created`` and is only ever cloned. A scan task is a clone
tagged ``scantide-scan``, ``scan:<scan_id>`` and ``alg:<algorithm>`` (the idempotency key).

- Hyperparameter section ``Args``: the algorithm's parameters (the template's, then the scan's:
  ``scan_id``, ``scan_uri``, ``output_uri``, ``model_version``, ``metadata``). ClearML stores
  strings: other values are written as JSON with their Python type name in ``type``.
- Section ``properties`` (ClearML's user properties): ``algorithm``, ``queue``, ``max_runtime_s``,
  ``entry_point``; a scan task adds ``scan_id``, ``output_uri``, when its algorithm sets one,
  ``max_attempts`` (runs before a lost worker fails it; else the backend's setting) and, when it
  was submitted by a request with an id, ``request_id`` (``service.logs``).
- Configuration item ``scantide-history`` (JSON): the runs that ended with a lost worker before the
  task was queued again, oldest first, ``{attempt, state, error: {code, message, log_tail},
  finished_at}``; written before ``tasks.reset``, which deletes the run's console log.
- The result: output artifact ``scantide-result`` (type JSON, the result in ``type_data.preview``).
- Runtime properties, written by the stand-in agent (``scantide worker``; see ``clearml_agent``):
  ``worker``, ``attempt``, ``lease_until``, ``heartbeat_at``, ``progress``, ``queued_at``, ``error``.
  A task run by a stock ``clearml-agent`` gets ``progress`` and ``error`` from the entry point
  (``algorithms.clearml_task``). ``progress`` is ClearML's own: a whole percentage, as
  ``Task.set_progress`` writes it and the web UI shows it.
- Script (``script``, ``container``): how a stock agent runs the task, ``python -m
  algorithms.entry`` (the template's entry point) in the worker image or a checkout of the repository.

States (docs/architecture.md#task-states): created/queued → queued, in_progress → running,
completed/published/closed → completed only with a result artifact (else failed, ``no_result``: an
agent killed by SIGTERM marks its task completed), failed → failed, stopped → stopped.

Attempt: ClearML keeps no run counter. The runtime property ``attempt`` counts runs: the stand-in
agent's claim writes it with its own run counted (and ``worker``); a re-queue after a lost worker
writes the runs so far. A real ``clearml-agent`` writes neither, so a task it started counts one
run more than its ``attempt`` says (0 when there is none).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from service.domain import JobState, TaskError, TaskInfo, Template
from service.errors import InvalidRequest

TEMPLATE_TAG = "scantide-template"
SCAN_TAG = "scantide-scan"
RESULT_ARTIFACT = "scantide-result"
ARGS = "Args"
PROPERTIES = "properties"
TASK_TYPE = "inference"
TEMPLATE_PREFIX = "template/"
HISTORY_ITEM = "scantide-history"
# What every read asks the server for (a task's console log and metrics are never needed here).
TASK_FIELDS = ["id", "name", "status", "status_reason", "status_message", "status_changed", "created", "started",
               "completed", "last_worker", "last_worker_report", "tags", "hyperparams", "runtime",
               "execution.queue", "execution.artifacts"]
TEMPLATE_FIELDS = [*TASK_FIELDS, "script", "container"]

_QUEUED = ("created", "queued")
_DONE = ("completed", "published", "publishing", "closed")
NO_RESULT = "the task ended as completed but recorded no result"
CANCELLED = "cancelled"  # the status_reason of a task stopped before it ran (ClearMLBackend.cancel)


def scan_tags(algorithm: str, scan_id: str) -> list[str]:
    return [f"scan:{scan_id}", f"alg:{algorithm}"]


# -- parameters ----------------------------------------------------------------------------------
def encode_section(section: str, values: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Values → a hyperparameter section (``{name: {section, name, value, type}}``); raises
    ``InvalidRequest`` for values that are not JSON."""
    out = {}
    for name, value in values.items():
        try:
            text = value if isinstance(value, str) else json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"task parameter {name!r} is not JSON-serialisable: {exc}") from exc
        out[name] = {"section": section, "name": name, "value": text, "type": type(value).__name__}
    return out


def decode_section(doc: dict, section: str) -> dict[str, Any]:
    items = ((doc.get("hyperparams") or {}).get(section) or {}).values()
    return {item["name"]: _decode(item) for item in items if "name" in item}


def _decode(item: dict) -> Any:
    text, kind = item.get("value") or "", item.get("type") or "str"
    if kind == "str":
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text.strip().lower() == "true" if kind == "bool" else text


def template_hyperparams(template: Template) -> dict[str, dict]:
    return {ARGS: encode_section(ARGS, template.params),
            PROPERTIES: encode_section(PROPERTIES, {"algorithm": template.name, "queue": template.queue,
                                                    "max_runtime_s": float(template.max_runtime_s),
                                                    "entry_point": template.entry_point})}


def template_from_doc(doc: dict) -> Template:
    props = decode_section(doc, PROPERTIES)
    return Template(name=props.get("algorithm") or doc["name"].removeprefix(TEMPLATE_PREFIX),
                    entry_point=props.get("entry_point", "algorithms.entry"), queue=props.get("queue", "default"),
                    params=decode_section(doc, ARGS), max_runtime_s=float(props.get("max_runtime_s", 1800.0)))


def scan_hyperparams(template_doc: dict, scan_id: str, params: dict[str, Any], output_uri: str,
                     max_attempts: int | None = None, request_id: str | None = None) -> dict:
    """The template's sections with the scan's parameters merged into ``Args``."""
    hyper = dict(template_doc.get("hyperparams") or {})
    hyper[ARGS] = {**(hyper.get(ARGS) or {}), **encode_section(ARGS, params)}
    props: dict[str, Any] = {"scan_id": scan_id, "output_uri": output_uri}
    if max_attempts is not None:
        props["max_attempts"] = max_attempts
    if request_id:
        props["request_id"] = request_id
    hyper[PROPERTIES] = {**(hyper.get(PROPERTIES) or {}), **encode_section(PROPERTIES, props)}
    return hyper


def max_attempts_of(doc: dict) -> int | None:
    """The task's own attempt limit (``properties.max_attempts``), if it has one."""
    value = _float(decode_section(doc, PROPERTIES).get("max_attempts"))
    return int(value) if value else None


def run_history(doc: dict) -> list[dict[str, Any]]:
    """The ``scantide-history`` records of a document read with ``configuration``."""
    item = (doc.get("configuration") or {}).get(HISTORY_ITEM) or {}
    runs = _json(item.get("value"))
    return runs if isinstance(runs, list) else []


def with_run(configuration: dict | None, run: dict[str, Any]) -> dict:
    """A task's whole ``configuration`` (``tasks.edit`` replaces it) with ``run`` added to its history."""
    runs = run_history({"configuration": configuration})
    item = {"name": HISTORY_ITEM, "type": "json", "value": json.dumps([*runs, run]),
            "description": "scantide: runs of this task that ended (a lost worker, a retry) before it ran again"}
    return {**(configuration or {}), HISTORY_ITEM: item}


def template_script(template: Template, current: dict | None = None, *, repository: str | None = None,
                    commit: str | None = None) -> dict[str, str]:
    """The template's ``script``: what a stock ``clearml-agent`` runs. ``current`` (the task's script
    now) keeps what an operator set there; ``repository`` / ``commit`` given here replace it."""
    script = {k: v for k, v in (current or {}).items() if v not in (None, "")}
    script.setdefault("binary", "python3")
    script.setdefault("entry_point", f"-m {template.entry_point}")  # an installed module, not a file
    script.setdefault("working_dir", ".")
    if repository is not None:
        script["repository"] = repository
    if commit is not None:
        script["version_num"] = commit
    return script


def template_container(current: dict | None = None, *, image: str | None = None) -> dict[str, str] | None:
    """The template's ``container`` (an agent started with ``--docker`` runs the task in ``image``);
    None leaves the task's container as it is."""
    if image is None:
        return None
    return {**{k: v for k, v in (current or {}).items() if v not in (None, "")}, "image": image}


def progress_text(fraction: float) -> str:
    """A runtime ``progress`` value: ClearML's whole percentage (``Task.set_progress``)."""
    return str(round(min(1.0, max(0.0, float(fraction))) * 100))


def result_artifact(result: dict[str, Any], now: float) -> dict[str, Any]:
    return {"key": RESULT_ARTIFACT, "type": "JSON", "mode": "output", "timestamp": int(now),
            "type_data": {"preview": json.dumps(result, sort_keys=True), "content_type": "application/json"}}


# -- reading tasks -------------------------------------------------------------------------------
def task_info(doc: dict) -> TaskInfo:
    props = decode_section(doc, PROPERTIES)
    runtime = doc.get("runtime") or {}
    tags = doc.get("tags") or []
    result = _result(doc)
    state, error = _state(doc, result, runtime)
    status = doc.get("status")
    agent_run = bool(doc.get("started")) and not runtime.get("worker")  # a real agent counts its run nowhere
    attempt = int(_float(runtime.get("attempt")) or 0) + agent_run
    queued_at = _float(runtime.get("queued_at"))
    if queued_at is None and status == "queued":
        queued_at = seconds(doc.get("status_changed"))
    finished_at = seconds(doc.get("completed")) if state in (JobState.completed, JobState.failed) else None
    if state is JobState.stopped or (finished_at is None and state.terminal):
        finished_at = seconds(doc.get("status_changed"))
    return TaskInfo(
        task_id=doc["id"],
        algorithm=str(props.get("algorithm") or _tag(tags, "alg:")),
        scan_id=str(props.get("scan_id") or _tag(tags, "scan:")),
        queue=str(props.get("queue") or ""),
        state=state,
        params=decode_section(doc, ARGS),
        output_uri=str(props.get("output_uri") or ""),
        attempt=attempt,
        worker_id=runtime.get("worker") or doc.get("last_worker"),
        created_at=seconds(doc.get("created")),
        queued_at=queued_at,
        started_at=seconds(doc.get("started")),
        finished_at=finished_at,
        result=result,
        error=error,
        progress=_progress(runtime.get("progress")),
        heartbeat_at=_float(runtime.get("heartbeat_at")) or seconds(doc.get("last_worker_report")),
        request_id=props.get("request_id") or None,
    )


def _state(doc: dict, result: dict | None, runtime: dict) -> tuple[JobState, TaskError | None]:
    status = doc.get("status")
    reason, message = doc.get("status_reason") or "", doc.get("status_message") or ""
    if status in _QUEUED:
        return JobState.queued, None
    if status == "in_progress":
        return JobState.running, None
    if status in _DONE:
        if result is None:
            return JobState.failed, TaskError("no_result", NO_RESULT)
        return JobState.completed, None
    if status == "stopped":
        code = ("worker_lost" if "non-responsive" in f"{reason} {message}" else
                CANCELLED if reason == CANCELLED else "stopped")
        return JobState.stopped, TaskError.make(code, message or reason or "the task was stopped")
    recorded = _json(runtime.get("error"))
    if isinstance(recorded, dict) and recorded.get("code"):
        return JobState.failed, TaskError(code=str(recorded["code"]), message=str(recorded.get("message", "")),
                                          log_tail=str(recorded.get("log_tail", "")))
    what = "failed" if status == "failed" else f"is in the unknown ClearML status {status!r}"
    return JobState.failed, TaskError.make("task_failed", message or reason or f"the task {what}")


def _result(doc: dict) -> dict | None:
    artifacts = (doc.get("execution") or {}).get("artifacts") or []
    for artifact in artifacts.values() if isinstance(artifacts, dict) else artifacts:  # old servers: a dict
        if artifact.get("key") == RESULT_ARTIFACT and artifact.get("mode", "output") == "output":
            value = _json((artifact.get("type_data") or {}).get("preview"))
            return value if isinstance(value, dict) else {"uri": artifact.get("uri")}
    return None


def _progress(value: Any) -> float | None:
    percent = _float(value)
    return None if percent is None else min(1.0, max(0.0, percent / 100))


def _tag(tags: list[str], prefix: str) -> str:
    return next((t[len(prefix):] for t in tags if t.startswith(prefix)), "")


def _json(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


# -- time ------------------------------------------------------------------
def parse_time(value: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(value)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def seconds(value: str | None) -> float | None:
    """A server timestamp (ISO-8601; naive means UTC) → unix seconds."""
    return parse_time(value).timestamp() if value else None
