"""Task endpoints beyond reading one: cancel a queued task (``enqueue``) and list a task's outputs
as links (``read``): local paths in embedded mode, presigned URLs for S3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from service.api.auth import TokenAuth
from service.api.responses import AUTH, STORAGE, STORE, errors
from service.api.schemas import Outputs, Task
from service.backends.base import TaskBackend
from service.domain import TaskInfo
from service.enqueue import task_links
from service.errors import TaskNotCancellable, TaskNotFound
from service.settings import Settings


def output_links(task: TaskInfo, settings: Settings) -> dict[str, str]:
    """Each output file of a completed task → where to get it."""
    from service.storage import is_remote, storage_for

    result = task.result or {}
    base = str(result.get("output_uri") or task.output_uri).rstrip("/")
    files = (result.get("outputs") or {}).get("files") or []
    if not is_remote(base):
        return {name: str(Path(base) / name) for name in files}
    storage = storage_for(base, settings)
    return {name: storage.link(f"{base}/{name}", settings.presign_ttl_s) for name in files}


def tasks_router(backend: TaskBackend, settings: Settings, auth: TokenAuth) -> APIRouter:
    router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

    @router.post("/{task_id}/cancel", dependencies=[Depends(auth.require("enqueue"))], response_model=Task,
                 responses=errors(*AUTH, *STORE, TaskNotFound, TaskNotCancellable),
                 summary="Cancel a queued task (it ends stopped, error code cancelled)",
                 description="409 task_not_cancellable once a worker has taken it or it has ended.")
    def cancel(task_id: str) -> dict[str, Any]:
        task = backend.cancel(task_id)
        return {**task.to_dict(), "links": task_links(task)}

    @router.get("/{task_id}/outputs", dependencies=[Depends(auth.require("read"))], response_model=Outputs,
                responses=errors(*AUTH, *STORE, *STORAGE, TaskNotFound),
                summary="A task's output files: local paths, or download links valid presign_ttl_s seconds")
    async def outputs(task_id: str) -> dict[str, Any]:
        task = await run_in_threadpool(backend.get_task, task_id)
        return {"task_id": task_id, "outputs": await run_in_threadpool(output_links, task, settings)}

    return router
