"""The algorithm-registry endpoints: list and show (``read``), register an algorithm's folder
(``register``: it decides what code workers run), and upload an input (``register`` too: a
``Knot`` call's pickled argument, which a worker unpickles; stored content-addressed, returned as a
URI to submit as a scan)."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUpload

from service.algorithms import AlgorithmVersion, blob_uri, register_files
from service.api.auth import TokenAuth
from service.api.responses import AUTH, STORAGE, STORE, errors, security
from service.api.schemas import Algorithm, Algorithms, Blob, RegisteredAlgorithm
from service.backends.base import TaskBackend
from service.bundles import read_upload
from service.errors import (
    AlgorithmNotFound,
    AlgorithmVersionExists,
    InvalidBundle,
    InvalidDescriptor,
    InvalidRequest,
    MalformedRequest,
    RunnerUnavailable,
)
from service.settings import Settings


def algorithm_body(versions: list[AlgorithmVersion]) -> dict[str, Any]:
    """One algorithm: its newest version's summary and every version in full."""
    latest = max(versions, key=lambda v: v.registered_at)
    return {**latest.summary(), "latest": latest.version, "versions": [v.to_dict() for v in versions]}


def algorithms_router(backend: TaskBackend, settings: Settings, auth: TokenAuth) -> APIRouter:
    router = APIRouter(tags=["algorithms"])

    @router.get("/v1/algorithms", dependencies=[Depends(auth.require("read"))], response_model=Algorithms,
                responses=errors(*AUTH, *STORE),
                summary="Registered algorithms: each one's newest version")
    def list_algorithms() -> dict[str, Any]:
        by_name: dict[str, list[AlgorithmVersion]] = {}
        for v in backend.list_algorithms():
            by_name.setdefault(v.name, []).append(v)
        return {"algorithms": [algorithm_body(vs) for _, vs in sorted(by_name.items())]}

    @router.get("/v1/algorithms/{name}", dependencies=[Depends(auth.require("read"))], response_model=Algorithm,
                responses=errors(*AUTH, *STORE, AlgorithmNotFound),
                summary="One algorithm: every registered version with its descriptor")
    def show_algorithm(name: str) -> dict[str, Any]:
        versions = backend.list_algorithms(name)
        if not versions:
            raise AlgorithmNotFound(f"no algorithm {name!r} is registered")
        return algorithm_body(versions)

    @router.post("/v1/algorithms", status_code=201, summary="Register an algorithm version from its folder",
                 response_model=RegisteredAlgorithm,
                 responses={200: {"model": RegisteredAlgorithm, "description": "This content was registered already"},
                            **errors(*AUTH, *STORE, *STORAGE, MalformedRequest, InvalidRequest,
                                     InvalidBundle, InvalidDescriptor, RunnerUnavailable, AlgorithmVersionExists)},
                 openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                     "type": "object", "required": ["bundle"],
                     "properties": {"bundle": {"type": "string", "format": "binary"}}}}}}, **security("register")},
                 description="Needs the `register` scope. Multipart field `bundle`: the folder (descriptor at its "
                 "top) as a tar.gz. 422 invalid_descriptor names every problem by field path; 409 "
                 "algorithm_version_exists for other content under a registered version; 422 runner_unavailable "
                 "for a container algorithm where no container engine runs.")
    async def register(request: Request, response: Response) -> dict[str, Any]:
        auth.check(request, "register")  # before a byte of the upload is read
        form = await request.form(max_files=1, max_fields=1)
        upload = form.get("bundle")
        if not isinstance(upload, StarletteUpload):
            raise InvalidRequest("send the algorithm's folder as the multipart file field `bundle` (a tar.gz)")
        data = await upload.read()
        files = await run_in_threadpool(read_upload, data, settings.max_bundle_bytes)
        version, created = await run_in_threadpool(register_files, backend, settings, files,
                                                   by=auth.identity(request))
        response.status_code = 201 if created else 200
        return {**version.to_dict(), "created": created}

    @router.post("/v1/blobs", status_code=201, summary="Upload an input (a pickled argument) to submit as a scan",
                 description="Needs the `register` scope: a blob is a `Knot` call's cloudpickled argument, which a "
                 "worker unpickles, so it is code like a registered function. Only a blob URI may be submitted as a "
                 "function algorithm's scan.",
                 response_model=Blob, responses=errors(*AUTH, *STORAGE, InvalidRequest),
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                     **security("register")})
    async def upload_blob(request: Request) -> dict[str, Any]:
        auth.check(request, "register")
        data = await request.body()
        if not data:
            raise InvalidRequest("the body is empty: send the input's bytes")
        digest = hashlib.sha256(data).hexdigest()
        uri = blob_uri(settings.output_root_uri, Path(settings.data_root).resolve(), digest)  # type: ignore[arg-type]
        await run_in_threadpool(_store, settings, data, uri)
        return {"uri": uri, "sha256": digest, "size": len(data)}

    return router


def _store(settings: Settings, data: bytes, uri: str) -> None:
    from service.storage import storage_for

    storage = storage_for(uri, settings)
    if storage.exists(uri):  # content-addressed: the same bytes are there already
        return
    with tempfile.TemporaryDirectory(prefix="scantide-blob-") as tmp:
        local = Path(tmp) / "blob"
        local.write_bytes(data)
        storage.put_file(local, uri)
