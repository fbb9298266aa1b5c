"""How scantide's Prometheus series reach a scrape.

Each part defines the series it owns beside its code (``service.api.metrics``, ``monitor.metrics``,
``conductor.metrics``, ``autoscaler.metrics``, ``service.worker_metrics``). Two ways out:

- Embedded (``scantide up``): the supervisor gives every child ``METRICS_DIR_ENV`` (the state dir's
  ``metrics/``), so prometheus-client keeps each process's series in files there
  (``service.metrics_files``), and the API's ``GET /metrics`` serves them all: one scrape target.
- Production: each daemon serves its own registry on ``settings.metrics_port`` (``serve_port``),
  and the API's ``GET /metrics`` serves the API's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, disable_created_metrics, generate_latest, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from service.metrics_files import locked, tidy
from service.settings import METRICS_DIR_ENV, Settings

log = logging.getLogger(__name__)


def shared_dir() -> Path | None:
    """The directory this process writes its series to, when it runs under ``scantide up``."""
    path = os.environ.get(METRICS_DIR_ENV)
    return Path(path) if path else None


class _ThisProcess:
    """This process's own registry, read into another."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def exposition(extra: Iterable[Collector] = ()) -> bytes:
    """The text exposition of every process's series (the shared directory's, under ``scantide up``)
    or this process's, followed by ``extra`` collectors (series read at scrape time)."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in extra:
        registry.register(collector)
    folder = shared_dir()
    if folder is None:
        registry.register(_ThisProcess())
        return generate_latest(registry)
    with locked(folder):  # a tidy half done must not be read, nor two run at once
        tidy(folder)
        MultiProcessCollector(registry, path=str(folder))
        return generate_latest(registry)


def serve_port(settings: Settings, daemon: str) -> None:
    """Serve this daemon's series on ``settings.metrics_port`` (a thread), when it is set and the
    process is not one of ``scantide up``'s, whose series the API serves."""
    if settings.metrics_port is None:
        return
    if shared_dir() is not None:
        log.info("metrics_port_unused daemon=%s: under scantide up, the API's /metrics serves it", daemon)
        return
    disable_created_metrics()
    start_http_server(settings.metrics_port, addr=settings.metrics_host)
    log.info("metrics_serving daemon=%s url=http://%s:%d/metrics", daemon, settings.metrics_host,
             settings.metrics_port)
