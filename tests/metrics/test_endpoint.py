"""``GET /metrics`` on the API (open by default, the read scope when configured, an answer even with
the task store down) and a daemon's own port in production."""

from __future__ import annotations

import os
import subprocess

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.api.metrics import QueueCollector
from service.backends.base import TaskBackend
from service.errors import BackendUnavailable
from service.settings import METRICS_DIR_ENV, Settings
from service.supervisor import cli_argv, settings_env
from tests.conftest import ENQUEUE_TOKEN, READ_TOKEN, ApiServer, free_port, wait_for


def samples(text: str) -> dict[str, float]:
    return {s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_answers_without_a_token_and_counts_enqueues_by_status(api: ApiServer) -> None:
    before = samples(httpx.get(f"{api.url}/metrics").text).get("scantide_enqueue_requests_total|code=401", 0)
    assert httpx.post(f"{api.url}/v1/scans", json={"scan_id": "s1", "scan_uri": "s1.mp4"}).status_code == 401
    response = httpx.get(f"{api.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(response.text)
    assert found["scantide_enqueue_requests_total|code=401"] == before + 1
    assert found["scantide_queue_depth|queue=default"] == 0 and found["scantide_task_store_up"] == 1
    assert "/metrics" not in httpx.get(f"{api.url}/openapi.json").json()["paths"]


def test_metrics_can_require_the_read_scope(settings: Settings, backend: TaskBackend) -> None:
    server = ApiServer(settings.model_copy(update={"metrics_token_required": True}), backend)
    server.start()
    try:
        assert httpx.get(f"{server.url}/metrics").status_code == 401
        with server.client(READ_TOKEN) as http:
            assert http.get("/metrics").status_code == 200
        with server.client(ENQUEUE_TOKEN) as http:  # enqueue and read
            assert http.get("/metrics").status_code == 200
    finally:
        server.stop()


class DownStore:
    def queues(self) -> list[str]:
        raise BackendUnavailable("the store is down")


def test_a_store_that_does_not_answer_is_a_series_not_an_error() -> None:
    (up,) = QueueCollector(DownStore()).collect()  # type: ignore[arg-type]
    assert up.name == "scantide_task_store_up" and up.samples[0].value == 0


def test_a_daemon_serves_its_own_port_in_production(settings: Settings) -> None:
    port = free_port()
    env = {**os.environ, **settings_env(settings.model_copy(update={"metrics_port": port}))}
    env.pop(METRICS_DIR_ENV, None)
    monitor = subprocess.Popen(cli_argv("monitor"), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        def scraped() -> dict[str, float] | None:
            try:
                found = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text)
            except httpx.TransportError:
                return None
            return found if "scantide_outbox_pending" in found else None

        found = wait_for(scraped, timeout_s=30, what="the monitor's metrics port")
        assert found["scantide_outbox_pending"] == 0  # type: ignore[index]
        assert "process_cpu_seconds_total" in found  # type: ignore[operator]
    finally:
        monitor.terminate()
        monitor.wait(timeout=30)
