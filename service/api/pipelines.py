"""The pipeline endpoints: list and show pipelines (``read``), register one (``register``), follow a
run (``read``) and retry a failed one (``enqueue``). Runs are started by ``POST /v1/scans`` with
``pipeline`` (see ``service.api.app``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from service.api import schemas
from service.api.auth import TokenAuth
from service.api.responses import AUTH, STORE, errors, security
from service.catalog.descriptor import load_data
from service.catalog.pipeline import parse_pipeline
from service.errors import (
    InvalidPipeline,
    PipelineNotFound,
    PipelineVersionExists,
    RunNotFound,
    RunNotRetryable,
    UnsupportedMediaType,
)
from service.pipelines.runs import register, retry_run
from service.pipelines.store import PipelineStore, PipelineVersion, Run
from service.pipelines.targets import Targets

CONTENT_TYPES = {"application/json": "pipeline.json", "application/yaml": "pipeline.yaml",
                 "application/x-yaml": "pipeline.yaml", "text/yaml": "pipeline.yaml"}


def run_links(run: Run) -> dict[str, str]:
    return {"run": f"/v1/runs/{run.run_id}", "retry": f"/v1/runs/{run.run_id}/retry"}


def run_submission_body(run: Run, created: bool) -> dict[str, Any]:
    """The answer to ``POST /v1/scans`` with a pipeline."""
    return {"run_id": run.run_id, "scan_id": run.scan_id, "pipeline": run.pipeline, "version": run.version,
            "state": run.state, "created": created, "links": run_links(run)}


def pipeline_body(versions: list[PipelineVersion]) -> dict[str, Any]:
    latest = max(versions, key=lambda v: v.registered_at)
    return {"name": latest.name, "latest": latest.version, "versions": [v.to_dict() for v in versions]}


def pipelines_router(store: PipelineStore, targets: Targets, auth: TokenAuth) -> APIRouter:
    router = APIRouter(tags=["pipelines"])

    @router.get("/v1/pipelines", dependencies=[Depends(auth.require("read"))], summary="Registered pipelines",
                response_model=schemas.Pipelines, responses=errors(*AUTH))
    def list_pipelines() -> dict[str, Any]:
        by_name: dict[str, list[PipelineVersion]] = {}
        for v in store.listing():
            by_name.setdefault(v.name, []).append(v)
        return {"pipelines": [pipeline_body(vs) for _, vs in sorted(by_name.items())]}

    @router.get("/v1/pipelines/{name}", dependencies=[Depends(auth.require("read"))], response_model=schemas.Pipeline,
                responses=errors(*AUTH, PipelineNotFound),
                summary="One pipeline: every registered version with its descriptor")
    def show_pipeline(name: str) -> dict[str, Any]:
        versions = store.listing(name)
        if not versions:
            raise PipelineNotFound(f"no pipeline {name!r} is registered")
        return pipeline_body(versions)

    @router.post("/v1/pipelines", status_code=201, summary="Register a pipeline version",
                 response_model=schemas.RegisteredPipeline,
                 responses={200: {"model": schemas.RegisteredPipeline,
                                  "description": "This descriptor was registered already"},
                            **errors(*AUTH, *STORE, UnsupportedMediaType, InvalidPipeline,
                                     PipelineVersionExists)},
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/yaml": {"schema": {"type": "string"}},
                     "application/json": {"schema": {"type": "object"}}}}, **security("register")},
                 description="Needs the `register` scope. The body: the descriptor (scantide-pipeline.yaml) as "
                 "YAML or JSON. 422 invalid_pipeline names every problem by field path (cycles, unknown steps or "
                 "algorithms, a when that does not parse, params a step's algorithm refuses); 409 "
                 "pipeline_version_exists for another descriptor under a registered version.")
    async def register_pipeline(request: Request, response: Response) -> dict[str, Any]:
        auth.check(request, "register")
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if kind not in CONTENT_TYPES:
            raise UnsupportedMediaType(f"content type {kind!r}: send the descriptor as application/yaml or "
                                       "application/json")
        body = await request.body()

        def check_and_register() -> tuple[PipelineVersion, bool]:
            pipeline = parse_pipeline(load_data(body, CONTENT_TYPES[kind], InvalidPipeline))
            return register(store, targets, pipeline, "api")

        version, created = await run_in_threadpool(check_and_register)
        response.status_code = 201 if created else 200
        return {**version.to_dict(), "created": created}

    @router.get("/v1/runs/{run_id}", dependencies=[Depends(auth.require("read"))], response_model=schemas.Run,
                responses=errors(*AUTH, RunNotFound),
                summary="One pipeline run: its state and each step's state, task, compute, result and error")
    def get_run(run_id: str) -> dict[str, Any]:
        run = store.get_run(run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id!r}")
        return {**run.to_dict(), "links": run_links(run)}

    @router.post("/v1/runs/{run_id}/retry", dependencies=[Depends(auth.require("enqueue"))], response_model=schemas.Run,
                 responses=errors(*AUTH, RunNotFound, RunNotRetryable),
                 summary="Run a failed run's failed and skipped steps again, keeping the completed ones",
                 description="409 run_not_retryable unless the run failed.")
    def retry(run_id: str) -> dict[str, Any]:
        run = retry_run(store, run_id)
        return {**run.to_dict(), "links": run_links(run)}

    return router
