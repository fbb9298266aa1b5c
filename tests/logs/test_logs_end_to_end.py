"""JSON logs end to end: ``scantide up`` with its stderr in a file (so JSON, by default), a scan
submitted with an ``X-Request-ID``. Then every line of every process's log parses as JSON, and one
grep of the request id follows the scan from the API (its enqueue line and uvicorn's access line)
through the worker to the monitor's delivery of the webhook, which carries the id too."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.demo_receiver import Receiver
from service.processes import terminate
from service.settings import Settings
from service.supervisor import cli_argv, settings_env
from service.synthetic import write_scan_video
from tests.conftest import TOKEN, wait_for

REQUEST_ID = "platform-req-7f3a9c0e"


@pytest.fixture
def stack(settings: Settings) -> Iterator[tuple[Settings, Receiver, subprocess.Popen]]:
    with Receiver("logs-test-secret-0123456789") as receiver:
        s = settings.model_copy(update={"webhook_url": receiver.url, "webhook_secret": receiver.secret,
                                        "workers": 1})
        env = {**os.environ, **settings_env(s)}
        env.pop("SCANTIDE_SUPERVISOR", None)
        env.pop("SCANTIDE_LOG_FORMAT", None)  # the default: JSON, stderr being a file
        s.state_dir.mkdir(parents=True, exist_ok=True)
        with open(s.state_dir / "up.log", "wb") as log:
            up = subprocess.Popen(cli_argv("up"), env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            yield s, receiver, up
        finally:
            terminate(up, grace_s=90)


def process_logs(settings: Settings) -> dict[Path, list[dict[str, Any]]]:
    """Every process's log (``scantide up``'s, with the API, monitor, conductor and autoscaler, and
    each worker's), each line parsed as JSON; a line that is not fails the test, naming it."""
    out = {}
    for path in [settings.state_dir / "up.log", *sorted((settings.state_dir / "logs").glob("*.log"))]:
        lines = []
        for n, text in enumerate(path.read_text().splitlines(), 1):
            try:
                line = json.loads(text)
            except ValueError:
                pytest.fail(f"{path.name}:{n} is not JSON: {text!r}")
            assert isinstance(line, dict) and {"ts", "level", "logger", "msg"} <= line.keys(), text
            lines.append(line)
        out[path] = lines
    return out


def test_one_grep_follows_a_scan_from_request_to_webhook(stack, data_root: Path) -> None:
    settings, receiver, up = stack
    base = f"http://127.0.0.1:{settings.api_port}"
    write_scan_video(data_root / "l1.mp4", frames=24, fps=24.0, size=(96, 64), seed=5)
    wait_for(lambda: _healthy(base), timeout_s=60, what="the API")
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as http:
        answer = http.post("/v1/scans", json={"scan_id": "l1", "scan_uri": "l1.mp4"},
                           headers={"X-Request-ID": REQUEST_ID})
        assert answer.status_code == 202, answer.text
        assert answer.headers["X-Request-ID"] == REQUEST_ID
        task_id = answer.json()["task_id"]
        made = http.get("/v1/scans/l1")  # no id sent: one is made, and this request's lines carry it
        assert len(made.headers["X-Request-ID"]) == 32 and made.headers["X-Request-ID"] != REQUEST_ID
        assert made.json()["tasks"][0]["request_id"] == REQUEST_ID
        forged = http.get("/healthz", headers={"X-Request-ID": 'x" level=error'})  # not taken as sent
        assert forged.headers["X-Request-ID"] != 'x" level=error'

        def delivered() -> dict | None:
            return next((e for e, valid in receiver.events if valid and e["data"].get("task_id") == task_id), None)

        event = wait_for(delivered, timeout_s=120, interval_s=0.2, what="the scan's webhook")
    assert event["type"] == "scan.completed" and event["data"]["request_id"] == REQUEST_ID  # type: ignore[index]
    wait_for(lambda: any('"webhook_delivered"' in line and task_id in line
                         for line in (settings.state_dir / "up.log").read_text().splitlines()),
             timeout_s=30, what="the monitor's delivery line")
    terminate(up, grace_s=90)

    logs = process_logs(settings)
    followed = [line for lines in logs.values() for line in lines if REQUEST_ID in json.dumps(line)]
    assert all(line.get("request_id") == REQUEST_ID for line in followed)
    seen = {(line.get("service"), line.get("event") or line["logger"]) for line in followed}
    assert {("api", "scan_submitted"), ("api", "uvicorn.access"), ("worker", "task_started"),
            ("worker", "task_finished"), ("monitor", "webhook_delivered")} <= seen, sorted(seen)
    for line in followed:
        if line.get("service") in ("worker", "monitor"):
            assert (line["task_id"], line["scan_id"]) == (task_id, "l1"), line
    [access] = [line for line in followed if line["logger"] == "uvicorn.access"]
    assert (access["method"], access["path"], access["status"]) == ("POST", "/v1/scans", 202)
    every_access = [line for lines in logs.values() for line in lines if line["logger"] == "uvicorn.access"]
    assert len(every_access) >= 3 and all(line.get("request_id") for line in every_access)
    assert {line.get("service") for lines in logs.values() for line in lines} >= {
        "up", "api", "monitor", "conductor", "autoscaler", "worker"}


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
