"""The public client against the real API (uvicorn on loopback) and real ``scantide worker``
processes: ``Knot.map`` ships a function and returns its values, a raising function surfaces as
``TaskFailed`` with the remote traceback, a cancelled future aborts its queued task, and
``Client.map`` over 50 scans works with ``as_completed``."""

from __future__ import annotations

from concurrent.futures import as_completed, wait
from pathlib import Path

import pytest

from scantide import Client, Knot, ScantideError, TaskFailed
from service.backends.base import TaskBackend
from service.domain import JobState
from service.settings import Settings
from tests.conftest import ENQUEUE_TOKEN, TOKEN, ApiServer, Workers

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(api: ApiServer) -> Client:
    with Client(api.url, TOKEN, poll_s=0.1) as c:
        yield c


def test_knot_maps_a_lambda_through_real_workers(client: Client, workers: Workers) -> None:
    workers.start(2)
    knot = Knot(lambda x: x * x, client=client)
    futures = knot.map(range(20))
    assert [f.result(timeout=180) for f in futures] == [x * x for x in range(20)]
    assert knot.name.startswith("fn_lambda_")
    assert any(a["name"] == knot.name for a in client.algorithms())


def test_a_raising_function_surfaces_with_its_remote_traceback(client: Client, workers: Workers) -> None:
    def reciprocal(x: int) -> float:
        return 1 / x

    workers.start(1)
    ok, bad = Knot(reciprocal, client=client).map([4, 0])
    assert ok.result(timeout=120) == 0.25
    with pytest.raises(TaskFailed) as failed:
        bad.result(timeout=120)
    assert failed.value.code == "algorithm_crashed"
    assert "ZeroDivisionError" in failed.value.log_tail and "reciprocal" in failed.value.log_tail


def test_cancelling_a_future_aborts_its_queued_task(client: Client, backend: TaskBackend, workers: Workers) -> None:
    (queued, later) = Knot(lambda x: x + 1, client=client).map([1, 2])
    assert queued.cancel() is True and queued.cancelled()
    task_id = queued.task_id  # type: ignore[attr-defined]
    stopped = backend.get_task(task_id)
    assert stopped.state is JobState.stopped and stopped.error is not None and stopped.error.code == "cancelled"
    workers.start(1)
    assert later.result(timeout=120) == 3
    assert later.cancel() is False  # finished: nothing to cancel
    assert backend.get_task(task_id).state is JobState.stopped  # no worker ever ran it


def test_client_map_over_fifty_scans_with_as_completed(client: Client, workers: Workers, settings: Settings,
                                                       make_video) -> None:
    client.register_algorithm(REPO / "examples" / "algorithms" / "frame_stats")
    make_video("tiny.mp4", frames=6, fps=6.0, size=(32, 24))
    uris = ["tiny.mp4"] * 50
    futures = client.map("frame_stats", uris, {"min_brightness": 5}, scan_ids=[f"tiny-{i}" for i in range(50)])
    workers.start(2)
    results = [f.result() for f in as_completed(futures, timeout=300)]
    assert len(results) == 50 and all(r["frame_count"] == 6 for r in results)
    done, not_done = wait(futures, timeout=0)
    assert len(done) == 50 and not not_done
    assert {r["output_uri"] for r in results} == {f"{settings.output_root_uri}/frame_stats/tiny-{i}" for i in range(50)}


def test_an_enqueue_token_cannot_make_a_worker_unpickle_its_bytes(client: Client, api: ApiServer,
                                                                  settings: Settings) -> None:
    """A function's argument is unpickled on a worker, so it is code: only a blob uploaded with the
    register scope may be one, and an enqueue-only token can neither upload one nor name a file of
    its own choosing as one."""
    knot = Knot(lambda x: x, client=client)
    knot.register()
    planted = Path(settings.data_root) / "planted.pkl"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(b"cos\nsystem\n(S'touch /tmp/owned'\ntR.")
    with Client(api.url, ENQUEUE_TOKEN) as platform:
        with pytest.raises(ScantideError) as upload:
            platform.upload(b"cos\nsystem\n(S'true'\ntR.")
        assert upload.value.code == "forbidden"
        with pytest.raises(ScantideError) as submit:
            platform.submit("planted", str(planted), algorithm=knot.name)
        assert submit.value.code == "invalid_scan_uri" and "POST /v1/blobs" in submit.value.message
