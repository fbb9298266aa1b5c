"""The status page (``GET /status``, HTML, no data in it) and its data, both under the read scope:
``GET /v1/status`` (one snapshot) and ``GET /v1/status/events`` (server-sent events: a snapshot at
once, then one each time the state changes; ``unavailable`` events while the task store is).

The page reads the event stream with ``fetch`` so the token travels as a bearer header, never in
a URL (``EventSource`` cannot send headers).
"""

from __future__ import annotations

from collections.abc import AsyncIterable

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from service.api.auth import TokenAuth
from service.api.responses import AUTH, STORE, errors
from service.backends.base import TaskBackend
from service.pipelines.store import PipelineStore
from service.settings import Settings
from service.status.build import StatusBuilder
from service.status.feed import StatusFeed
from service.status.model import StatusSnapshot
from service.status.page import content_security_policy, page_html
from service.status.sources import load_sources


def status_router(settings: Settings, backend: TaskBackend, pipelines: PipelineStore, auth: TokenAuth) -> APIRouter:
    build = StatusBuilder(backend, pipelines, load_sources(settings, backend), backend_name=settings.backend)
    feed = StatusFeed(build, backend.listener, poll_s=settings.status_poll_s)
    router = APIRouter(tags=["status"])

    @router.get("/status", response_class=HTMLResponse, responses=errors(),
                summary="The live status page (HTML; it asks for a read-scope token and keeps it for the session)")
    def status_page() -> HTMLResponse:
        return HTMLResponse(page_html(), headers={"Content-Security-Policy": content_security_policy(),
                                                  "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    @router.get("/v1/status", response_model=StatusSnapshot, dependencies=[Depends(auth.require("read"))],
                responses=errors(*AUTH, *STORE),
                summary="Queues, fleet, recent scans and runs, open alerts and the webhook outbox, now")
    def status_snapshot() -> StatusSnapshot:
        return build()

    @router.get("/v1/status/events", response_class=EventSourceResponse,
                dependencies=[Depends(auth.require("read"))], responses=errors(*AUTH),
                summary="The status as server-sent events: a snapshot at once, then one each time it changes",
                description="Each `snapshot` event's data is a StatusSnapshot. While the task store cannot be read, "
                "`unavailable` events carry the error (`{code, message}`). A comment line keeps the connection "
                "alive every 15 s.")
    async def status_events() -> AsyncIterable[StatusSnapshot]:
        async for update in feed.updates():
            if isinstance(update, StatusSnapshot):
                yield ServerSentEvent(data=update, event="snapshot")  # type: ignore[misc]
            else:
                yield ServerSentEvent(data=update.error, event="unavailable")  # type: ignore[misc]

    return router
