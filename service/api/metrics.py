"""``GET /metrics``: the Prometheus exposition (``service.metrics``), and the API's own series.

The queue gauges are read from the task store at each scrape, so they are the store's truth at
that moment whatever process died since. The route needs no token unless
``settings.metrics_token_required`` (then the read scope), as ``/healthz`` needs none: Prometheus
scrapes without one by default, and the series name queues, algorithms and pools, never scans.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from fastapi import APIRouter, Depends, FastAPI, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, Counter, disable_created_metrics
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.auth import TokenAuth
from service.backends.base import TaskBackend
from service.errors import ScantideError
from service.metrics import exposition
from service.settings import Settings

log = logging.getLogger(__name__)

ENQUEUE_REQUESTS = Counter("scantide_enqueue_requests", "POST /v1/scans requests answered, by HTTP status code.",
                           ["code"])
ENQUEUE_PATH = "/v1/scans"


class QueueCollector:
    """Each queue's depth, oldest queued task and running tasks, read from the store at scrape time;
    ``scantide_task_store_up`` is 0 when the store did not answer (and the queue series are absent)."""

    def __init__(self, backend: TaskBackend) -> None:
        self.backend = backend

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily("scantide_queue_depth", "Tasks queued, waiting for a worker.", labels=["queue"])
        age = GaugeMetricFamily("scantide_queue_oldest_age_seconds", "Age of the oldest queued task, seconds "
                                "(0 when none is queued).", labels=["queue"])
        running = GaugeMetricFamily("scantide_queue_running", "Tasks running from the queue.", labels=["queue"])
        up = GaugeMetricFamily("scantide_task_store_up", "1 when the task store answered this scrape, else 0.")
        try:
            stats = [self.backend.queue_stats(q) for q in self.backend.queues()]
        except ScantideError as exc:  # a scrape must answer: the outage is a series of its own
            log.warning("metrics_queues_unavailable code=%s error=%s", exc.code, exc.message)
            up.add_metric([], 0)
            return [up]
        for s in stats:
            depth.add_metric([s.queue], s.pending)
            age.add_metric([s.queue], s.oldest_queued_age_s)
            running.add_metric([s.queue], s.running)
        up.add_metric([], 1)
        return [depth, age, running, up]


class EnqueueCounter:
    """Counts each ``POST /v1/scans`` by the status it was answered with: outermost, so a request the
    rate limit or the body limit refused counts too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != ENQUEUE_PATH:
            await self.app(scope, receive, send)
            return
        status = 500  # what the server answers when the app raised before it answered

        async def noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting)
        finally:
            ENQUEUE_REQUESTS.labels(str(status)).inc()


def install_metrics(app: FastAPI, settings: Settings, backend: TaskBackend, auth: TokenAuth) -> None:
    """Serve ``GET /metrics`` and count enqueue requests. Call last in ``create_app``."""
    disable_created_metrics()  # a `_created` gauge beside every counter says nothing a reset does not
    app.add_middleware(EnqueueCounter)
    queues = QueueCollector(backend)
    needs = [Depends(auth.require("read"))] if settings.metrics_token_required else []
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False, dependencies=needs)
    def metrics() -> Response:  # a thread: it reads files and the store
        return Response(exposition([queues]), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    app.include_router(router)
