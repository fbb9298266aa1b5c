"""The published OpenAPI description: a valid OpenAPI 3.1 document, typed 2xx bodies, the bearer
scheme with each operation's scope, webhook payloads that match what the monitor sends, the
generated reference kept current, and per route an error ``code`` enum that holds every code the
route answers with (checked by answering each route's error cases against the live API)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from monitor import events
from service.api.reference import render
from service.api.server import MAX_HEADER_BYTES
from service.api.webhooks import EVENTS
from service.backends import open_backend
from service.domain import Change, JobState, TaskError, TaskInfo
from service.pipelines.store import Run, StepRun
from service.rejections import Rejection
from service.settings import SCOPES, Settings, load_settings
from service.storage.base import StorageError
from tests.conftest import TOKEN, ApiServer
from tests.monitor.conftest import result_for

REPO = Path(__file__).resolve().parents[1]
METHODS = ("get", "post", "put", "patch", "delete")
LIMIT = 4096  # every body limit of the error-case API, bytes
ONLY = {scope: f"token-only-{scope}" for scope in SCOPES}  # one token per scope
JSON = {"content-type": "application/json"}


@pytest.fixture
def api_server(settings: Settings) -> Iterator[ApiServer]:
    """The API with small body limits and a token per scope."""
    strict = load_settings(**{**settings.model_dump(), "max_body_bytes": LIMIT, "max_bundle_bytes": LIMIT,
                              "max_blob_bytes": LIMIT,
                              "api_tokens": {**settings.api_tokens, **{t: [s] for s, t in ONLY.items()}}})
    backend = open_backend(strict)
    server = ApiServer(strict, backend)
    server.start()
    yield server
    server.stop()
    backend.close()


@pytest.fixture
def spec(api_server: ApiServer) -> dict[str, Any]:
    return httpx.get(f"{api_server.url}/openapi.json").json()


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in spec["paths"].items():
        for method in METHODS:
            if method in ops:
                yield method, path, ops[method]


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


# -- the document ------------------------------------------------------------------------------------
def test_a_valid_openapi_3_1_document(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    validate(spec)  # openapi-spec-validator: raises on anything OpenAPI 3.1 does not allow


def test_every_2xx_answer_has_a_typed_schema(spec: dict[str, Any]) -> None:
    untyped = []
    for method, path, op in operations(spec):
        for status, response in op["responses"].items():
            if not status.startswith("2"):
                continue
            content = response.get("content", {})
            for kind, media in content.items():
                schema = media.get("schema", {})
                options = schema.get("anyOf", [schema])
                for option in options:
                    target = resolve(spec, option)
                    typed = bool(target.get("properties")) if kind == "application/json" else "type" in target
                    if not typed:
                        untyped.append(f"{method.upper()} {path} {status} {kind}")
            if not content:
                untyped.append(f"{method.upper()} {path} {status}: no content")
    assert not untyped, untyped


def test_bearer_scheme_and_a_scope_on_every_v1_operation(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes == {"bearer": {"type": "http", "scheme": "bearer", "description": schemes["bearer"]["description"]}}
    for scope in SCOPES:
        assert f"`{scope}`" in schemes["bearer"]["description"]
    for method, path, op in operations(spec):
        if path.startswith("/v1/"):
            (requirement,) = op.get("security", [{}])
            assert list(requirement) == ["bearer"] and len(requirement["bearer"]) == 1, (method, path)
            assert requirement["bearer"][0] in SCOPES


def test_the_api_reference_is_current(spec: dict[str, Any]) -> None:
    committed = (REPO / "docs" / "api-reference.md").read_text()
    assert render(spec) == committed, ("docs/api-reference.md is stale: run "
                                       "`python -m service.api.reference > docs/api-reference.md`")


def test_the_reference_script_prints_it() -> None:
    out = subprocess.run([sys.executable, "-m", "service.api.reference"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (REPO / "docs" / "api-reference.md").read_text()


# -- webhooks ----------------------------------------------------------------------------------------
def test_webhooks_describe_every_event_type(spec: dict[str, Any]) -> None:
    assert set(spec["webhooks"]) == set(events.EVENT_TYPES) == set(EVENTS)
    for name, operations_ in spec["webhooks"].items():
        op = operations_["post"]
        headers = {p["name"] for p in op["parameters"] if p["in"] == "header"}
        assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}, name
        body = resolve(spec, op["requestBody"]["content"]["application/json"]["schema"])
        kind = body["properties"]["type"]
        assert name in kind.get("enum", [kind.get("const")]), name


def built_events() -> list[events.Event | None]:
    """One event of every type, built by the monitor's own code from realistic inputs."""
    base = dict(task_id="t-1", algorithm="video_summary", scan_id="s-1", queue="default", params={
        "metadata": {"clinic": "north"}, "model_version": "v2"}, output_uri="/srv/out/s-1", attempt=1,
        created_at=1.0, queued_at=1.0, started_at=2.0, finished_at=3.0)
    done = TaskInfo(state=JobState.completed, result=result_for("s-1"), **base)  # type: ignore[arg-type]
    failed = TaskInfo(state=JobState.failed, error=TaskError.make("invalid_video", "unreadable", "tail"),
                      **base)  # type: ignore[arg-type]

    def unlinkable(uri: str) -> str:
        if uri.endswith("sheet.jpg"):
            raise StorageError("no credentials")
        return events.local_link(uri)

    run = Run(run_id="run_1", pipeline="triage", version="1", scan_id="s-1", scan_uri="/srv/s.mp4",
              metadata={"m": 1}, state="failed", error={"step": "b", "code": "timeout", "message": "slow",
                                                       "log_tail": ""},
              steps={"a": StepRun("video_summary", "1", "local", state="completed", task_id="t-a", attempt=1,
                                  result={"output_uri": "/srv/out/a", "outputs": {"files": ["x.json"]}, "n": 3}),
                     "b": StepRun("frame_stats", "2", "local", state="failed", task_id="t-b", attempt=1,
                                  error={"code": "timeout", "message": "slow", "log_tail": ""})},
              created_at=1.0, updated_at=2.0)
    return [
        events.from_change(Change("c1", "t-1", JobState.completed, 1, 3.0, done), unlinkable),
        events.from_change(Change("c2", "t-1", JobState.failed, 1, 3.0, failed)),
        events.from_change(Change("c3", "t-1", JobState.completed, 1, 3.0,  # no result: scan.failed
                                  TaskInfo(state=JobState.completed, **base))),  # type: ignore[arg-type]
        events.stalled(failed, "no_heartbeat", "no heartbeat for 61 s", 5.0),
        events.backlog("default", "breached", 1, 700.0, 12, 600.0, 5.0),
        events.launch_failed({"at": 5.0, "pool": "gpu", "reason": "no capacity",
                              "option": {"instance_type": "g5.xlarge", "market": "spot"}}),
        events.launch_failed({"at": 6.0, "pool": "gpu", "reason": "no option had capacity"}),
        events.degraded("output_links", "degraded", 1, 5.0, StorageError("no credentials")),
        events.degraded("output_links", "recovered", 1, 6.0),
        events.pipeline_outcome(run),
        events.pipeline_outcome(Run(run_id="run_2", pipeline="triage", version="1", scan_id="s-2", scan_uri="/s",
                                    metadata={}, state="completed", steps={}, created_at=1.0)),
        events.rejected(Rejection(ref="v1", source="s3", code="invalid_scan_uri", message="bad", scan_id=None,
                                  scan_uri="s3://b/k", at=5.0)),
    ]


def test_webhook_payloads_match_what_the_monitor_sends() -> None:
    built = built_events()
    assert {e.type for e in built if e} == set(events.EVENT_TYPES)
    for event in built:
        assert event is not None
        model, _ = EVENTS[event.type]
        parsed = model.model_validate_json(event.body())  # forbids fields the description does not name
        assert parsed.model_dump(mode="json", exclude_unset=True) == json.loads(event.body()), event.type


# -- error codes per route ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One request and the error it must get."""

    method: str
    path: str
    status: int
    code: str
    token: str | None = TOKEN
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    files: dict[str, Any] | None = None


def route_cases(scan_file: str) -> list[Case]:
    """Each route's own error cases (``prepare`` made a queued task of scan ``queued-1`` and a
    cancelled task of scan ``cancelled-1``)."""
    scan = {"scan_id": "s-new", "scan_uri": scan_file}
    return [
        Case("post", "/v1/scans", 400, "malformed_json", content=b"{nope", headers=JSON),
        Case("post", "/v1/scans", 422, "invalid_request", json={"scan_id": "s"}),
        Case("post", "/v1/scans", 422, "invalid_scan_uri", json={**scan, "scan_uri": "ftp://x/y.mp4"}),
        Case("post", "/v1/scans", 422, "scan_missing", json={**scan, "scan_uri": "missing.mp4"}),
        Case("post", "/v1/scans", 422, "forbidden_scan_uri", json={**scan, "scan_uri": "/etc/hostname"}),
        Case("post", "/v1/scans", 422, "unknown_algorithm", json={**scan, "algorithm": "nope"}),
        Case("post", "/v1/scans", 422, "invalid_params", json={**scan, "params": {"no_such_param": 1}}),
        Case("post", "/v1/scans", 422, "previous_scan_not_found", json={**scan, "previous_scan_id": "never"}),
        Case("post", "/v1/scans", 409, "previous_scan_not_completed", json={**scan, "previous_scan_id": "queued-1"}),
        Case("post", "/v1/scans", 409, "scan_conflict", json={"scan_id": "queued-1", "scan_uri": scan_file,
                                                              "metadata": {"other": True}}),
        Case("post", "/v1/scans", 422, "unknown_pipeline", json={**scan, "pipeline": "nope"}),
        Case("get", "/v1/scans/never", 404, "scan_not_found"),
        Case("post", "/v1/scans/never/retry", 404, "scan_not_found"),
        Case("post", "/v1/scans/queued-1/retry", 409, "scan_not_retryable"),
        Case("post", "/v1/scans/queued-1/retry", 400, "malformed_json", content=b"{",
             headers=JSON),
        Case("post", "/v1/scans/queued-1/retry", 422, "invalid_request", json={"other": 1}),
        Case("get", "/v1/tasks/never", 404, "task_not_found"),
        Case("post", "/v1/tasks/never/cancel", 404, "task_not_found"),
        Case("post", "/v1/tasks/{cancelled}/cancel", 409, "task_not_cancellable"),
        Case("get", "/v1/tasks/never/outputs", 404, "task_not_found"),
        Case("post", "/v1/models/video_summary/promote", 404, "model_version_not_found", json={"version": "v9"}),
        Case("post", "/v1/models/video_summary/promote", 422, "invalid_request", json={"version": "../x"}),
        Case("post", "/v1/models/video_summary/rollback", 409, "nothing_to_roll_back"),
        Case("get", "/v1/algorithms/nope", 404, "algorithm_not_found"),
        Case("post", "/v1/algorithms", 422, "invalid_request", files={"other": ("x", b"x")}),
        Case("post", "/v1/algorithms", 422, "invalid_bundle", files={"bundle": ("b.tgz", b"not a tarball")}),
        Case("post", "/v1/algorithms", 400, "malformed_request", files={"a": (None, "1"), "b": (None, "2")}),
        Case("post", "/v1/blobs", 422, "invalid_request", content=b""),
        Case("get", "/v1/pipelines/nope", 404, "pipeline_not_found"),
        Case("post", "/v1/pipelines", 415, "unsupported_media_type", content=b"x",
             headers={"content-type": "text/csv"}),
        Case("post", "/v1/pipelines", 422, "invalid_pipeline", content=b"steps: [", headers={
            "content-type": "application/yaml"}),
        Case("get", "/v1/runs/never", 404, "run_not_found"),
        Case("post", "/v1/runs/never/retry", 404, "run_not_found"),
        Case("post", "/v1/rejections", 422, "invalid_request", json={"ref": "r", "source": "ftp", "code": "c",
                                                                     "message": "m"}),
        Case("post", "/v1/rejections", 400, "malformed_json", content=b"[", headers=JSON),
    ]


def generic_cases(spec: dict[str, Any]) -> list[Case]:
    """For every operation: no token, a wrong token, a token without its scope, a body over the
    limit, a head over the limit."""
    out = []
    for method, path, op in operations(spec):
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        scopes = [s for r in op.get("security", []) for s in r.get("bearer", [])]
        if scopes:
            other = next(s for s in SCOPES if s not in scopes and not (s == "register" and "read" in scopes))
            out += [Case(method, concrete, 401, "unauthorized", token=None),
                    Case(method, concrete, 401, "invalid_token", token="not-a-token"),
                    Case(method, concrete, 403, "forbidden", token=ONLY[other])]
        out += [Case(method, concrete, 413, "payload_too_large", content=b"x" * (LIMIT + 1)),
                Case(method, concrete, 431, "request_header_too_large")]
    return out


def matching(spec: dict[str, Any], method: str, path: str) -> tuple[str, dict[str, Any]]:
    for template, ops in spec["paths"].items():
        if method in ops and re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path):
            return template, ops[method]
    raise AssertionError(f"no operation for {method.upper()} {path}")


def declared_codes(op: dict[str, Any], status: int) -> list[str]:
    response = op["responses"].get(str(status))
    if response is None:
        return []
    schema = response["content"]["application/json"]["schema"]
    return schema["properties"]["error"]["properties"]["code"]["enum"]


def answer(url: str, case: Case, cancelled: str) -> httpx.Response:
    headers = dict(case.headers)
    if case.token:
        headers["Authorization"] = f"Bearer {case.token}"
    path = case.path.replace("{cancelled}", cancelled)
    if case.status == 431:
        return oversized_head(url, case.method, path)
    return httpx.request(case.method, url + path, json=case.json, content=case.content, files=case.files,
                         headers=headers, timeout=10)


def oversized_head(url: str, method: str, path: str) -> httpx.Response:
    """What the server answers a request head one byte over its limit, sent incomplete (a complete
    head read in one chunk is never counted: see ``service.api.server``)."""
    host, port = url.removeprefix("http://").split(":")
    start = f"{method.upper()} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nX-Pad: ".encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(start + b"a" * (MAX_HEADER_BYTES + 1 - len(start)))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return httpx.Response(int(status_line.split()[1]), content=rest.partition(b"\r\n\r\n")[2],
                          headers=JSON)


def prepare(api_server: ApiServer, settings: Settings) -> tuple[str, str]:
    """A scan file, a queued task (scan queued-1) and a cancelled one; the scan file's path and the
    cancelled task's id."""
    assert settings.data_root is not None
    settings.data_root.mkdir(parents=True, exist_ok=True)
    (settings.data_root / "scan.mp4").write_bytes(b"not decoded at enqueue")
    with api_server.client() as client:
        for scan_id in ("queued-1", "cancelled-1"):
            answer_ = client.post("/v1/scans", json={"scan_id": scan_id, "scan_uri": "scan.mp4"})
            assert answer_.status_code == 202, answer_.text
        cancelled = answer_.json()["task_id"]
        assert client.post(f"/v1/tasks/{cancelled}/cancel").status_code == 200
    return "scan.mp4", cancelled


def test_every_error_code_a_route_answers_is_in_its_enum(api_server: ApiServer, spec: dict[str, Any],
                                                         settings: Settings) -> None:
    scan_file, cancelled = prepare(api_server, settings)
    cases = route_cases(scan_file) + generic_cases(spec)
    hit: set[tuple[str, str]] = set()
    problems = []
    for case in cases:
        template, op = matching(spec, case.method, case.path.replace("{cancelled}", cancelled))
        hit.add((case.method, template))
        got = answer(api_server.url, case, cancelled)
        is_json = got.headers.get("content-type", "").startswith("application/json")
        code = got.json().get("error", {}).get("code") if is_json else None
        where = f"{case.method.upper()} {case.path} ({case.code})"
        if (got.status_code, code) != (case.status, case.code):
            problems.append(f"{where}: answered {got.status_code} {code}: {got.text[:200]}")
        elif code not in declared_codes(op, got.status_code):
            problems.append(f"{where}: {got.status_code} {code} is not in {template}'s declared "
                            f"{declared_codes(op, got.status_code)}")
    assert not problems, "\n".join(problems)
    assert hit == {(m, p) for m, p, _ in operations(spec)}


def test_rate_limited_is_declared_where_it_is_answered(settings: Settings) -> None:
    limited = load_settings(**{**settings.model_dump(), "api_rate_limit_per_s": 0.001, "api_rate_limit_burst": 1})
    backend = open_backend(limited)
    server = ApiServer(limited, backend)
    server.start()
    try:
        spec = httpx.get(f"{server.url}/openapi.json").json()
        assert httpx.get(f"{server.url}/healthz", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        headers = {"Authorization": f"Bearer {TOKEN}"}
        httpx.get(f"{server.url}/v1/queues", headers=headers)  # spends the burst of one
        for method, path, op in operations(spec):
            if not op.get("security"):
                continue
            got = httpx.request(method, server.url + re.sub(r"\{[^}]+\}", "x", path), headers=headers)
            assert got.status_code == 429 and got.json()["error"]["code"] == "rate_limited", (method, path)
            assert "rate_limited" in declared_codes(op, 429), (method, path)
    finally:
        server.stop()
        backend.close()
