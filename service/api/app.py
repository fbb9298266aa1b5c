"""FastAPI app: enqueue scans, read tasks, scans and queues. OpenAPI at /docs and /openapi.json."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from service.api.algorithms import algorithms_router
from service.api.auth import TokenAuth
from service.api.batching import SubmitBatcher
from service.api.errors import install_error_handlers
from service.api.limits import BodySizeLimit
from service.api.metrics import install_metrics
from service.api.models import models_router
from service.api.pipelines import pipelines_router, run_links, run_submission_body
from service.api.ratelimit import install_rate_limit
from service.api.rejections import rejections_router
from service.api.request_ids import install_request_ids
from service.api.responses import AUTH, JSON_BODY, STORE, errors, install_openapi, security
from service.api.schemas import Health, Queues, RetriedScan, RunSubmitted, Scan, Submitted, Task
from service.api.status import status_router
from service.api.tasks import tasks_router
from service.api.webhooks import install_webhooks
from service.backends import open_backend
from service.backends.base import TaskBackend
from service.domain import JobState, ScanRequest
from service.enqueue import (
    Enqueuer,
    log_submission,
    parse_scan_request,
    submission_body,
    task_links,
)
from service.errors import (
    BackendUnavailable,
    ForbiddenScanUri,
    InvalidParams,
    InvalidRequest,
    InvalidScanUri,
    MalformedJson,
    NotSupported,
    PreviousScanNotCompleted,
    PreviousScanNotFound,
    ScanConflict,
    ScanMissing,
    ScanNotFound,
    ScanNotRetryable,
    TaskNotFound,
    TaskNotRetryable,
    UnknownAlgorithm,
    UnknownPipeline,
)
from service.pipelines.runs import start_run
from service.pipelines.store import PipelineStore
from service.pipelines.targets import targets_for
from service.rejections import RejectionStore
from service.scan_uri import needs_resolution
from service.settings import Settings

log = logging.getLogger(__name__)

# What POST /v1/scans refuses: the request, its scan, the algorithm and its params, or a pipeline's.
ENQUEUE_ERRORS = (MalformedJson, InvalidRequest, InvalidScanUri, ScanMissing, ForbiddenScanUri, UnknownAlgorithm,
                  InvalidParams, PreviousScanNotFound, PreviousScanNotCompleted, ScanConflict, UnknownPipeline)


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: str | None = Field(default=None, max_length=64, description="Only this algorithm's task.")


def create_app(settings: Settings, backend: TaskBackend | None = None) -> FastAPI:
    """The API over ``backend`` (opened from settings when not given)."""
    backend = backend or open_backend(settings)
    auth = TokenAuth(settings.api_tokens)
    enqueuer = Enqueuer.from_settings(settings)
    batcher = SubmitBatcher(backend)
    pipelines = PipelineStore(settings.pipelines_db)
    targets = targets_for(settings, backend)
    app = FastAPI(
        title="scantide",
        version="0.1.0",
        description="Enqueue uploaded scans for analysis (one algorithm, or a pipeline of steps) and follow "
        "their tasks and runs. Authenticate with `Authorization: Bearer <token>`; scopes: enqueue (POST "
        "/v1/scans, /v1/tasks/…/cancel, /v1/runs/…/retry), read (GET), promote (POST /v1/models/…: promote and "
        "roll back model versions), register (POST /v1/algorithms, /v1/pipelines, /v1/blobs: decides what code "
        "workers run).",
        generate_unique_id_function=lambda route: route.name,  # operationId: the handler's name
    )
    install_webhooks(app)
    install_openapi(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes,
                       larger={"/v1/algorithms": settings.max_bundle_bytes, "/v1/blobs": settings.max_blob_bytes})
    # Added last, so outermost: a token over its limit is answered before its body is read.
    install_rate_limit(app, settings.api_rate_limit_per_s, settings.api_rate_limit_burst)
    install_error_handlers(app)
    install_request_ids(app)  # around everything, whatever is added after
    app.state.backend = backend

    # The hot path: parsed and answered by hand (pydantic's JSON parser, pre-encoded response),
    # which costs a fraction of FastAPI's per-route body/dependency/response machinery. The
    # OpenAPI description is declared to match.
    @app.post("/v1/scans", status_code=202, response_model=Submitted | RunSubmitted, tags=["scans"],
              responses={200: {"model": Submitted | RunSubmitted,
                               "description": "Already submitted: the existing task or run"},
                         **errors(*AUTH, *STORE, *ENQUEUE_ERRORS)},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": ScanRequest.model_json_schema()}}}, **security("enqueue")},
              summary="Enqueue a scan (idempotent on algorithm + scan_id)")
    async def post_scan(request: Request) -> Response:
        auth.check(request, "enqueue")
        scan = parse_scan_request(await request.body())
        if scan.pipeline is not None:
            run, created = await run_in_threadpool(start_run, pipelines, targets, scan)
            log.info("run_submitted scan_id=%s pipeline=%s run_id=%s created=%s", run.scan_id, run.pipeline,
                     run.run_id, created)
            return Response(json.dumps(run_submission_body(run, created)), status_code=202 if created else 200,
                            media_type="application/json")
        if needs_resolution(scan.scan_uri):  # a DNS lookup must not block the event loop
            item = await run_in_threadpool(enqueuer.prepare, scan)
        else:
            item = enqueuer.prepare(scan)
        submission = await batcher.submit(item)
        log_submission(submission)
        return Response(json.dumps(submission_body(submission)), status_code=202 if submission.created else 200,
                        media_type="application/json")

    @app.get("/v1/scans/{scan_id}", dependencies=[Depends(auth.require("read"))], summary="Every task of a scan",
             response_model=Scan, tags=["scans"], responses=errors(*AUTH, *STORE, ScanNotFound))
    def get_scan(scan_id: str) -> dict[str, Any]:
        tasks, runs = backend.tasks_for_scan(scan_id), pipelines.runs_for_scan(scan_id)
        if not tasks and not runs:
            raise ScanNotFound(f"no scan {scan_id!r} has been submitted")
        return {"scan_id": scan_id, "tasks": [{**t.to_dict(), "links": task_links(t)} for t in tasks],
                "runs": [{**r.to_dict(), "links": run_links(r)} for r in runs]}

    @app.post("/v1/scans/{scan_id}/retry", status_code=202, dependencies=[Depends(auth.require("enqueue"))],
              response_model=RetriedScan, tags=["scans"],
              responses=errors(*AUTH, *STORE, *JSON_BODY, ScanNotFound, ScanNotRetryable, TaskNotFound,
                               TaskNotRetryable, NotSupported),
              summary="Run a scan's failed tasks again (each a new attempt; the failed run stays in its history)",
              description="Optional body `{\"algorithm\": name}`: only that algorithm's task. 404 scan_not_found; "
              "409 scan_not_retryable when no task of the scan failed or was stopped.")
    def retry_scan(scan_id: str, body: RetryRequest | None = None) -> dict[str, Any]:
        tasks = [t for t in backend.tasks_for_scan(scan_id) if body is None or body.algorithm in (None, t.algorithm)]
        if not tasks:
            raise ScanNotFound(f"no scan {scan_id!r} has been submitted"
                               + (f" to {body.algorithm}" if body is not None and body.algorithm else ""))
        ended = [t for t in tasks if t.state in (JobState.failed, JobState.stopped)]
        if not ended:
            states = ", ".join(f"{t.algorithm} {t.state.value}" for t in tasks)
            raise ScanNotRetryable(f"no task of scan {scan_id!r} failed or was stopped ({states}): nothing to retry")
        retried = [backend.retry(t.task_id) for t in ended]
        log.info("scan_retried scan_id=%s tasks=%s", scan_id, ",".join(t.task_id for t in retried))
        return {"scan_id": scan_id, "tasks": [{**t.to_dict(), "links": task_links(t)} for t in retried]}

    @app.get("/v1/tasks/{task_id}", dependencies=[Depends(auth.require("read"))], summary="One task",
             response_model=Task, tags=["tasks"], responses=errors(*AUTH, *STORE, TaskNotFound))
    def get_task(task_id: str) -> dict[str, Any]:
        task = backend.get_task(task_id)
        return {**task.to_dict(), "links": task_links(task)}

    @app.get("/v1/queues", dependencies=[Depends(auth.require("read"))], summary="Queue depth and workers",
             response_model=Queues, tags=["queues"], responses=errors(*AUTH, *STORE))
    def get_queues() -> dict[str, Any]:
        workers = backend.workers()
        out = []
        for name in backend.queues():
            stats = backend.queue_stats(name).to_dict()
            stats["workers"] = sum(1 for w in workers if w.queue == name)
            out.append(stats)
        return {"queues": out}

    @app.get("/healthz", summary="Liveness and task-store reachability (no auth)", response_model=Health,
             response_model_exclude_unset=True, tags=["health"],
             responses={503: {"model": Health, "description": "The task store cannot be reached"},
                        **errors()})
    def healthz(response: Response) -> dict[str, Any]:
        try:
            backend.queues()
        except BackendUnavailable as exc:
            response.status_code = 503
            return {"status": "unavailable", "backend": settings.backend, "error": exc.to_dict()}
        return {"status": "ok", "backend": settings.backend}

    app.include_router(models_router(backend, auth))  # after the hot path, which is matched first
    app.include_router(algorithms_router(backend, settings, auth))
    app.include_router(tasks_router(backend, settings, auth))
    app.include_router(pipelines_router(pipelines, targets, auth))
    app.include_router(rejections_router(RejectionStore(settings.rejections_db), auth))
    app.include_router(status_router(settings, backend, pipelines, auth))
    install_metrics(app, settings, backend, auth)  # last: its counter is the outermost middleware
    return app
