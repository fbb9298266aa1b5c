"""The public client against a real HTTP server: a small in-memory imitation of scantide's API,
served by uvicorn on a loopback port. A task advances one step each time it is read (ending after
1 to 5 reads), so tests wait for events (reads, results), never for the clock."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import socket
import subprocess
import sys
import tarfile
import threading
import traceback
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import as_completed, wait
from pathlib import Path

import cloudpickle
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from scantide import (
    AuthError,
    Client,
    Conflict,
    InvalidRequest,
    Knot,
    NotFound,
    ScantideError,
    SignatureError,
    TaskFailed,
    Unavailable,
    sign,
    verify_signature,
)
from scantide.errors import error_from_response
from scantide.knot import SCANTIDE_TOKEN_ENV, SCANTIDE_URL_ENV
from tests.conftest import free_port

TOKEN = "client-test-token"
SCAN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")  # service.domain.SCAN_ID_PATTERN
BUILTIN = ("video_summary", "always_fail", "hold")  # hold: stays as params["state"] until the test moves it
CRASH_LOG = "Traceback (most recent call last):\n  File \"run.py\", line 3\nValueError: bad frame 17"


def err(status: int, code: str, message: str = "", headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message or code}}, status, headers=headers)


class FakeScantide:
    """The endpoints the client uses, in memory; ``faults[(method, path)]`` answers first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tasks: dict[str, dict] = {}
        self.keys: dict[tuple[str, str], str] = {}
        self.blobs: dict[str, bytes] = {}
        self.bundles: dict[tuple[str, str], tuple[str, bytes, dict]] = {}
        self.calls: Counter[tuple[str, str]] = Counter()
        self.faults: defaultdict[tuple[str, str], list[tuple[int, dict]]] = defaultdict(list)
        routes = [Route("/v1/scans", self.submit, methods=["POST"]), Route("/v1/tasks/{tid}", self.get_task),
                  Route("/v1/tasks/{tid}/cancel", self.cancel, methods=["POST"]),
                  Route("/v1/tasks/{tid}/outputs", self.outputs), Route("/v1/algorithms", self.algorithms),
                  Route("/v1/algorithms", self.register, methods=["POST"]),
                  Route("/v1/algorithms/{name}", self.algorithm), Route("/v1/blobs", self.blob, methods=["POST"])]
        self.app = Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=self.gate)])

    async def gate(self, request: Request, call_next):
        key = (request.method, request.url.path)
        with self.lock:
            self.calls[key] += 1
            fault = self.faults[key].pop(0) if self.faults[key] else None
        if fault and fault[0] == 502:  # done, but the answer is lost on the way back (a proxy timing out)
            await call_next(request)
            return err(502, "bad_gateway")
        if fault:
            return err(fault[0], "backend_unavailable" if fault[0] == 503 else "rate_limited", headers=fault[1])
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return err(401, "unauthorized", "unknown token")
        return await call_next(request)

    async def submit(self, request: Request) -> JSONResponse:
        body = await request.json()
        algorithm, scan_id = body.get("algorithm") or "video_summary", str(body.get("scan_id"))
        if not SCAN_ID.match(scan_id):
            return err(422, "invalid_request", f"scan_id: {scan_id!r} does not match {SCAN_ID.pattern}")
        if algorithm not in BUILTIN and not any(n == algorithm for n, _ in self.bundles):
            return err(422, "unknown_algorithm", f"no algorithm {algorithm}")
        with self.lock:
            task_id = self.keys.get((algorithm, scan_id))
            created = task_id is None
            if created:
                task_id = self.keys[(algorithm, scan_id)] = f"t-{len(self.tasks):04d}"
                params = body.get("params") or {}
                self.tasks[task_id] = {
                    "task_id": task_id, "scan_id": scan_id, "algorithm": algorithm,
                    "state": params.get("state", "queued"), "params": params, "scan_uri": body["scan_uri"],
                    "version": body.get("algorithm_version"), "result": None, "error": None, "progress": None,
                    "reads": 0, "polls": params.get("polls", 1 + len(self.tasks) % 5)}  # reads until it ends
            t = self.tasks[task_id]
            return JSONResponse({**{k: t[k] for k in ("task_id", "scan_id", "algorithm", "state")},
                                 "created": created, "links": {}}, 202 if created else 200)

    async def get_task(self, request: Request) -> JSONResponse:
        with self.lock:
            t = self.tasks.get(request.path_params["tid"])
            if t is None:
                return err(404, "task_not_found")
            self.advance(t)
            return JSONResponse({k: v for k, v in t.items() if k not in ("reads", "polls")})

    def advance(self, t: dict) -> None:
        if t["state"] in ("completed", "failed", "stopped") or t["algorithm"] == "hold":
            return
        t["reads"] += 1
        t["state"], t["progress"] = "running", min(t["reads"] / t["polls"], 1.0)
        if t["reads"] < t["polls"]:
            return
        if t["algorithm"] == "always_fail":
            t["state"], t["error"] = "failed", {"code": "algorithm_crashed", "message": "exit 1", "log_tail": CRASH_LOG}
        elif t["algorithm"] == "video_summary":
            t["state"], t["result"] = "completed", {"scan_id": t["scan_id"], "uri": t["scan_uri"]}
        else:  # a Knot function: run it here, as a worker would
            _, bundle, descriptor = self.bundles[(t["algorithm"], t["version"])]
            with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
                func = cloudpickle.loads(tar.extractfile(descriptor["function"]).read())
            try:
                value = cloudpickle.dumps(func(cloudpickle.loads(self.blobs[t["scan_uri"]])))
                t["state"], t["result"] = "completed", {"return_pickle": base64.b64encode(value).decode()}
            except Exception as exc:  # noqa: BLE001 - the function's failure is the task's
                t["state"] = "failed"
                t["error"] = {"code": "algorithm_crashed", "message": repr(exc), "log_tail": traceback.format_exc()}

    async def cancel(self, request: Request) -> JSONResponse:
        with self.lock:
            t = self.tasks[request.path_params["tid"]]
            if t["state"] != "queued":
                return err(409, "task_not_cancellable", f"task is {t['state']}")
            t["state"], t["error"] = "stopped", {"code": "cancelled", "message": "cancelled", "log_tail": ""}
            return JSONResponse(t)

    async def outputs(self, request: Request) -> JSONResponse:
        tid = request.path_params["tid"]
        return JSONResponse({"outputs": {"summary.json": f"https://bucket.example/{tid}/summary.json"}})

    async def algorithms(self, request: Request) -> JSONResponse:
        return JSONResponse({"algorithms": [{"name": n, "version": "1"} for n in BUILTIN]})

    async def algorithm(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        versions = [d for (n, _), (_, _, d) in self.bundles.items() if n == name]
        return JSONResponse({"name": name, "latest": versions[-1]["version"], "versions": versions}) if versions \
            else err(404, "algorithm_not_found")

    async def register(self, request: Request) -> JSONResponse:
        data = await (await request.form())["bundle"].read()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            descriptor = json.loads(tar.extractfile("scantide-algorithm.json").read())
        key, sha = (descriptor["name"], descriptor["version"]), hashlib.sha256(data).hexdigest()
        if key in self.bundles and self.bundles[key][0] != sha:
            return err(409, "algorithm_version_exists")
        created = key not in self.bundles
        self.bundles[key] = (sha, data, descriptor)
        return JSONResponse({"name": key[0], "version": key[1], "sha256": sha, "created": created},
                            201 if created else 200)

    async def blob(self, request: Request) -> JSONResponse:
        data = await request.body()
        uri = f"blob://{hashlib.sha256(data).hexdigest()}"
        self.blobs[uri] = data
        return JSONResponse({"uri": uri, "sha256": uri[7:], "size": len(data)}, 201)

    def set_state(self, task_id: str, state: str, result: dict | None = None) -> None:
        with self.lock:
            self.tasks[task_id].update(state=state, result=result)


@pytest.fixture
def fake() -> Iterator[FakeScantide]:
    fake = FakeScantide()
    sock = socket.create_server(("127.0.0.1", 0))  # bound here and handed over: the port cannot be taken
    server = uvicorn.Server(uvicorn.Config(fake.app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        thread.join(0.02)
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield fake
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def pauses() -> list[float]:
    return []


@pytest.fixture
def client(fake: FakeScantide, pauses: list[float]) -> Iterator[Client]:
    with Client(fake.url, TOKEN, poll_s=0.01, backoff_s=0.01, retries=3, sleep=pauses.append) as c:
        yield c


def test_retries_on_503_and_429_honouring_retry_after(fake, client, pauses):
    fake.faults[("POST", "/v1/scans")] = [(503, {}), (429, {"Retry-After": "7"}), (429, {"Retry-After": "3600"})]
    task = client.submit("s-1", "https://x/a.mp4")
    assert fake.calls[("POST", "/v1/scans")] == 4 and task.state == "queued"
    assert 0 < pauses[0] <= 0.01 and pauses[1:] == [7.0, 30.0]  # jittered backoff, then Retry-After, capped
    fake.faults[("GET", f"/v1/tasks/{task.task_id}")] = [(503, {})] * 4
    with pytest.raises(Unavailable) as info:
        client.task(task.task_id)
    assert info.value.code == "backend_unavailable" and fake.calls[("GET", f"/v1/tasks/{task.task_id}")] == 4


def test_connection_refused_is_unavailable_after_retries(pauses):
    with Client(f"http://127.0.0.1:{free_port()}", TOKEN, retries=2, sleep=pauses.append) as c:
        with pytest.raises(Unavailable) as info:
            c.algorithms()
    assert info.value.code == "connection_failed" and info.value.status is None and len(pauses) == 2


def test_errors_are_typed_and_keep_the_code(fake, client):
    with pytest.raises(InvalidRequest) as bad:
        client.submit("s-1", "https://x/a.mp4", algorithm="nope")
    assert (bad.value.code, bad.value.status) == ("unknown_algorithm", 422)
    assert fake.calls[("POST", "/v1/scans")] == 1  # never retried
    with pytest.raises(NotFound, match="task_not_found") as missing:
        client.task("t-9999")
    assert missing.value.code == "task_not_found"
    with Client(fake.url, "wrong", retries=0) as stranger, pytest.raises(AuthError) as auth:
        stranger.algorithms()
    assert (auth.value.code, auth.value.status) == ("unauthorized", 401)
    assert isinstance(error_from_response(409, {"error": {"code": "algorithm_version_exists"}}), Conflict)
    proxy = error_from_response(502, None, "<html>Bad   gateway</html>")
    assert isinstance(proxy, Unavailable) and proxy.message == "HTTP 502: <html>Bad gateway</html>"
    assert type(error_from_response(500, {})) is ScantideError


def test_submit_task_wait_outputs(client):
    task = client.submit("s-2", "https://x/b.mp4", params={"polls": 3}, metadata={"site": "a"})
    again = client.submit("s-2", "https://x/b.mp4")
    assert again.task_id == task.task_id and again.data["created"] is False and task.data["created"] is True
    assert task.wait(timeout=30) is task and task.done and task.state == "completed"
    assert task.result == {"scan_id": "s-2", "uri": "https://x/b.mp4"} and task.progress == 1.0
    assert task.outputs() == {"summary.json": f"https://bucket.example/{task.task_id}/summary.json"}
    assert "completed" in repr(client.task(task.task_id))
    with pytest.raises(TimeoutError):
        client.submit("s-3", "u", "hold").wait(timeout=0.05)


def test_map_resolves_futures_as_tasks_complete(fake, client):
    uris = [f"https://x/{i}.mp4" for i in range(20)]
    futures = client.map("video_summary", uris, scan_ids=[f"m-{i}" for i in range(20)])
    assert {t["polls"] for t in fake.tasks.values()} == {1, 2, 3, 4, 5}  # they end over several rounds
    done = [f.result() for f in as_completed(futures, timeout=60)]
    assert sorted(r["scan_id"] for r in done) == sorted(f"m-{i}" for i in range(20))
    assert [f.result()["uri"] for f in futures] == uris
    default_ids = client.map("video_summary", ["u1", "u2"])
    assert not wait(default_ids, timeout=60).not_done
    assert re.fullmatch(r"map-[0-9a-f]{8}-1", default_ids[1].result()["scan_id"])
    with pytest.raises(ValueError, match="scan_ids"):
        client.map("video_summary", ["a", "b"], scan_ids=["only-one"])


def test_a_failed_task_raises_task_failed_with_its_log(client):
    [future] = client.map("always_fail", ["https://x/bad.mp4"])
    with pytest.raises(TaskFailed) as info:
        future.result(timeout=60)
    assert (info.value.code, info.value.task_id, info.value.state) == ("algorithm_crashed", future.task_id, "failed")
    assert "ValueError: bad frame 17" in info.value.log_tail and "ValueError: bad frame 17" in str(info.value)


def test_cancel_stops_queued_tasks_only(fake, client):
    queued, running = client.submit("c-1", "u", "hold"), client.submit("c-2", "u", "hold", {"state": "running"})
    assert client.cancel(queued.task_id) is True and queued.refresh().state == "stopped"
    assert queued.error["code"] == "cancelled"
    assert client.cancel(running.task_id) is False
    f_queued = client.map("hold", ["u", "u"], {"state": "queued"})
    f_running = client.map("hold", ["u"], {"state": "running"})[0]
    assert f_queued[0].cancel() is True and f_queued[0].cancelled()
    assert fake.tasks[f_queued[0].task_id]["state"] == "stopped"
    assert f_running.cancel() is False and not f_running.cancelled()
    fake.set_state(f_running.task_id, "completed", {"ok": True})
    assert f_running.result(timeout=60) == {"ok": True}
    client.close()  # nothing will resolve what is still pending
    with pytest.raises(Unavailable, match="closed"):
        f_queued[1].result(timeout=60)


def test_a_cancel_whose_answer_was_lost_reports_the_cancel(fake, client, pauses):
    """The retry of a cancel that went through is answered 409: the task says it was cancelled."""
    queued = client.submit("c-3", "u", "hold")
    fake.faults[("POST", f"/v1/tasks/{queued.task_id}/cancel")] = [(502, {})]
    assert client.cancel(queued.task_id) is True
    assert fake.calls[("POST", f"/v1/tasks/{queued.task_id}/cancel")] == 2
    finished = client.submit("c-4", "u", "hold", {"state": "completed"})
    assert client.cancel(finished.task_id) is False


def triple_or_fail(x: int) -> int:
    if x == 3:
        raise ValueError("three is not welcome")
    return x * 3


def test_knot_registers_a_bundle_of_the_pickled_function(fake, client, tmp_path: Path):
    knot = Knot(triple_or_fail, client, ["numpy>=1.26"], memory_gib=2.0)
    assert re.fullmatch(r"fn_triple_or_fail_[0-9a-f]{8}", knot.name) and len(knot.version) == 12
    assert knot.register()["created"] is True and knot.register()["created"] is True  # once
    assert fake.calls[("POST", "/v1/algorithms")] == 1
    again = Knot(triple_or_fail, client, ["numpy>=1.26"], memory_gib=2.0)
    assert again.register()["created"] is False  # same function and settings: same content, same version
    sha, bundle, _ = fake.bundles[(knot.name, knot.version)]
    assert bundle == knot.bundle() and sha == hashlib.sha256(bundle).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        assert sorted(tar.getnames()) == ["function.pkl", "scantide-algorithm.json"]
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
        descriptor = json.loads(tar.extractfile("scantide-algorithm.json").read())
        pickled = tar.extractfile("function.pkl").read()
    assert cloudpickle.loads(pickled)(5) == 15
    # A worker has no tests package: the function travels by value, not as a module and a name.
    worker = subprocess.run([sys.executable, "-c", "import sys, cloudpickle\n"
                             "print(cloudpickle.loads(sys.stdin.buffer.read())(5))"],
                            input=pickled, cwd=tmp_path, capture_output=True, timeout=120)
    assert worker.stdout.strip() == b"15", worker.stderr.decode()
    assert descriptor["function"] == "function.pkl" and descriptor["requirements"] == ["numpy>=1.26"]
    assert descriptor["resources"]["memory_gib"] == 2.0 and descriptor["inputs"] == {"kinds": ["any"]}
    assert descriptor["description"] == "Knot function triple_or_fail"
    assert Knot(lambda v: v, client).name.startswith("fn_lambda_")
    assert len(Knot(type("x" * 60, (), {"__call__": lambda s: 1})(), client).name) <= 41


def test_knot_map_returns_the_function_values(fake, client):
    offset = 100
    knot = Knot(lambda x: {"value": x + offset}, client)
    futures = knot.map(range(6))
    assert [f.result(timeout=60) for f in futures] == [{"value": i + 100} for i in range(6)]
    failing = Knot(triple_or_fail, client).map([2, 3])
    assert failing[0].result(timeout=60) == 6
    with pytest.raises(TaskFailed) as info:
        failing[1].result(timeout=60)
    assert info.value.code == "algorithm_crashed" and "three is not welcome" in info.value.log_tail


def test_knot_client_from_the_environment(fake, monkeypatch):
    monkeypatch.delenv(SCANTIDE_URL_ENV, raising=False)
    monkeypatch.delenv(SCANTIDE_TOKEN_ENV, raising=False)
    with pytest.raises(RuntimeError, match=f"{SCANTIDE_URL_ENV} and {SCANTIDE_TOKEN_ENV} not set"):
        Knot(triple_or_fail)
    monkeypatch.setenv(SCANTIDE_URL_ENV, fake.url)
    monkeypatch.setenv(SCANTIDE_TOKEN_ENV, TOKEN)
    assert Knot(triple_or_fail).register()["name"].startswith("fn_triple_or_fail_")


def test_register_algorithm_packs_the_folder(fake, client, tmp_path: Path):
    (tmp_path / "alg").mkdir()
    (tmp_path / "alg" / "scantide-algorithm.json").write_text(json.dumps({"name": "my_alg", "version": "1"}))
    for junk in ("__pycache__/x.pyc", ".hidden", "lib/.env"):
        (tmp_path / "alg" / junk).parent.mkdir(exist_ok=True)
        (tmp_path / "alg" / junk).write_text("junk")
    (tmp_path / "alg" / "lib" / "code.py").write_text("print(1)")
    assert client.register_algorithm(tmp_path / "alg")["created"] is True
    with tarfile.open(fileobj=io.BytesIO(fake.bundles[("my_alg", "1")][1])) as tar:
        assert tar.getnames() == ["lib/code.py", "scantide-algorithm.json"]
    assert client.algorithm("my_alg")["latest"] == "1" and len(client.algorithms()) == 3
    (tmp_path / "alg" / "lib" / "code.py").write_text("print(2)")
    with pytest.raises(Conflict) as info:
        client.register_algorithm(tmp_path / "alg")
    assert info.value.code == "algorithm_version_exists"
    assert client.upload(b"abc").startswith("blob://")


def test_signatures_refuse_long_timestamps():
    body = b'{"type": "scan.completed"}'
    headers = sign("s3cret-0123456789", "evt_1", body)
    verify_signature("s3cret-0123456789", headers, body)
    for t in ("9" * 13, "9" * 400):
        with pytest.raises(SignatureError, match="malformed") as info:
            verify_signature("s3cret-0123456789", {**headers, "Webhook-Timestamp": t}, body)
        assert (info.value.code, info.value.status) == ("invalid_signature", 400)
    import service.signing

    assert service.signing.SignatureError is SignatureError and service.signing.sign is sign
