"""A failed scan runs again on request, its failed run kept; a repeat that asks for something else
is refused instead of answered with the old task."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from service.algorithms import register_folder
from service.backends.base import TaskBackend
from service.settings import Settings
from tests.conftest import READ_TOKEN, ApiServer, Workers, wait_for

REPO = Path(__file__).resolve().parent.parent


def wait_ended(client, task_id: str) -> dict:  # noqa: ANN001
    return wait_for(lambda: (t := client.get(f"/v1/tasks/{task_id}").json())["state"] in ("completed", "failed")
                    and t, timeout_s=120, what=f"task {task_id} to end")


def test_a_failed_scan_runs_again_and_keeps_its_history(api: ApiServer, workers: Workers, backend: TaskBackend,
                                                        settings: Settings, data_root: Path,
                                                        make_video: Callable) -> None:
    register_folder(backend, settings, REPO / "examples" / "algorithms" / "frame_stats", by="test")
    (data_root / "scan.mp4").write_bytes(b"not a video")
    workers.start(1)
    with api.client() as client:
        r = client.post("/v1/scans", json={"scan_id": "s1", "scan_uri": "scan.mp4", "algorithm": "frame_stats"})
        task_id = r.json()["task_id"]
        failed = wait_ended(client, task_id)
        assert failed["state"] == "failed" and failed["error"]["code"] == "invalid_input"
        assert client.post("/v1/scans/s1/retry", headers={"Authorization": f"Bearer {READ_TOKEN}"}
                           ).status_code == 403

        make_video("scan.mp4", frames=12, fps=12.0, size=(32, 24))  # the upload, fixed
        retried = client.post("/v1/scans/s1/retry", json={"algorithm": "frame_stats"})
        assert retried.status_code == 202, retried.text
        (task,) = retried.json()["tasks"]
        assert task["task_id"] == task_id and task["state"] == "queued"
        assert [(h["attempt"], h["state"], h["error"]["code"]) for h in task["history"]] == \
            [(1, "failed", "invalid_input")]
        done = wait_ended(client, task_id)
        assert done["state"] == "completed" and done["attempt"] == 2 and done["result"]["frame_count"] == 12
        assert len(done["history"]) == 1

        again = client.post("/v1/scans/s1/retry")
        assert again.status_code == 409 and again.json()["error"]["code"] == "scan_not_retryable"
        assert client.post("/v1/scans/nope/retry").json()["error"]["code"] == "scan_not_found"


def test_a_repeat_asking_for_something_else_is_a_conflict(api: ApiServer, data_root: Path) -> None:
    (data_root / "a.mp4").write_bytes(b"x")
    (data_root / "b.mp4").write_bytes(b"x")
    first = {"scan_id": "s2", "scan_uri": "a.mp4", "metadata": {"clinic": "north"}, "params": {"keyframes": 4}}
    with api.client() as client:
        assert client.post("/v1/scans", json=first).status_code == 202
        assert client.post("/v1/scans", json=first).status_code == 200  # the same: the same task
        for changed, what in (({"scan_uri": "b.mp4"}, "scan_uri"), ({"metadata": {"clinic": "south"}}, "metadata"),
                              ({"params": {"keyframes": 5}}, "keyframes")):
            r = client.post("/v1/scans", json={**first, **changed})
            assert r.status_code == 409, r.text
            error = r.json()["error"]
            assert error["code"] == "scan_conflict" and f"with other {what}" in error["message"]
