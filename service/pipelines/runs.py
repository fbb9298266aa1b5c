"""Registering pipelines, and starting and retrying runs: what the API, the CLI and the Lambda call.

Registration checks a descriptor against the registry of every target its steps name (algorithms,
versions, params). A run pins the pipeline version and each step's algorithm version when it is
created, so a version registered later changes no run already made; enqueue refuses, before
anything is stored, what a step's algorithm would refuse.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING

from service import logs
from service.catalog.pipeline import SCAN_INPUT, PipelineDescriptor, PipelineStep, check_references, param_problems
from service.domain import ScanRequest
from service.enqueue import check_scan
from service.errors import (
    InvalidParams,
    InvalidPipeline,
    InvalidRequest,
    PipelineVersionExists,
    RunNotFound,
    RunNotRetryable,
    UnknownPipeline,
)
from service.pipelines.store import PipelineStore, PipelineVersion, Run, StepRun, new_run_id

if TYPE_CHECKING:
    from service.pipelines.targets import Targets


def descriptor_sha256(pipeline: PipelineDescriptor) -> str:
    return hashlib.sha256(json.dumps(pipeline.to_dict(), sort_keys=True).encode()).hexdigest()


def algorithm_for(targets: Targets, algorithm: str, version: str | None, compute: str | None):  # noqa: ANN201
    """The ``AlgorithmVersion`` a step runs on its target (the newest when it names no version), or None."""
    backend = targets[compute or targets.default].backend
    return backend.algorithm_version(algorithm, version) if version else backend.latest_algorithm(algorithm)


def check_pipeline(pipeline: PipelineDescriptor, targets: Targets) -> None:
    """Refuse a pipeline whose steps name algorithms, versions, params or targets the registries refuse."""
    def lookup(step: PipelineStep):  # noqa: ANN202
        found = algorithm_for(targets, step.algorithm, step.version, step.compute)
        return found.spec if found else None

    errors = check_references(pipeline, lookup, tuple(targets))
    if errors:
        raise InvalidPipeline(errors, pipeline.name)


def register(store: PipelineStore, targets: Targets, pipeline: PipelineDescriptor, by: str) -> tuple[PipelineVersion,
                                                                                                       bool]:
    """Check and record a version; the version as stored and whether it is new. The same content
    again changes nothing; other content under a taken version raises ``PipelineVersionExists``."""
    check_pipeline(pipeline, targets)
    version = PipelineVersion(name=pipeline.name, version=pipeline.version, sha256=descriptor_sha256(pipeline),
                              descriptor=pipeline.to_dict(), registered_at=time.time(), registered_by=by)
    stored, created = store.register(version)
    if stored.sha256 != version.sha256:
        raise PipelineVersionExists(f"pipeline {pipeline.name} version {pipeline.version} is registered with another "
                                    "descriptor, and a version never changes: register the change as a new version")
    return stored, created


def pipeline_version(store: PipelineStore, name: str, version: str | None) -> PipelineVersion:
    found = store.get(name, version) if version else store.latest(name)
    if found is None:
        known = sorted({p.name for p in store.listing()})
        what = f"version {version!r} of pipeline {name!r}" if version else f"pipeline {name!r}"
        raise UnknownPipeline(f"no {what} is registered; registered pipelines: {', '.join(known) or 'none'}")
    return found


def start_run(store: PipelineStore, targets: Targets, request: ScanRequest) -> tuple[Run, bool]:
    """Create the run of ``request.pipeline`` on the scan (idempotent on pipeline + scan_id: a repeat
    returns the run made first, whatever version it names): the run and whether it is new. Raises
    ``InvalidRequest`` subclasses for what enqueue refuses, before anything is stored."""
    if request.algorithm or request.algorithm_version or request.params or request.previous_scan_id:
        raise InvalidRequest("a pipeline request names no algorithm, algorithm_version, params or previous_scan_id: "
                             "each step's algorithm and params come from the pipeline's descriptor")
    existing = store.find_run(str(request.pipeline), request.scan_id)
    if existing is not None:
        return existing, False
    pv = pipeline_version(store, str(request.pipeline), request.pipeline_version)
    spec = pv.spec
    scan_uri = targets[targets.default].enqueuer.prepare(request).params["scan_uri"]
    steps: dict[str, StepRun] = {}
    for i, step in enumerate(spec.steps):
        compute = step.compute or targets.default
        if compute not in targets:
            raise InvalidRequest(f"steps[{i}].compute: this deployment has no compute target {compute!r} (known: "
                                 f"{', '.join(targets)}): configure it, or register a version of {pv.name} without it")
        found = algorithm_for(targets, step.algorithm, step.version, compute)
        if found is None:
            raise InvalidRequest(f"steps[{i}].algorithm: {step.algorithm} "
                                 f"{'version ' + step.version + ' ' if step.version else ''}is not registered on "
                                 f"compute {compute}: register it there")
        try:
            found.spec.validate_params(step.params)
        except InvalidParams as exc:  # the newest version refuses what the registered one took
            raise InvalidParams("; ".join(f"steps[{i}].{p}" for p in param_problems(exc))) from None
        if SCAN_INPUT in step.inputs:
            check_scan(found.spec, scan_uri)
        steps[step.name] = StepRun(algorithm=step.algorithm, version=found.version, compute=compute)
    run = Run(run_id=new_run_id(), pipeline=pv.name, version=pv.version, scan_id=request.scan_id, scan_uri=scan_uri,
              metadata=request.metadata or {}, steps=steps, request_id=logs.current("request_id"))
    return store.create_run(run)


def retry_run(store: PipelineStore, run_id: str) -> Run:
    """Run a failed run's failed and skipped steps again, keeping the completed ones."""
    for _ in range(10):  # the conductor may write between our read and our write
        run = store.get_run(run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id!r}")
        if run.state != "failed":
            raise RunNotRetryable(f"run {run_id} is {run.state}: only a failed run can be retried")
        for step in run.steps.values():
            if step.state in ("failed", "skipped"):
                step.state, step.task_id, step.result, step.error = "pending", None, None, None
        run.state, run.error, run.retries = "running", None, run.retries + 1
        saved = store.save_run(run)
        if saved is not None:
            return saved
    raise RunNotRetryable(f"run {run_id} kept changing while it was being retried: try again")
