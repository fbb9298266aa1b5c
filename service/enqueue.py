"""The one enqueue use case. The HTTP API, the CLI and the Lambda handler all go through here.

``Enqueuer.prepare`` validates a request without touching the store; ``submit_items`` then pins
each task to what the store says now and submits: the algorithm's version (the one asked for, else
the newest registered; ``algorithm_version``, ``bundle_uri``, ``bundle_sha256``), against whose
descriptor the request's ``params`` are checked (defaults applied; unknown names, wrong types and
values out of bounds refused with ``InvalidParams``) and whose queue and attempt limit the task
gets; the promoted model version of its algorithm
(``model_version``, ``model_uri``; none promoted: ``model_version`` None and no ``model_uri``, so
the algorithm uses its bundled weights) and, for a ``previous_scan_id``, that scan's outputs
(``previous_output_uri``). The promoted version is asked of the store for every batch (any cache
behind that must be exact), so a promote is seen by the very next enqueue in every process; tasks
already queued or running keep the params they were given.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from service import logs
from service.algorithms import is_blob_uri
from service.backends.base import TaskBackend
from service.domain import JobState, ScanRequest, Submission, SubmitItem, TaskInfo
from service.errors import (
    InvalidRequest,
    InvalidScanUri,
    PreviousScanNotCompleted,
    PreviousScanNotFound,
    ScanConflict,
    ScantideError,
    UnknownAlgorithm,
    invalid_input,
)
from service.scan_uri import Resolver, system_resolver, validate_scan_uri
from service.settings import Settings

if TYPE_CHECKING:
    from service.algorithms import AlgorithmVersion
    from service.catalog import AlgorithmDescriptor
    from service.models import ModelVersion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Enqueuer:
    """Turns scan requests into submit items. Built once per process: roots are resolved here, not
    per request."""

    default_algorithm: str
    data_root: Path  # resolved
    output_root: str  # resolved local path, or a URL prefix such as s3://bucket/outputs
    allowed_hosts: tuple[str, ...] = ()
    resolver: Resolver = system_resolver

    @classmethod
    def from_settings(cls, settings: Settings, resolver: Resolver = system_resolver) -> Enqueuer:
        return cls(default_algorithm=settings.default_algorithm, data_root=Path(settings.data_root).resolve(),
                   output_root=settings.output_root_uri, allowed_hosts=tuple(settings.allowed_scan_hosts), resolver=resolver)

    def output_uri(self, algorithm: str, scan_id: str) -> str:
        """Where a task's outputs go: ``<output_root>/<algorithm>/<scan_id>``."""
        return f"{self.output_root}/{algorithm}/{scan_id}"

    def prepare(self, request: ScanRequest) -> SubmitItem:
        """Validate a request; raises ``InvalidRequest`` subclasses for bad input. The item carries
        the request id bound where it is prepared (``service.logs``), for its task to keep."""
        algorithm = request.algorithm or self.default_algorithm
        scan_uri = validate_scan_uri(request.scan_uri, data_root=self.data_root, allowed_hosts=self.allowed_hosts,
                                     resolver=self.resolver)
        output_uri = self.output_uri(algorithm, request.scan_id)
        params = {
            "scan_id": request.scan_id,
            "scan_uri": scan_uri,
            "output_uri": output_uri,
            "model_version": None,
            "algorithm_version": request.algorithm_version,
            "metadata": request.metadata or {},
        }
        if request.previous_scan_id is not None:
            if request.previous_scan_id == request.scan_id:
                raise InvalidRequest("previous_scan_id names this very scan: give an earlier scan's id")
            params["previous_scan_id"] = request.previous_scan_id
        return SubmitItem(algorithm=algorithm, scan_id=request.scan_id, params=params, output_uri=output_uri,
                          user_params=request.params,
                          scan_is_blob=is_blob_uri(scan_uri, self.output_root, self.data_root),
                          request_id=logs.current("request_id"))


def pin(backend: TaskBackend, items: list[SubmitItem]) -> list[SubmitItem | ScantideError]:
    """Each item pinned to its algorithm version (params checked, queue and attempt limit set), with
    the promoted model of its algorithm and its previous scan's outputs in its params, or the error
    that refuses it. One version read and one promoted-model read per algorithm per call."""
    versions: dict[tuple[str, str | None], AlgorithmVersion | ScantideError] = {}
    promoted: dict[str, ModelVersion | None] = {}
    out: list[SubmitItem | ScantideError] = []
    for item in items:
        key = (item.algorithm, item.params.get("algorithm_version"))
        if key not in versions:
            versions[key] = _algorithm_version(backend, *key)
        version = versions[key]
        try:
            if isinstance(version, ScantideError):
                raise version
            item = _with_version(item, version)
        except ScantideError as exc:
            out.append(exc)
            continue
        if item.algorithm not in promoted:
            promoted[item.algorithm] = backend.promoted_model(item.algorithm)
        model = promoted[item.algorithm]
        params = {**item.params, "model_version": model.version if model else None}
        if model is not None:
            params["model_uri"] = model.uri
        previous = params.get("previous_scan_id")
        if previous:
            try:
                params["previous_output_uri"] = previous_output_uri(backend, item.algorithm, previous)
            except ScantideError as exc:
                out.append(exc)
                continue
        out.append(replace(item, params=params))
    return out


def _algorithm_version(backend: TaskBackend, name: str, version: str | None) -> AlgorithmVersion | ScantideError:
    found = backend.algorithm_version(name, version) if version else backend.latest_algorithm(name)
    if found is not None:
        return found
    if version and backend.latest_algorithm(name) is not None:
        known = ", ".join(v.version for v in backend.list_algorithms(name))
        return UnknownAlgorithm(f"algorithm {name!r} has no version {version!r}; registered: {known}")
    known = ", ".join(sorted({v.name for v in backend.list_algorithms()})) or "none"
    return UnknownAlgorithm(f"unknown algorithm {name!r}; registered: {known} (register one with "
                            "`scantide algorithms register FOLDER`)")


def _with_version(item: SubmitItem, version: AlgorithmVersion) -> SubmitItem:
    """The item pinned to ``version``: its params checked against the descriptor (defaults
    applied), its scan's kind checked, the bundle named, the queue and attempt limit set."""
    spec = version.spec
    params = spec.validate_params(item.user_params)
    scan_uri = str(item.params["scan_uri"])
    if spec.runner == "python-function" and not item.scan_is_blob:
        raise InvalidScanUri(f"scan_uri: {spec.name} is a Python function, whose input a worker unpickles: it takes "
                             "only an input uploaded with POST /v1/blobs (the register scope), as Knot.map does")
    if (item.params.get("step_inputs") or {}).get("scan", True):  # a pipeline step may not read the scan
        check_scan(spec, scan_uri)
    pinned = {**params, **item.params, "algorithm_version": version.version, "bundle_uri": version.uri,
              "bundle_sha256": version.sha256}
    return replace(item, params=pinned, queue=version.queue, max_attempts=spec.resources.max_attempts,
                   user_params=None)


def check_scan(spec: AlgorithmDescriptor, scan_uri: str) -> None:
    """Refuse a scan ``spec`` does not take: another kind by its extension, or (under the data root,
    where its size can be seen) larger than its ``inputs.max_bytes``."""
    name = scan_uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    if not spec.inputs.accepts(name):
        raise InvalidScanUri(f"scan_uri: {spec.name} takes {' or '.join(spec.inputs.kinds)} files, and {name!r} "
                             "is none by its extension")
    if spec.inputs.max_bytes is not None and "://" not in scan_uri:
        size = Path(scan_uri).stat().st_size if Path(scan_uri).is_file() else 0
        if size > spec.inputs.max_bytes:
            raise InvalidScanUri(f"scan_uri: the scan is {size} bytes; {spec.name} takes at most "
                                 f"{spec.inputs.max_bytes}")


def previous_output_uri(backend: TaskBackend, algorithm: str, scan_id: str) -> str:
    """Where the completed ``algorithm`` task of an earlier scan wrote its outputs."""
    task = next((t for t in backend.tasks_for_scan(scan_id) if t.algorithm == algorithm), None)
    if task is None:
        raise PreviousScanNotFound(f"previous_scan_id {scan_id!r}: no such scan was analysed with {algorithm!r}; "
                                   "submit it first, or drop previous_scan_id")
    if task.state is not JobState.completed:
        raise PreviousScanNotCompleted(f"previous_scan_id {scan_id!r}: its {algorithm!r} task is {task.state.value}, "
                                       "not completed; submit this scan again once it has completed")
    return task.output_uri


def submit_items(backend: TaskBackend, items: list[SubmitItem]) -> list[Submission | ScantideError]:
    """Pin and submit several items (one ``submit_many``); each gets its submission or its error, in order."""
    pinned = pin(backend, items)
    ready = [p for p in pinned if isinstance(p, SubmitItem)]
    submitted = iter(backend.submit_many(ready) if ready else [])
    out: list[Submission | ScantideError] = []
    for item in pinned:
        outcome = next(submitted) if isinstance(item, SubmitItem) else item
        if isinstance(outcome, Submission) and not outcome.created and isinstance(item, SubmitItem):
            outcome = conflict(item, outcome) or outcome
        out.append(outcome)
    return out


# What a repeat of a scan_id may differ in: versions and derived inputs resolved anew at each request.
RESOLVED_PARAMS = frozenset({"model_version", "model_uri", "algorithm_version", "bundle_uri", "bundle_sha256",
                             "previous_output_uri", "output_uri"})


def conflict(item: SubmitItem, existing: Submission) -> ScanConflict | None:
    """Refuse a repeat of ``item``'s (algorithm, scan_id) that asks for something else than the task
    already made: another scan_uri, other params or other metadata."""
    asked = {k: v for k, v in item.params.items() if k not in RESOLVED_PARAMS}
    made = {k: v for k, v in existing.task.params.items() if k not in RESOLVED_PARAMS}
    differ = sorted(k for k in asked.keys() | made.keys() if asked.get(k) != made.get(k))
    if not differ:
        return None
    return ScanConflict(f"scan {item.scan_id!r} was submitted to {item.algorithm} as task {existing.task.task_id} "
                        f"with other {', '.join(differ)}: a repeat must ask for the same thing; give a changed scan "
                        "a new scan_id")


def submit_item(backend: TaskBackend, item: SubmitItem) -> Submission:
    """Pin and submit one item; raises its error."""
    (outcome,) = submit_items(backend, [item])
    if isinstance(outcome, ScantideError):
        raise outcome
    log_submission(outcome)
    return outcome


def parse_scan_request(body: bytes) -> ScanRequest:
    """A ``ScanRequest`` from JSON bytes; raises ``MalformedJson`` or ``InvalidRequest``.

    Stricter than pydantic's JSON parser, which takes ``NaN``, ``Infinity`` and ``-Infinity`` and
    reads ``1e999`` as infinity: JSON has no such numbers, and echoed in a webhook they would make
    its body invalid JSON. Numbers of more than 4,300 digits (the parser's limit, and Python's for
    ``int``) are refused as too long rather than as malformed JSON."""
    try:
        scan = ScanRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = list(exc.errors(include_input=False))
        out_of_range = next((e for e in errors if e.get("type") == "json_invalid"
                             and str(e.get("ctx", {}).get("error", "")).startswith("number out of range")), None)
        if out_of_range is not None:
            where = str(out_of_range["ctx"]["error"]).removeprefix("number out of range").strip()
            raise InvalidRequest(f"a number in the body ({where}) is out of range: it has more than "
                                 f"{_MAX_NUMBER_DIGITS} digits; send long numbers as strings") from None
        raise invalid_input(errors) from None
    _refuse_non_finite(scan)
    return scan


_MAX_NUMBER_DIGITS = 4300  # jiter's limit, whatever sys.set_int_max_str_digits says


def _refuse_non_finite(scan: ScanRequest) -> None:
    """Raise ``InvalidRequest`` naming the first NaN or infinity in the free-form fields (every other
    field is a string, which pydantic has already checked)."""
    stack: list[tuple[str, Any]] = [("params", scan.params), ("metadata", scan.metadata)]
    while stack:  # a loop, not recursion: nesting is as deep as the parser allows
        where, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequest(f"invalid request: {where} is not a finite number ({value}): JSON has no NaN or "
                                 "Infinity, and numbers beyond ±1.8e308 (such as 1e999) overflow; send a finite "
                                 "number or a string")
        if isinstance(value, dict):
            stack.extend((f"{where}.{key}", item) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in reversed(list(enumerate(value))))


def scan_request_from(data: Any) -> ScanRequest:
    """A ``ScanRequest`` from already-decoded JSON; raises ``InvalidRequest``."""
    try:
        return ScanRequest.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(list(exc.errors())) from None


def task_links(task: TaskInfo) -> dict[str, str]:
    """The HTTP API paths of a task and of its scan."""
    return {"task": f"/v1/tasks/{task.task_id}", "scan": f"/v1/scans/{task.scan_id}"}


def submission_body(submission: Submission) -> dict[str, Any]:
    """The answer to an enqueue request, as the HTTP API and the Lambda's API Gateway route give it."""
    task = submission.task
    return {"task_id": task.task_id, "scan_id": task.scan_id, "algorithm": task.algorithm,
            "state": task.state.value, "created": submission.created, "links": task_links(task)}


def log_submission(submission: Submission) -> None:
    task = submission.task
    log.info("scan_submitted scan_id=%s algorithm=%s task_id=%s created=%s", task.scan_id, task.algorithm,
             task.task_id, submission.created)


def submit_scan(
    backend: TaskBackend, settings: Settings, request: ScanRequest, *, resolver: Resolver = system_resolver
) -> Submission:
    """Validate a scan request and enqueue its task; a repeat returns the existing task.

    Raises ``InvalidRequest`` subclasses for bad input (``PreviousScanNotFound`` among them),
    ``PreviousScanNotCompleted`` and ``BackendUnavailable`` when the task store cannot be reached.
    """
    return submit_item(backend, Enqueuer.from_settings(settings, resolver).prepare(request))
