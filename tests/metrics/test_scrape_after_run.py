"""One scrape target for the whole embedded stack: `scantide up` runs a demo-sized load (scans of the
built-in and an example algorithm, a triage pipeline run, a task parked on a queue no worker
serves, refused requests, signed webhooks to a receiver), and ``GET /metrics`` on the API then has
every series the operations guide lists, with a sample above zero wherever the run made one. A
monitor killed outright (kill -9) takes no count with it."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from service.demo import register_example
from service.demo_pipeline import EXAMPLES, register_triage
from service.demo_receiver import Receiver
from service.processes import terminate
from service.settings import Settings
from service.supervisor import cli_argv, settings_env
from service.synthetic import write_scan_video
from tests.conftest import TOKEN, wait_for

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, frozenset], float]  # (sample name, labels) -> value


def scrape(base: str) -> Samples:
    response = httpx.get(f"{base}/metrics", timeout=10)  # no token: the default
    assert response.status_code == 200, response.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (-1: none has them)."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    return sum(found) if found else -1.0


def parked_algorithm(tmp: Path) -> Path:
    """frame_stats under another name, on a queue of its own that no pool serves."""
    folder = tmp / "parked_stats"
    shutil.copytree(EXAMPLES / "algorithms" / "frame_stats", folder)
    descriptor = folder / "scantide-algorithm.yaml"
    descriptor.write_text(descriptor.read_text().replace("name: frame_stats", "name: parked_stats")
                          .replace("queue: cpu", "queue: parked"))
    return folder


def child_pid(supervisor: int, command: str) -> int | None:
    """The pid of ``scantide <command>`` started by the supervisor ``supervisor``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == supervisor and command.encode() in argv and b"service.cli" in argv:
            return int(stat.parent.name)
    return None


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, Receiver, subprocess.Popen]]:
    with Receiver("metrics-test-secret-0123456789") as receiver:
        s = settings.model_copy(update={
            "webhook_url": receiver.url, "webhook_secret": receiver.secret, "workers": 1,
            "local_idle_timeout_s": 600.0,  # the worker stays, idle, for the fleet gauges to show
            "backlog_slo_s": 1.0,  # the parked task raises queue.backlog
            "algorithm_queues": {"parked": "parked"}})
        console = Console(file=io.StringIO())
        assert register_example(s, console) == "frame_stats"
        assert register_triage(s, console) == "triage"
        from service.algorithms import register_folder
        from service.backends import open_backend

        backend = open_backend(s)
        register_folder(backend, s, parked_algorithm(tmp_path), by="test")
        backend.close()
        log = open(s.state_dir / "up.log", "wb")
        env = {**os.environ, **settings_env(s)}
        env.pop("SCANTIDE_SUPERVISOR", None)
        up = subprocess.Popen(cli_argv("up"), env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        try:
            yield s, receiver, up
        finally:
            terminate(up, grace_s=90)


def test_one_scrape_after_a_demo_sized_run_has_every_series(stack, data_root: Path) -> None:
    settings, receiver, up = stack
    base = f"http://127.0.0.1:{settings.api_port}"
    for name in ("m1", "m2"):
        write_scan_video(data_root / f"{name}.mp4", frames=60, fps=24.0, size=(160, 120), blur=(10, 20), seed=3)
    wait_for(lambda: _healthy(base), timeout_s=60, what="the API")
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as http:
        for body in ({"scan_id": "m1", "scan_uri": "m1.mp4"}, {"scan_id": "m2", "scan_uri": "m2.mp4"},
                     {"scan_id": "m1", "scan_uri": "m1.mp4", "algorithm": "frame_stats"},
                     {"scan_id": "m1", "scan_uri": "m1.mp4", "algorithm": "parked_stats"}):
            assert http.post("/v1/scans", json=body).status_code == 202
        run = http.post("/v1/scans", json={"scan_id": "m2", "scan_uri": "m2.mp4", "pipeline": "triage"})
        assert run.status_code == 202, run.text
        assert http.post("/v1/scans", json={"scan_id": "not an id", "scan_uri": "m1.mp4"}).status_code == 422
        assert httpx.post(f"{base}/v1/scans", json={"scan_id": "m3", "scan_uri": "m1.mp4"}).status_code == 401

        def ended() -> bool:
            tasks = [t for s in ("m1", "m2") for t in http.get(f"/v1/scans/{s}").json()["tasks"]
                     if t["algorithm"] != "parked_stats"]
            states = {t["state"] for t in tasks} | {http.get(f"/v1/runs/{run.json()['run_id']}").json()["state"]}
            assert not states & {"failed", "stopped"}, tasks
            return states == {"completed"}

        wait_for(ended, timeout_s=240, interval_s=0.5, what="the scans and the run to complete")

    expected = {  # (series, labels): the least its value may be, after this run
        ("scantide_queue_depth", (("queue", "parked"),)): 1,
        ("scantide_queue_depth", (("queue", "default"),)): 0,
        ("scantide_queue_oldest_age_seconds", (("queue", "parked"),)): 1e-9,
        ("scantide_queue_oldest_age_seconds", (("queue", "default"),)): 0,
        ("scantide_tasks_total", (("algorithm", "video_summary"), ("state", "queued"))): 3,
        ("scantide_tasks_total", (("algorithm", "video_summary"), ("state", "running"))): 3,
        ("scantide_tasks_total", (("algorithm", "video_summary"), ("state", "completed"))): 3,
        ("scantide_tasks_total", (("algorithm", "frame_stats"), ("state", "completed"))): 2,
        ("scantide_tasks_total", (("algorithm", "parked_stats"), ("state", "queued"))): 1,
        ("scantide_task_duration_seconds_count", (("algorithm", "video_summary"),)): 3,
        ("scantide_task_duration_seconds_sum", (("algorithm", "video_summary"),)): 1e-9,
        ("scantide_task_duration_seconds_bucket", (("algorithm", "scan_report"), ("le", "+Inf"))): 1,
        ("scantide_enqueue_requests_total", (("code", "202"),)): 5,
        ("scantide_enqueue_requests_total", (("code", "422"),)): 1,
        ("scantide_enqueue_requests_total", (("code", "401"),)): 1,
        ("scantide_webhook_deliveries_total", (("outcome", "delivered"),)): 5,
        ("scantide_webhook_lag_seconds_count", ()): 5,
        ("scantide_webhook_lag_seconds_sum", ()): 1e-9,
        ("scantide_outbox_pending", ()): 0,
        ("scantide_fleet_instances", (("pool", "local"), ("state", "idle"))): 1,
        ("scantide_fleet_instances", (("pool", "local"), ("state", "busy"))): 0,
        ("scantide_fleet_cost_per_hour", (("pool", "local"),)): 1.0,
        ("scantide_autoscaler_decisions_total", (("pool", "local"), ("action", "launch"))): 1,
        ("scantide_autoscaler_ticks_total", (("outcome", "ok"),)): 1,
        ("scantide_events_total", (("type", "scan.completed"),)): 3,
        ("scantide_events_total", (("type", "pipeline.completed"),)): 1,
        ("scantide_events_total", (("type", "queue.backlog"),)): 1,
        ("scantide_monitor_degraded", (("what", "output_links"),)): 0,
        ("scantide_pipeline_runs_total", (("pipeline", "triage"), ("state", "completed"))): 1,
        ("scantide_pipeline_steps_submitted_total", (("compute", "local"),)): 3,
        ("scantide_worker_tasks_total", (("algorithm", "video_summary"), ("outcome", "completed"))): 3,
        ("scantide_worker_slots", ()): 1,
        ("scantide_worker_slots_busy", ()): 0,
        ("scantide_task_store_up", ()): 1,
    }

    def short(samples: Samples) -> list[str]:
        return [f"{name}{dict(labels)} = {value(samples, name, **dict(labels))} (least {least})"
                for (name, labels), least in expected.items() if value(samples, name, **dict(labels)) < least]

    samples: Samples = {}

    def complete() -> bool:
        nonlocal samples
        samples = scrape(base)
        return not short(samples)

    try:
        wait_for(complete, timeout_s=60, interval_s=0.5, what="every series")
    except pytest.fail.Exception:
        pytest.fail("short of what the run made: " + "; ".join(short(samples)))
    assert len(receiver.events) >= 5 and all(valid for _, valid in receiver.events)

    # kill -9 the monitor: the supervisor starts another, and no count goes down.
    monitor = child_pid(up.pid, "monitor")
    assert monitor is not None
    os.kill(monitor, signal.SIGKILL)
    wait_for(lambda: child_pid(up.pid, "monitor") not in (None, monitor), timeout_s=30, what="a new monitor")
    folder = settings.metrics_dir
    wait_for(lambda: (scrape(base) and not (folder / f"gauge_livemostrecent_{monitor}.db").exists()
                      and not (folder / f"counter_{monitor}.db").exists()), timeout_s=30,
             what="the dead monitor's files to be tidied")
    after = scrape(base)
    for name in ("scantide_tasks_total", "scantide_webhook_deliveries_total", "scantide_webhook_lag_seconds_count",
                 "scantide_events_total", "scantide_task_duration_seconds_count"):
        assert value(after, name) >= value(samples, name), name
    assert (folder / "counter_archive.db").exists()
    wait_for(lambda: value(scrape(base), "scantide_outbox_pending") == 0, timeout_s=30,
             what="the new monitor's outbox gauge")


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
