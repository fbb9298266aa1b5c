"""Algorithms over the HTTP API (uvicorn on loopback, a real SQLite store, real workers): register a
folder, list and show, parameters checked at enqueue, frame_stats end to end, inputs uploaded as
blobs, outputs as links, a queued task cancelled."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from service.domain import JobState
from service.settings import Settings
from tests.conftest import READ_TOKEN, ApiServer, Workers, wait_terminal

REPO = Path(__file__).resolve().parents[1]
FRAME_STATS = REPO / "examples" / "algorithms" / "frame_stats"


def tarball(folder: Path, top: str | None = None) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                rel = path.relative_to(folder).as_posix()
                tar.add(path, arcname=f"{top}/{rel}" if top else rel)
    return raw.getvalue()


def post_bundle(api: ApiServer, data: bytes, token: str | None = None):
    with api.client(token) if token else api.client() as http:
        return http.post("/v1/algorithms", files={"bundle": ("algorithm.tar.gz", data, "application/gzip")})


def test_register_list_show_and_immutable_versions(api: ApiServer, tmp_path: Path) -> None:
    created = post_bundle(api, tarball(FRAME_STATS))
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["name"], body["version"], body["runner"], body["created"]) == ("frame_stats", "1", "command", True)
    # the same content again, packed differently (inside a top folder): nothing changes
    again = post_bundle(api, tarball(FRAME_STATS, top="frame_stats"))
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["sha256"] == body["sha256"]
    # other content under the same version: refused
    changed = tmp_path / "changed"
    shutil.copytree(FRAME_STATS, changed)
    (changed / "frame_stats.py").write_text((changed / "frame_stats.py").read_text() + "\n# changed\n")
    conflict = post_bundle(api, tarball(changed))
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "algorithm_version_exists"

    with api.client() as http:
        listing = http.get("/v1/algorithms").json()["algorithms"]
        assert {a["name"]: a["latest"] for a in listing} == {"frame_stats": "1", "video_summary": "3"}
        shown = http.get("/v1/algorithms/frame_stats").json()
        assert shown["versions"][0]["descriptor"]["parameters"]["min_brightness"]["maximum"] == 255
        missing = http.get("/v1/algorithms/nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "algorithm_not_found"


def test_registering_needs_the_register_scope_and_a_valid_folder(api: ApiServer, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    forbidden = post_bundle(api, tarball(FRAME_STATS), token=READ_TOKEN)
    assert forbidden.status_code == 403
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "scantide-algorithm.yaml").write_text(
        'name: Bad\nversion: "1"\ncommand: ["python", "{here}/missing.py"]\n'
        "parameters:\n  min_brightness: {type: number, minimum: low}\n")
    refused = post_bundle(api, tarball(bad))
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "invalid_descriptor"
    assert "name: must match ^[a-z][a-z0-9_]{2,40}$, got 'Bad'" in error["message"]
    assert "parameters.min_brightness.minimum: expected a number" in error["message"]
    not_tar = post_bundle(api, b"this is not a tarball")
    assert not_tar.status_code == 422 and not_tar.json()["error"]["code"] == "invalid_bundle"
    # a container algorithm where no container engine is on the PATH
    image = tmp_path / "image"
    image.mkdir()
    (image / "scantide-algorithm.yaml").write_text(
        'name: in_a_box\nversion: "1"\nimage: registry.example/tool:1\ncommand: ["tool", "{inputs}", "{outputs}"]\n')
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    unavailable = post_bundle(api, tarball(image))
    assert unavailable.status_code == 422
    assert unavailable.json()["error"]["code"] == "runner_unavailable"
    assert "docker or podman" in unavailable.json()["error"]["message"]


@pytest.mark.parametrize(("params", "message"), [
    ({"min_brightness": "dark"}, "params.min_brightness: 'dark' is not of type 'number'"),
    ({"min_brightness": 300}, "params.min_brightness: 300 is greater than the maximum of 255"),
    ({"min_brightness": -1}, "params.min_brightness: -1 is less than the minimum of 0"),
    ({"min_brightness": True}, "params.min_brightness: True is not of type 'number'"),
    ({"brightness": 3}, "params.brightness: unknown parameter; known: min_brightness"),
])
def test_enqueue_checks_params_against_the_descriptor(api: ApiServer, make_video, params: dict,
                                                      message: str) -> None:
    assert post_bundle(api, tarball(FRAME_STATS)).status_code == 201
    make_video("s.mp4", frames=12, size=(64, 48))
    with api.client() as http:
        r = http.post("/v1/scans", json={"scan_id": "s", "scan_uri": "s.mp4", "algorithm": "frame_stats",
                                         "params": params})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == {"code": "invalid_params", "message": message}


def test_enqueue_checks_enum_versions_and_the_scan_kind(api: ApiServer, make_video, data_root: Path) -> None:
    make_video("s.mp4", frames=12, size=(64, 48))
    with api.client() as http:
        r = http.post("/v1/scans", json={"scan_id": "s", "scan_uri": "s.mp4", "params": {"device": "tpu"}})
        assert r.status_code == 422
        assert r.json()["error"]["message"] == "params.device: 'tpu' is not one of ['auto', 'cpu', 'cuda']"
        (data_root / "notes.txt").write_text("not a video")
        r = http.post("/v1/scans", json={"scan_id": "n", "scan_uri": "notes.txt"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_scan_uri"
        assert "video_summary takes video files" in r.json()["error"]["message"]
        r = http.post("/v1/scans", json={"scan_id": "v", "scan_uri": "s.mp4", "algorithm_version": "9"})
        assert r.status_code == 422 and "has no version '9'; registered: 3" in r.json()["error"]["message"]


def test_frame_stats_end_to_end(api: ApiServer, workers: Workers, make_video, settings: Settings) -> None:
    assert post_bundle(api, tarball(FRAME_STATS)).status_code == 201
    make_video("scan-7.mp4", frames=48, fps=24.0, size=(160, 120))
    with api.client() as http:
        r = http.post("/v1/scans", json={"scan_id": "scan-7", "scan_uri": "scan-7.mp4", "algorithm": "frame_stats",
                                         "params": {"min_brightness": 255}})
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        assert http.get(f"/v1/tasks/{task_id}").json()["params"]["min_brightness"] == 255
        workers.start(1)
        from service.backends import open_backend

        done = wait_terminal(open_backend(settings), task_id, timeout_s=120)
        assert done.state is JobState.completed, done.error
        result = done.result or {}
        assert (result["frame_count"], result["fps"], result["width"], result["height"]) == (48, 24.0, 160, 120)
        assert result["duration_s"] == 2.0 and len(result["brightness_per_second"]) == 2
        assert result["dark_seconds"] == 2  # every second is darker than 255
        outputs = http.get(f"/v1/tasks/{task_id}/outputs").json()["outputs"]
        assert set(outputs) == {"brightness.csv", "result.json"}
        assert Path(outputs["brightness.csv"]).read_text().startswith("second,mean_brightness")


def test_blobs_are_content_addressed_and_submittable(api: ApiServer, settings: Settings) -> None:
    with api.client() as http:
        first = http.post("/v1/blobs", content=b"\x80\x05K\x07.", headers={"Content-Type": "application/octet-stream"})
        assert first.status_code == 201, first.text
        again = http.post("/v1/blobs", content=b"\x80\x05K\x07.")
        assert again.json() == first.json()
        uri = first.json()["uri"]
        assert Path(uri).read_bytes() == b"\x80\x05K\x07." and Path(uri).is_relative_to(settings.data_root.resolve())
        empty = http.post("/v1/blobs", content=b"")
        assert empty.status_code == 422
        big = http.post("/v1/blobs", content=b"x" * (settings.max_blob_bytes + 1))
        assert big.status_code == 413
    with api.client(READ_TOKEN) as http:
        assert http.post("/v1/blobs", content=b"x").status_code == 403


def test_a_queued_task_is_cancelled_and_a_finished_one_is_not(api: ApiServer, make_video) -> None:
    make_video("c.mp4", frames=12, size=(64, 48))
    with api.client() as http:
        task_id = http.post("/v1/scans", json={"scan_id": "c", "scan_uri": "c.mp4"}).json()["task_id"]
        cancelled = http.post(f"/v1/tasks/{task_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "stopped" and cancelled.json()["error"]["code"] == "cancelled"
        again = http.post(f"/v1/tasks/{task_id}/cancel")
        assert again.status_code == 409 and again.json()["error"]["code"] == "task_not_cancellable"
        assert http.post("/v1/tasks/nope/cancel").status_code == 404
    with api.client(READ_TOKEN) as http:
        assert http.post(f"/v1/tasks/{task_id}/cancel").status_code == 403
