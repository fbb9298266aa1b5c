"""Model versions through the HTTP API on uvicorn: promote and rollback change what new tasks run
while queued tasks keep their version, a promote from another process is seen by the very next
enqueue, scopes guard promotion, and ``previous_scan_id`` is resolved at enqueue."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.backends.base import TaskBackend
from service.models import register_model
from service.settings import Settings
from service.supervisor import cli_argv, settings_env
from tests.conftest import READ_TOKEN, ApiServer
from tests.test_api import assert_error, post_scan

ALGO = "video_summary"


@pytest.fixture
def versions(settings: Settings, backend: TaskBackend, tmp_path: Path) -> dict[str, str]:
    """Versions 1 and 2 registered (files with distinct content); their stored URIs."""
    uris = {}
    for v in ("1", "2"):
        f = tmp_path / f"weights-{v}.pt"
        f.write_bytes(f"weights {v}".encode() * 100)
        uris[v] = register_model(backend, settings, ALGO, v, f, notes=f"v{v}", by="ana")[0].uri
    return uris


def task_params(client: httpx.Client, scan_id: str, scan_uri: str, **extra) -> dict:
    r = post_scan(client, scan_id, scan_uri, **extra)
    assert r.status_code == 202, r.text
    task = client.get(r.json()["links"]["task"])
    assert task.status_code == 200, task.text
    return task.json()["params"]


def test_promote_and_rollback_pin_new_tasks_while_queued_tasks_keep_theirs(
        api: ApiServer, versions: dict[str, str], make_video: Callable[..., dict]) -> None:
    make_video("scan.mp4", frames=12)
    with api.client() as client:
        bundled = task_params(client, "s0", "scan.mp4")
        assert bundled["model_version"] is None and "model_uri" not in bundled

        r = client.post(f"/v1/models/{ALGO}/promote", json={"version": "1", "by": "ana"})
        assert r.status_code == 200, r.text
        assert (r.json()["promoted"], r.json()["changed"]) == ("1", True)
        first = task_params(client, "s1", "scan.mp4")
        assert (first["model_version"], first["model_uri"]) == ("1", versions["1"])

        assert client.post(f"/v1/models/{ALGO}/promote", json={"version": "2"}).status_code == 200
        second = task_params(client, "s2", "scan.mp4")
        assert (second["model_version"], second["model_uri"]) == ("2", versions["2"])

        r = client.post(f"/v1/models/{ALGO}/rollback")
        assert r.status_code == 200, r.text
        assert r.json()["audit"]["from_version"] == "2" and r.json()["audit"]["to_version"] == "1"
        assert task_params(client, "s3", "scan.mp4")["model_version"] == "1"

        # Queued tasks kept the version they were given.
        for scan_id, expected in (("s0", None), ("s1", "1"), ("s2", "2")):
            (task,) = client.get(f"/v1/scans/{scan_id}").json()["tasks"]
            assert (task["state"], task["params"]["model_version"]) == ("queued", expected)

        again = client.post(f"/v1/models/{ALGO}/promote", json={"version": "1"})
        assert (again.status_code, again.json()["changed"], again.json()["audit"]) == (200, False, None)

    with api.client(READ_TOKEN) as reader:
        listing = reader.get(f"/v1/models/{ALGO}")
        assert listing.status_code == 200, listing.text
        body = listing.json()
        assert body["promoted"] == "1"
        assert [(v["version"], v["promoted"], v["registered_by"]) for v in body["versions"]] == [
            ("1", True, "ana"), ("2", False, "ana")]
        trail = [(e["action"], e["from_version"], e["to_version"]) for e in body["history"]]
        assert trail == [("register", None, "1"), ("register", None, "2"), ("promote", None, "1"),
                         ("promote", "1", "2"), ("rollback", "2", "1")]
        by = [e["by"] for e in body["history"][2:]]
        assert by[0].startswith("ana (token:") and by[1].startswith("token:") and by[1] == by[2]
        assert "test-token" not in listing.text  # the trail names a fingerprint, never the token


def test_promotion_needs_the_promote_scope(api: ApiServer, versions: dict[str, str]) -> None:
    with api.client(READ_TOKEN) as reader:
        assert_error(reader.post(f"/v1/models/{ALGO}/promote", json={"version": "1"}), 403, "forbidden")
        assert_error(reader.post(f"/v1/models/{ALGO}/rollback"), 403, "forbidden")
    with api.client(None) as anonymous:
        assert_error(anonymous.post(f"/v1/models/{ALGO}/promote", json={"version": "1"}), 401, "unauthorized")
        assert_error(anonymous.get(f"/v1/models/{ALGO}"), 401, "unauthorized")
        spec = anonymous.get("/openapi.json").json()
        assert {"/v1/models/{algorithm}", "/v1/models/{algorithm}/promote",
                "/v1/models/{algorithm}/rollback"} <= set(spec["paths"])
    with api.client() as client:
        assert client.get(f"/v1/models/{ALGO}").json()["promoted"] is None


def test_promotion_errors(api: ApiServer, versions: dict[str, str]) -> None:
    with api.client() as client:
        err = assert_error(client.post(f"/v1/models/{ALGO}/promote", json={"version": "9"}), 404,
                           "model_version_not_found")
        assert "'9'" in err["message"] and "1, 2" in err["message"]
        assert_error(client.post(f"/v1/models/{ALGO}/rollback"), 409, "nothing_to_roll_back")
        client.post(f"/v1/models/{ALGO}/promote", json={"version": "1"})
        assert_error(client.post(f"/v1/models/{ALGO}/rollback"), 409, "nothing_to_roll_back")
        assert_error(client.post(f"/v1/models/{ALGO}/promote", json={"version": "../x"}), 422, "invalid_request")
        assert_error(client.post(f"/v1/models/{ALGO}/promote", json={}), 422, "invalid_request")


def test_a_promote_from_another_process_is_seen_by_the_next_enqueue(
        api: ApiServer, settings: Settings, versions: dict[str, str], make_video: Callable[..., dict]) -> None:
    make_video("scan.mp4", frames=12)
    env = {**os.environ, **settings_env(settings)}
    with api.client() as client:
        for i, version in enumerate(("1", "2", "1")):
            done = subprocess.run(cli_argv("models", "promote", ALGO, version, "--by", "ops"), env=env,
                                  capture_output=True, text=True, check=False, timeout=120)
            assert done.returncode == 0, done.stderr
            assert task_params(client, f"x{i}", "scan.mp4")["model_version"] == version


def test_previous_scan_id_is_resolved_at_enqueue(
        api: ApiServer, backend: TaskBackend, make_video: Callable[..., dict]) -> None:
    make_video("scan.mp4", frames=12)
    with api.client() as client:
        err = assert_error(post_scan(client, "after", "scan.mp4", previous_scan_id="never-seen"), 422,
                           "previous_scan_not_found")
        assert "never-seen" in err["message"]
        assert_error(post_scan(client, "same", "scan.mp4", previous_scan_id="same"), 422, "invalid_request")

        before = post_scan(client, "before", "scan.mp4").json()
        assert_error(post_scan(client, "after", "scan.mp4", previous_scan_id="before"), 409,
                     "previous_scan_not_completed")
        claimed = backend.claim("default", "w-test", lease_s=60)
        assert claimed is not None and claimed.task_id == before["task_id"]
        backend.finish(claimed.task_id, "w-test", result={"output_uri": claimed.output_uri})

        params = task_params(client, "after", "scan.mp4", previous_scan_id="before")
        assert params["previous_scan_id"] == "before"
        assert params["previous_output_uri"] == claimed.output_uri
        plain = task_params(client, "plain", "scan.mp4")
        assert "previous_scan_id" not in plain and "previous_output_uri" not in plain
