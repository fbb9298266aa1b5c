"""The HTTP API over real uvicorn on loopback: enqueue, read back, refuse bad input, report
worker-side failures of files that only look like videos."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from service.api.auth import TokenAuth
from tests.conftest import READ_TOKEN, TOKEN, ApiServer, Workers, wait_for


def post_scan(client: httpx.Client, scan_id: str, scan_uri: str, **extra: Any) -> httpx.Response:
    return client.post("/v1/scans", json={"scan_id": scan_id, "scan_uri": scan_uri, **extra})


def wait_task_terminal(client: httpx.Client, task_id: str, timeout_s: float = 90.0) -> dict[str, Any]:
    """Poll GET /v1/tasks/{id} until the task is completed, failed or stopped; returns its JSON."""

    def done() -> dict[str, Any] | None:
        response = client.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        return body if body["state"] in ("completed", "failed", "stopped") else None

    return wait_for(done, timeout_s, interval_s=0.2, what=f"task {task_id} to end")  # type: ignore[return-value]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"].strip(), body
    return body["error"]


# -- the happy path ------------------------------------------------------------------------


def test_submit_read_back_and_repeat(api: ApiServer, make_video: Callable[..., dict]) -> None:
    make_video("scan-1.mp4", frames=24)
    with api.client() as client:
        first = post_scan(client, "scan-1", "scan-1.mp4")
        assert first.status_code == 202, first.text
        body = first.json()
        task_id = body["task_id"]
        assert task_id
        assert body["scan_id"] == "scan-1"
        assert body["algorithm"] == "video_summary"
        assert body["state"] == "queued"
        assert body["created"] is True
        assert body["links"] == {"task": f"/v1/tasks/{task_id}", "scan": "/v1/scans/scan-1"}

        again = post_scan(client, "scan-1", "scan-1.mp4")
        assert again.status_code == 200, again.text
        assert again.json()["task_id"] == task_id
        assert again.json()["created"] is False
        assert again.json()["state"] == "queued"

        task = client.get(body["links"]["task"])
        assert task.status_code == 200, task.text
        task_body = task.json()
        assert task_body["task_id"] == task_id
        assert task_body["scan_id"] == "scan-1"
        assert task_body["state"] == "queued"
        assert Path(task_body["params"]["scan_uri"]).name == "scan-1.mp4"
        assert task_body["links"] == body["links"]

        scan = client.get(body["links"]["scan"])
        assert scan.status_code == 200, scan.text
        assert scan.json()["scan_id"] == "scan-1"
        assert [t["task_id"] for t in scan.json()["tasks"]] == [task_id]

        queues = client.get("/v1/queues")
        assert queues.status_code == 200, queues.text
        by_name = {q["queue"]: q for q in queues.json()["queues"]}
        assert by_name["default"]["pending"] == 1
        assert by_name["default"]["running"] == 0
        assert by_name["default"]["workers"] == 0

    with api.client(None) as anonymous:
        health = anonymous.get("/healthz")
        assert health.status_code == 200, health.text
        assert health.json()["status"] == "ok"

        spec = anonymous.get("/openapi.json")
        assert spec.status_code == 200
        assert "/v1/scans" in spec.json()["paths"]
        assert "post" in spec.json()["paths"]["/v1/scans"]

        docs = anonymous.get("/docs")
        assert docs.status_code == 200
        assert "text/html" in docs.headers["content-type"]
        assert "/openapi.json" in docs.text


def test_read_token_can_read(api: ApiServer, make_video: Callable[..., dict]) -> None:
    make_video("scan-r.mp4", frames=12)
    with api.client() as client:
        task_id = post_scan(client, "scan-r", "scan-r.mp4").json()["task_id"]
    with api.client(READ_TOKEN) as reader:
        assert reader.get(f"/v1/tasks/{task_id}").status_code == 200
        assert reader.get("/v1/scans/scan-r").status_code == 200
        assert reader.get("/v1/queues").status_code == 200


# -- bad input -----------------------------------------------------------------------------

OVERSIZE = 64 * 1024 + 4096  # a little over the default max_body_bytes (64 KiB)


def _oversized_json() -> bytes:
    return json.dumps({"scan_id": "big", "scan_uri": "exists.mp4", "metadata": {"pad": "x" * OVERSIZE}}).encode()


def _chunked(data: bytes, size: int = 8192) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@dataclass
class Bad:
    """One bad request and the exact answer it must get."""

    id: str
    status: int
    code: str
    body: dict[str, Any] | None = None  # sent as JSON to POST /v1/scans
    method: str = "POST"
    path: str = "/v1/scans"
    token: str | None = TOKEN
    content: bytes | None = None  # raw bytes sent as application/json instead of ``body``
    chunked: bool = False  # send ``content`` without Content-Length (Transfer-Encoding: chunked)
    raw_json: Any = None  # any JSON value instead of ``body``

    def send(self, client: httpx.Client) -> httpx.Response:
        if self.content is not None:
            # A generator makes httpx send the body chunked; build it afresh for every send.
            content = _chunked(self.content) if self.chunked else self.content
            return client.request(self.method, self.path, content=content,
                                  headers={"content-type": "application/json"})
        payload = self.raw_json if self.raw_json is not None else self.body
        return client.request(self.method, self.path, json=payload)


def _good(**overrides: Any) -> dict[str, Any]:
    return {"scan_id": "s-1", "scan_uri": "exists.mp4", **overrides}


BAD_REQUESTS = [
    Bad("malformed_json", 400, "malformed_json",
        content=b'{"scan_id": "s-1", "scan_uri": '),
    Bad("missing_scan_id", 422, "invalid_request", body={"scan_uri": "exists.mp4"}),
    Bad("missing_scan_uri", 422, "invalid_request", body={"scan_id": "s-1"}),
    Bad("empty_object", 422, "invalid_request", body={}),
    Bad("json_array", 422, "invalid_request", raw_json=[_good()]),
    Bad("scan_id_bad_chars", 422, "invalid_request", body=_good(scan_id="a/b?c")),
    Bad("scan_id_leading_dot", 422, "invalid_request", body=_good(scan_id="../x")),
    Bad("scan_id_too_long", 422, "invalid_request", body=_good(scan_id="a" * 129)),
    Bad("extra_field", 422, "invalid_request", body=_good(priority="high")),
    Bad("metadata_not_object", 422, "invalid_request", body=_good(metadata=[1, 2])),
    Bad("unknown_algorithm", 422, "unknown_algorithm", body=_good(algorithm="no_such_algorithm")),
    Bad("traversal", 422, "invalid_scan_uri", body=_good(scan_uri="../etc/passwd")),
    Bad("traversal_inside_root", 422, "invalid_scan_uri", body=_good(scan_uri="sub/../exists.mp4")),
    Bad("file_outside_root", 422, "forbidden_scan_uri", body=_good(scan_uri="file:///etc/passwd")),
    Bad("absolute_outside_root", 422, "forbidden_scan_uri", body=_good(scan_uri="/etc/passwd")),
    Bad("cloud_metadata", 422, "forbidden_scan_uri",
        body=_good(scan_uri="https://169.254.169.254/latest/meta-data")),
    Bad("loopback", 422, "forbidden_scan_uri", body=_good(scan_uri="https://127.0.0.1/x.mp4")),
    Bad("private", 422, "forbidden_scan_uri", body=_good(scan_uri="https://10.0.0.1/x.mp4")),
    Bad("ipv6_loopback", 422, "forbidden_scan_uri", body=_good(scan_uri="https://[::1]/x.mp4")),
    Bad("ipv4_mapped_loopback", 422, "forbidden_scan_uri", body=_good(scan_uri="https://[::ffff:127.0.0.1]/x.mp4")),
    Bad("plain_http", 422, "invalid_scan_uri", body=_good(scan_uri="http://93.184.216.34/x.mp4")),
    Bad("ftp_scheme", 422, "invalid_scan_uri", body=_good(scan_uri="ftp://example.com/x.mp4")),
    Bad("scan_missing", 422, "scan_missing", body=_good(scan_uri="missing.mp4")),
    Bad("scan_is_directory", 422, "scan_missing", body=_good(scan_uri="sub")),
    Bad("oversized_content_length", 413, "payload_too_large", content=_oversized_json()),
    Bad("oversized_chunked", 413, "payload_too_large", content=_oversized_json(), chunked=True),
    Bad("missing_token", 401, "unauthorized", body=_good(), token=None),
    Bad("wrong_token", 401, "invalid_token", body=_good(), token="not-a-token"),
    Bad("token_prefix", 401, "invalid_token", body=_good(), token=TOKEN[:-1]),
    Bad("read_token_posts", 403, "forbidden", body=_good(), token=READ_TOKEN),
    Bad("unknown_task", 404, "task_not_found", method="GET", path="/v1/tasks/0123456789abcdef"),
    Bad("unknown_scan", 404, "scan_not_found", method="GET", path="/v1/scans/never-submitted"),
    Bad("unknown_route", 404, "not_found", method="GET", path="/v1/nothing-here"),
    Bad("wrong_method", 405, "method_not_allowed", method="DELETE", path="/v1/scans"),
    Bad("wrong_method_health", 405, "method_not_allowed", method="POST", path="/healthz", token=None),
]


@pytest.fixture
def scan_files(data_root: Path) -> Path:
    """An existing (content-free) scan file and a directory under the data root."""
    (data_root / "exists.mp4").write_bytes(b"not decoded at enqueue")
    (data_root / "sub").mkdir()
    return data_root


@pytest.mark.parametrize("bad", BAD_REQUESTS, ids=[b.id for b in BAD_REQUESTS])
def test_bad_request_is_refused_and_service_stays_up(api: ApiServer, scan_files: Path, bad: Bad) -> None:
    with api.client(bad.token) as client:
        response = bad.send(client)
    error = assert_error(response, bad.status, bad.code)
    if bad.status == 401:
        assert response.headers.get("www-authenticate") == "Bearer"
    if bad.code == "payload_too_large":
        assert str(64 * 1024) in error["message"]
    if bad.chunked:  # the premise: no Content-Length for the server to check up front
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"

    with api.client() as client:
        assert client.get("/healthz").status_code == 200
        good = post_scan(client, "after-bad", "exists.mp4")
        assert good.status_code == 202, good.text
        # Nothing the bad request carried became a task: the good one is the only one queued.
        by_name = {q["queue"]: q for q in client.get("/v1/queues").json()["queues"]}
        assert by_name["default"]["pending"] == 1


def test_every_bad_request_in_a_row_then_service_still_works(api: ApiServer, scan_files: Path) -> None:
    """One server takes the whole list back to back (connections reset by 413 included)."""
    for bad in BAD_REQUESTS:
        with api.client(bad.token) as client:
            assert_error(bad.send(client), bad.status, bad.code)
    with api.client() as client:
        assert client.get("/healthz").status_code == 200
        good = post_scan(client, "after-all-bad", "exists.mp4")
        assert good.status_code == 202, good.text
        assert client.get(good.json()["links"]["task"]).json()["state"] == "queued"


def test_body_just_under_the_limit_is_read(api: ApiServer, scan_files: Path) -> None:
    """The limit refuses only what exceeds it: a padded body below it is accepted, chunked too."""
    body = json.dumps({"scan_id": "padded", "scan_uri": "exists.mp4", "metadata": {"pad": ""}})
    pad = 64 * 1024 - len(body) - 16
    data = json.dumps({"scan_id": "padded", "scan_uri": "exists.mp4", "metadata": {"pad": "x" * pad}}).encode()
    assert len(data) <= 64 * 1024
    with api.client() as client:
        response = client.post("/v1/scans", content=_chunked(data), headers={"content-type": "application/json"})
        assert response.status_code == 202, response.text
        task = client.get(response.json()["links"]["task"]).json()
        assert len(task["params"]["metadata"]["pad"]) == pad


# -- files that pass enqueue but are not videos --------------------------------------------


def test_non_videos_fail_at_the_worker_with_invalid_video(
    api: ApiServer, workers: Workers, data_root: Path, make_video: Callable[..., dict]
) -> None:
    (data_root / "text.mp4").write_text("this is a text file, not an mp4\n" * 50)
    (data_root / "empty.mp4").write_bytes(b"")
    make_video("whole.mp4", frames=48)
    whole = (data_root / "whole.mp4").read_bytes()
    (data_root / "truncated.mp4").write_bytes(whole[: len(whole) // 2])

    with api.client() as client:
        task_ids = {}
        for name in ("text", "empty", "truncated"):
            response = post_scan(client, f"bad-{name}", f"{name}.mp4")
            assert response.status_code == 202, response.text
            task_ids[name] = response.json()["task_id"]

        workers.start(1)
        for name, task_id in task_ids.items():
            task = wait_task_terminal(client, task_id)
            assert task["state"] == "failed", (name, task)
            assert task["result"] is None, (name, task)
            error = task["error"]
            assert error["code"] == "invalid_video", (name, error)
            message = error["message"]
            assert isinstance(message, str) and len(message.strip()) > 10, (name, error)
            assert "Traceback" not in message, (name, error)

        assert client.get("/healthz").status_code == 200


# -- tokens --------------------------------------------------------------------------------


def test_token_scopes_and_prefixes() -> None:
    auth = TokenAuth({SecretStr("alpha-token-123"): ["enqueue", "read"], SecretStr("beta-token-456"): ["read"]})
    assert auth.scopes_for("alpha-token-123") == frozenset({"enqueue", "read"})
    assert auth.scopes_for("beta-token-456") == frozenset({"read"})
    assert auth.scopes_for("alpha-token-12") is None  # a prefix is not the token
    assert auth.scopes_for("alpha") is None
    assert auth.scopes_for("alpha-token-1234") is None  # nor is an extension
    assert auth.scopes_for("ALPHA-TOKEN-123") is None
    assert auth.scopes_for("") is None
    assert auth.scopes_for("é-not-ascii") is None
    assert TokenAuth({}).scopes_for("anything") is None


def test_concurrent_posts_share_commits_and_each_gets_its_answer(api, backend, make_video, monkeypatch) -> None:
    """Group commit: 60 concurrent POSTs (new scans, repeats, unknown algorithms) → the right answer
    each, from a handful of store transactions (one per batch), not one each."""
    import asyncio
    import threading
    import time

    from service.api import batching
    from service.enqueue import Enqueuer

    make_video("batch.mp4", frames=12)
    bodies = [{"scan_id": f"b-{i}", "scan_uri": "batch.mp4"} for i in range(40)]
    bodies += [{"scan_id": f"b-{i}", "scan_uri": "batch.mp4"} for i in range(10)]  # repeats
    bodies += [{"scan_id": f"x-{i}", "scan_uri": "batch.mp4", "algorithm": "nope"} for i in range(10)]

    # Counted on the real parts: requests handed to the batcher (each is prepared right before),
    # the batches it flushes, and the write transactions (commits) on the store's SQLite file.
    prepared: list[str] = []
    prepare = Enqueuer.prepare

    def counting_prepare(self, request):
        prepared.append(request.scan_id)
        return prepare(self, request)

    batches: list[int] = []
    gate = threading.Event()  # the first batch waits until every request is in: the rest must share
    submit_items = batching.submit_items

    def gated_submit_items(backend_, items):
        batches.append(len(items))
        if len(batches) == 1:
            assert gate.wait(60), "the test never let the first batch through"
        return submit_items(backend_, items)

    commits: list[bool] = []
    tx = backend.db.tx

    def counting_tx(write: bool = True):
        if write:
            commits.append(True)
        return tx(write)

    monkeypatch.setattr(Enqueuer, "prepare", counting_prepare)
    monkeypatch.setattr(batching, "submit_items", gated_submit_items)
    monkeypatch.setattr(backend.db, "tx", counting_tx)

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {TOKEN}"},
                                     timeout=90) as client:
            posts = [asyncio.ensure_future(client.post("/v1/scans", json=b)) for b in bodies]
            try:
                deadline = time.monotonic() + 60
                while len(prepared) < len(bodies) and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            finally:
                gate.set()
            return await asyncio.gather(*posts)

    responses = asyncio.run(post_all())
    assert len(prepared) == len(bodies)
    assert sum(batches) == len(bodies)
    # Whatever the first batch took, every other request came while it waited and shares one more
    # batch (two at most: the last request may be counted a moment before the batcher has it).
    assert len(batches) <= 3 and max(batches) > 1, batches
    assert 1 <= len(commits) <= len(batches) < len(bodies), (commits, batches)
    statuses = [r.status_code for r in responses]
    assert statuses[50:] == [422] * 10
    assert all(r.json()["error"]["code"] == "unknown_algorithm" for r in responses[50:])
    assert statuses[:40].count(202) + statuses[:50].count(200) >= 40
    first_ids = {r.json()["scan_id"]: r.json()["task_id"] for r in responses[:50]}
    assert len(first_ids) == 40
    for r in responses[:50]:
        assert r.json()["task_id"] == first_ids[r.json()["scan_id"]]
    assert sum(r.json()["created"] for r in responses[:50]) == 40
    assert backend.queue_stats("default").pending == 40
