"""The status data over real uvicorn on loopback: the snapshot and its read scope, the event stream
(a snapshot at once, another when a scan is submitted), and each section from its real source:
the autoscaler's fleet file, the monitor's outbox and alert state."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from autoscaler.model import Instance, InstanceOption, InstanceState, Market, PoolConfig, PoolSnapshot, Snapshot
from autoscaler.status import fleet_path, write_fleet
from monitor.daemon import alert_config, outbox_for
from monitor.status import MonitorStatus
from monitor.watch import Watcher
from service.backends.base import TaskBackend
from service.pipelines.store import PipelineStore
from service.settings import Settings
from service.status.build import StatusBuilder
from tests.conftest import READ_TOKEN, TOKEN, ApiServer
from tests.monitor.conftest import start, submit, with_settings


def scan_file(settings: Settings, name: str = "scan.mp4") -> str:
    """A file under the data root: enough to enqueue (nothing here runs it)."""
    path = Path(settings.data_root) / name  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded by this test")
    return str(path)


def events(response: httpx.Response) -> Iterator[tuple[str, dict]]:
    """(event, data) of each server-sent event of a streamed response."""
    name, data = "message", []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def test_snapshot_needs_the_read_scope(api: ApiServer) -> None:
    with api.client(token=None) as anonymous:
        assert anonymous.get("/v1/status").json()["error"]["code"] == "unauthorized"
        assert anonymous.get("/v1/status/events").status_code == 401
        page = anonymous.get("/status")  # the page holds no data: it asks for a token
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    with api.client(READ_TOKEN) as reader:
        body = reader.get("/v1/status").json()
    assert body["backend"] == "embedded" and [q["queue"] for q in body["queues"]] == ["default"]


def test_snapshot_shows_submitted_scans_and_queue_depth(api: ApiServer, settings: Settings) -> None:
    uri = scan_file(settings)
    with api.client(TOKEN) as client:
        for scan_id in ("s-1", "s-2"):
            assert client.post("/v1/scans", json={"scan_id": scan_id, "scan_uri": uri}).status_code == 202
        body = client.get("/v1/status").json()
    assert [t["scan_id"] for t in body["tasks"]] == ["s-2", "s-1"]  # newest first
    assert {t["state"] for t in body["tasks"]} == {"queued"} and {t["progress"] for t in body["tasks"]} == {0.0}
    queue = body["queues"][0]
    assert queue["pending"] == 2 and queue["oldest_queued_age_s"] >= 0


def test_event_stream_pushes_a_snapshot_when_a_scan_is_submitted(api: ApiServer, settings: Settings) -> None:
    uri = scan_file(settings)
    with api.client(READ_TOKEN) as reader, api.client(TOKEN) as client, \
            reader.stream("GET", "/v1/status/events", timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        received = events(stream)
        name, first = next(received)
        assert name == "snapshot" and first["tasks"] == []
        assert client.post("/v1/scans", json={"scan_id": "live-1", "scan_uri": uri}).status_code == 202
        name, second = next(received)  # pushed on the store's ring; the client's timeout bounds the wait
    assert name == "snapshot" and [t["scan_id"] for t in second["tasks"]] == ["live-1"]


def test_fleet_is_the_autoscalers_last_observation(api: ApiServer, settings: Settings) -> None:
    now = time.time()
    gpu = InstanceOption("g5.xlarge", Market.spot, 0.5)
    on_demand = InstanceOption("g5.xlarge", Market.on_demand, 1.2)
    instances = (Instance("i-busy", "gpu", gpu, InstanceState.busy, now - 300, now - 60, ("i-busy",), ("t-1",)),
                 Instance("i-boot", "gpu", on_demand, InstanceState.booting, now - 20, now - 20),
                 Instance("i-warm", "gpu", on_demand, InstanceState.stopped, now - 900, now - 900))
    snapshot = Snapshot(now, {"gpu": PoolSnapshot("gpu", 3, 1, 42.0, 0.1, instances, launches_in_flight=1)})
    write_fleet(fleet_path(settings), snapshot, {"gpu": PoolConfig("gpu", "gpu-scans", (gpu,))})
    with api.client(READ_TOKEN) as reader:
        fleet = reader.get("/v1/status").json()["fleet"]
    assert fleet["available"] and fleet["cost_per_hour"] == 1.7  # the stopped instance bills no hours
    (pool,) = fleet["pools"]
    assert (pool["pool"], pool["queue"], pool["launches_in_flight"]) == ("gpu", "gpu-scans", 1)
    busy = pool["instances"][0]
    assert (busy["state"], busy["market"], busy["task_ids"], busy["state_age_s"]) == ("busy", "spot", ["t-1"], 60.0)


def test_alerts_and_outbox_come_from_the_monitor(settings: Settings, backend: TaskBackend) -> None:
    settings = with_settings(settings, backlog_slo_s=0.001)  # the store's own clock ages the queue
    outbox = outbox_for(settings)
    stalled = start(backend, "stuck")  # claimed, then silent
    for i in range(2):
        submit(backend, f"waiting-{i}")
    later = time.time() + settings.stall_no_heartbeat_s + 60  # past the stall limit
    watcher = Watcher(backend, outbox, alert_config(settings))
    watcher.poll_changes()
    assert watcher.check_alerts(now=later) >= 2
    outbox.mark_dead(outbox.list("pending", limit=1)[0].id, "HTTP 410")

    part = MonitorStatus(settings, backend)(later)
    codes = {(a.code, a.subject) for a in part.alerts.open}  # type: ignore[union-attr]
    assert ("queue.backlog", "queue default") in codes
    assert ("scan.stalled", f"scan stuck (task {stalled.task_id})") in codes
    assert part.outbox is not None and part.outbox.dead == 1 and part.outbox.pending >= 1
    assert part.outbox.oldest_pending_age_s is not None and not part.outbox.webhook_configured

    backend.finish(stalled.task_id, "test-worker", error=None, result={"output_uri": "/x"})
    part = MonitorStatus(settings, backend)(later)
    assert all(a.code != "scan.stalled" for a in part.alerts.open)  # type: ignore[union-attr]


def test_a_failing_source_costs_only_its_sections(settings: Settings, backend: TaskBackend) -> None:
    def broken(now: float):
        raise OSError("disk gone")

    build = StatusBuilder(backend, PipelineStore(settings.pipelines_db), {"monitor": broken}, backend_name="embedded")
    snapshot = build()
    assert not snapshot.alerts.available and "disk gone" in (snapshot.alerts.reason or "")
    assert not snapshot.outbox.available
    assert not snapshot.fleet.available and [q.queue for q in snapshot.queues] == ["default"]


def test_the_page_asks_for_nothing_from_elsewhere(api: ApiServer) -> None:
    html = httpx.get(f"{api.url}/status").text
    for marker in ("http://", "https://", "//fonts", "src=", "@import"):
        assert marker not in html, marker


def test_an_open_event_stream_does_not_hold_up_shutdown(settings: Settings, backend: TaskBackend) -> None:
    server = ApiServer(settings, backend)
    server.start()
    opened = threading.Event()
    ended: list[str] = []

    def watch() -> None:
        try:
            with server.client(READ_TOKEN) as reader, reader.stream("GET", "/v1/status/events", timeout=60) as stream:
                for _ in events(stream):
                    opened.set()
        except httpx.HTTPError as exc:  # the server closed the stream as it stopped
            ended.append(type(exc).__name__)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert opened.wait(30), "no snapshot came"
    server.stop()  # waits (10 s at most) for uvicorn, which would wait for the stream forever
    assert not server.thread.is_alive(), "uvicorn is still waiting for the event stream to end"
    watcher.join(timeout=30)
    assert ended == ["RemoteProtocolError"]
