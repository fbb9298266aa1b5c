"""The spot interruption notice on the worker side: IMDSv2 reads against a loopback stand-in of the
metadata service (``tests.support.imds``), and a real ``scantide worker`` that drains on a notice
and hands its running task back without counting the run."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.backends.base import TaskBackend
from service.domain import JobState, TaskInfo
from service.errors import MetadataUnavailable
from service.settings import Settings
from service.spot import INTERRUPTION_CODE, Notice, NoticeReader, SpotWatch, watch
from tests.conftest import Workers, free_port, wait_for, wait_terminal
from tests.support.imds import Imds
from tests.test_worker import QUEUE, alive, ensure_dead, entry_pid, register_slow, submit_slow


@pytest.fixture
def imds() -> Iterator[Imds]:
    server = Imds().start()
    yield server
    server.stop()


# -- reading the notice ----------------------------------------------------------------------------
def test_no_notice_reads_none_then_the_notice_once_posted(imds: Imds) -> None:
    reader = NoticeReader(imds.url)
    try:
        assert reader.read() is None and reader.read() is None
        imds.interrupt("terminate")
        notice = reader.read()
    finally:
        reader.close()

    assert notice is not None and notice.action == "terminate" and notice.time == imds.notice["time"]
    puts = [r for r in imds.requests if r[0] == "PUT"]
    assert len(puts) == 1, "one session token serves every read while it lives"
    assert all(status != 401 for _, _, status in imds.requests), "every read carried the token"


def test_a_token_the_service_no_longer_knows_is_renewed(imds: Imds) -> None:
    reader = NoticeReader(imds.url)
    try:
        assert reader.read() is None
        imds.expire_tokens()
        imds.interrupt("stop")
        notice = reader.read()
    finally:
        reader.close()

    assert notice == Notice("stop", imds.notice["time"])
    assert [m for m, _, _ in imds.requests] == ["PUT", "GET", "GET", "PUT", "GET"]


def test_an_unreachable_or_garbled_service_is_metadata_unavailable(imds: Imds) -> None:
    reader = NoticeReader(f"http://127.0.0.1:{free_port()}", timeout_s=1.0)
    try:
        with pytest.raises(MetadataUnavailable):
            reader.read()
    finally:
        reader.close()
    imds.notice = {"action": "explode", "time": "soon"}
    reader = NoticeReader(imds.url)
    try:
        with pytest.raises(MetadataUnavailable, match="explode"):
            reader.read()
    finally:
        reader.close()


def test_the_watch_calls_back_once_and_is_off_without_a_url(imds: Imds) -> None:
    assert watch(None, 0.05, lambda n: None) is None and watch("", 0.05, lambda n: None) is None

    got: list[Notice] = []
    called = threading.Event()
    spot = SpotWatch(NoticeReader(imds.url), lambda n: (got.append(n), called.set()), poll_s=0.05).start()
    try:
        wait_for(lambda: imds.notice_reads() >= 3, 10, interval_s=0.02, what="a few polls without a notice")
        assert got == []
        imds.interrupt()
        assert called.wait(10)
        reads = imds.notice_reads()
        wait_for(lambda: not spot._thread.is_alive(), 10, interval_s=0.02, what="the watch to end")
    finally:
        spot.stop()

    assert len(got) == 1 and spot.notice == got[0]
    assert imds.notice_reads() == reads, "no more reads after the notice"


# -- the worker ----------------------------------------------------------------------------------
def running(backend: TaskBackend, task_id: str) -> TaskInfo | None:
    task = backend.get_task(task_id)
    return task if task.state is JobState.running else None


def test_a_worker_hands_its_task_back_on_a_spot_notice(backend: TaskBackend, settings: Settings, workers: Workers,
                                                       imds: Imds, tmp_path: Path) -> None:
    """The notice comes while the task runs: the worker stops it, queues it again without counting the
    run (history: stopped, spot_interruption) and exits; another worker runs it to the end."""
    register_slow(backend)
    marker = tmp_path / "first-run"
    task = submit_slow(backend, "scan-spot", mode="sleep", seconds=0.2,
                       first_run={"marker": str(marker), "mode": "hang"})
    workers.env["SCANTIDE_SPOT_NOTICE_URL"] = imds.url
    workers.env["SCANTIDE_SPOT_NOTICE_POLL_S"] = "0.1"
    (spot_worker,) = workers.start(1, "--queue", QUEUE)
    first = wait_for(lambda: running(backend, task.task_id), 60, what="the task to run")
    pid = wait_for(lambda: entry_pid(settings, task.task_id, 1), 30, what="the task process")
    assert imds.notice_reads() >= 1, "a spot worker polls the notice"

    imds.interrupt()

    assert spot_worker.wait(timeout=60) == 0, "the worker drains and exits"
    back = backend.get_task(task.task_id)
    assert back.state is JobState.queued and back.worker_id is None
    assert [(h["attempt"], h["state"], h["error"]["code"]) for h in back.history] == [
        (first.attempt, "stopped", INTERRUPTION_CODE)]
    assert "reclaims this spot instance" in back.history[0]["error"]["message"]
    wait_for(lambda: not alive(pid), 30, what="the stopped task's process to go")  # type: ignore[arg-type]
    assert not [w for w in backend.workers(QUEUE)], "the worker unregistered as it left"

    del workers.env["SCANTIDE_SPOT_NOTICE_URL"]  # an on-demand worker takes it over
    reads = len(imds.requests)
    workers.start(1, "--queue", QUEUE)
    done = wait_terminal(backend, task.task_id)
    ensure_dead(pid)  # type: ignore[arg-type]

    assert done.state is JobState.completed and done.attempt == 2, done.error
    assert len(imds.requests) == reads, "a worker without SCANTIDE_SPOT_NOTICE_URL never asks the metadata service"
