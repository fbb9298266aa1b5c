"""The log format and level of real processes: a worker (JSON into a pipe by default, text when
asked, quiet above its level), the API in text (uvicorn's lines in our format, its access line with
the request id) and the Lambda handler (JSON at ``SCANTIDE_LOG_LEVEL``, its invocation's id on each
line and on the task it submits)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from service.backends import open_backend
from service.settings import Settings, load_settings
from service.supervisor import cli_argv, settings_env
from tests.conftest import wait_for

TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} level=(DEBUG|INFO|WARNING|ERROR|CRITICAL) logger=\S+ .+")
REPO = Path(__file__).resolve().parents[2]


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANTIDE_")}
    return {**env, **settings_env(settings), **extra}


def worker_stderr(settings: Settings, *args: str, **extra: str) -> list[str]:
    """What ``scantide worker`` that takes no task (and warms nothing) writes to stderr, a pipe."""
    done = subprocess.run(cli_argv(*args, "worker", "--max-tasks", "0"), capture_output=True, text=True, timeout=60,
                          env=env_for(settings, SCANTIDE_WORKER_WARM="false", **extra), stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines()


def test_a_worker_logs_json_into_a_pipe_text_when_asked_and_nothing_below_its_level(settings: Settings) -> None:
    lines = [json.loads(line) for line in worker_stderr(settings)]
    assert [line["event"] for line in lines] == ["worker_started", "worker_stopped"]
    assert all(line["service"] == "worker" and line["level"] == "info" for line in lines)

    text = worker_stderr(settings, SCANTIDE_LOG_FORMAT="text")
    assert len(text) == 2 and all(TEXT_LINE.fullmatch(line) for line in text), text
    assert " logger=service.worker worker_started worker=" in text[0]

    assert worker_stderr(settings, SCANTIDE_LOG_LEVEL="warning") == []
    assert worker_stderr(settings, "--log-level", "WARNING") == []


def test_the_api_in_text_gives_uvicorns_lines_our_format_and_the_access_line_its_request_id(
        settings: Settings, tmp_path: Path) -> None:
    log_path = tmp_path / "api.log"
    with open(log_path, "wb") as log:
        api = subprocess.Popen(cli_argv("api"), env=env_for(settings, SCANTIDE_LOG_FORMAT="text"), stdout=log,
                               stderr=log, stdin=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{settings.api_port}"

        def answer() -> httpx.Response | None:
            try:
                return httpx.get(f"{base}/healthz", headers={"X-Request-ID": "text-req-1"}, timeout=2)
            except httpx.TransportError:
                return None

        response = wait_for(answer, timeout_s=60, what="the API")
        assert response.headers["X-Request-ID"] == "text-req-1"  # type: ignore[union-attr]
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=30)
    lines = log_path.read_text().splitlines()
    assert lines and all(TEXT_LINE.fullmatch(line) for line in lines), lines
    assert any(" logger=uvicorn.error Uvicorn running on " in line for line in lines)
    [access] = [line for line in lines if " logger=uvicorn.access " in line]
    assert access.endswith('"GET /healthz HTTP/1.1" 200 request_id=text-req-1')


LAMBDA = """
import base64, json, sys, types
from lambda_enqueue.handler import handler
event = json.loads(sys.argv[1])
context = types.SimpleNamespace(aws_request_id="aws-req-1", function_name="scantide-enqueue")
print(json.dumps(handler(event, context)))
"""


def invoke(tmp_path: Path, body: dict, headers: dict[str, str], **extra: str) -> tuple[dict, list[str]]:
    """The handler invoked once in a fresh interpreter, as in a new Lambda container: (answer, stderr)."""
    event = json.loads((REPO / "tests" / "events" / "apigw_v2.json").read_text())
    event.update(body=json.dumps(body), isBase64Encoded=False, headers={**event["headers"], **headers})
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANTIDE_")}
    env.update(SCANTIDE_STATE_DIR=str(tmp_path / "state"), SCANTIDE_CONFIG=str(tmp_path / "absent.toml"),
               SCANTIDE_OUTPUT_ROOT="s3://scantide-outputs/results", **extra)
    done = subprocess.run([sys.executable, "-c", LAMBDA, json.dumps(event)], capture_output=True, text=True,
                          timeout=60, env=env, cwd=REPO, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr.splitlines()


def test_the_lambda_logs_json_at_its_level_with_the_invocations_id(tmp_path: Path) -> None:
    scan = {"scan_id": "lam-1", "scan_uri": "s3://scantide-scans/lam-1.mp4"}
    answer, stderr = invoke(tmp_path, scan, {})
    assert answer["statusCode"] == 202 and answer["headers"]["X-Request-ID"] == "aws-req-1"
    lines = [json.loads(line) for line in stderr]
    [submitted] = [line for line in lines if line.get("event") == "scan_submitted"]
    assert (submitted["service"], submitted["request_id"], submitted["scan_id"]) == ("lambda", "aws-req-1", "lam-1")

    again, stderr = invoke(tmp_path, {**scan, "scan_id": "lam-2"}, {"X-Request-ID": "platform-9"},
                           SCANTIDE_LOG_LEVEL="WARNING")
    assert again["headers"]["X-Request-ID"] == "platform-9" and stderr == []

    backend = open_backend(load_settings(state_dir=tmp_path / "state"))
    try:
        assert {t.scan_id: t.request_id for t in backend.list_tasks()} == {"lam-1": "aws-req-1", "lam-2": "platform-9"}
    finally:
        backend.close()
