"""The ClearML change feed and listings against what a real server does and the contract does not
show: status changes stamped out of order, and a server whose page cap is below the page size asked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from clearml.backend_api.services.v2_23 import queues, tasks

from service.domain import JobState, TaskInfo, Template
from service.models import ModelVersion
from tests.backends.conftest import ALGO, QUEUE, Store, clearml_backend
from tests.fakes.clearml_server import FakeClearMLServer, iso


def submit(store: Store, scan_id: str) -> TaskInfo:
    return store.backend.submit(ALGO, scan_id, {"scan_id": scan_id}, f"/out/{scan_id}").task


def read_all(store: Store, cursor: str | None, limit: int = 100) -> tuple[list, str | None]:
    """Every change after ``cursor``, page after page, and the cursor after them."""
    seen: list = []
    while True:
        page = store.backend.changes(cursor, limit=limit)
        seen.extend(page.changes)
        cursor = page.cursor
        if not page.more:
            return seen, cursor


# -- out-of-order stamps -------------------------------------------------------------------------


def test_a_change_stamped_before_one_already_read_is_delivered_once(clearml_store: Store) -> None:
    b, server = clearml_store.backend, clearml_store.server
    first, other = submit(clearml_store, "scan-a"), submit(clearml_store, "scan-b")
    _, cursor = read_all(clearml_store, None)
    b.cancel(other.task_id)  # stamped now, and read at once
    (stopped,), cursor = read_all(clearml_store, cursor)
    assert (stopped.task_id, stopped.state) == (other.task_id, JobState.stopped)

    # The claim's status change lands now with a stamp from before the stop the reader has passed.
    with server.app.stamped_earlier(2.0):
        assert b.claim(QUEUE, "w1", lease_s=30) is not None
    late, after = read_all(clearml_store, cursor)
    assert [(c.task_id, c.state) for c in late] == [(first.task_id, JobState.running)]
    assert late[0].at < stopped.at  # it really was stamped before what had been read
    assert read_all(clearml_store, after)[0] == []  # delivered once
    # Read again from before it, the late change comes again and the stop does not.
    assert [(c.task_id, c.state) for c in read_all(clearml_store, cursor)[0]] == [(first.task_id, JobState.running)]


def test_a_requeue_without_a_new_stamp_is_a_change(clearml_store: Store) -> None:
    """``queues.get_next_task`` turns a task an agent stopped after it was queued again back to
    queued, keeping the stop's ``status_changed``."""
    b = clearml_store.backend
    task = submit(clearml_store, "scan-a")
    _, cursor = read_all(clearml_store, None)
    b.store.send(tasks.StoppedRequest(task=task.task_id, status_reason="aborted by the agent"))
    (stopped,), cursor = read_all(clearml_store, cursor)
    assert stopped.state is JobState.stopped

    b.store.send(queues.GetNextTaskRequest(queue=b.store.queue_id(QUEUE)))
    (requeued,), cursor = read_all(clearml_store, cursor)
    assert (requeued.task_id, requeued.state, requeued.at) == (task.task_id, JobState.queued, stopped.at)
    assert read_all(clearml_store, cursor)[0] == []


def test_the_cursor_stays_bounded_and_still_delivers_everything_once(clearml_server: FakeClearMLServer) -> None:
    store = Store("clearml", lambda: clearml_backend(max_seen=4), server=clearml_server)
    store.backend.register_template(Template(name=ALGO, queue=QUEUE))
    ids = [submit(store, f"scan-{i:02d}").task_id for i in range(11)]
    seen, cursors, cursor = [], [], None
    while True:
        page = store.backend.changes(cursor, limit=3)
        seen.extend(page.changes)
        cursors.extend(c.cursor for c in page.changes)
        cursor = page.cursor
        if not page.more:
            break
    assert [c.task_id for c in seen] == ids  # each once, in order
    assert all(len(json.loads(c)["seen"]) <= 4 for c in cursors)
    assert read_all(store, cursor)[0] == []
    store.close()


def test_a_version_1_cursor_still_reads(clearml_store: Store) -> None:
    """A cursor saved before the lookback, ``"<status_changed>|<task id>"``, resumes after its change."""
    made = [submit(clearml_store, f"scan-{i}") for i in range(3)]
    changes, _ = read_all(clearml_store, None)
    doc = clearml_store.server.app.tasks[changes[1].task_id]
    old = f"{iso(doc['status_changed'])}|{doc['id']}"
    assert [c.task_id for c in read_all(clearml_store, old)[0]] == [made[2].task_id]


# -- a server that caps pages below the page size asked -----------------------------------------

CAP = 3


@pytest.fixture
def capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The stand-in capping pages at ``CAP`` and a backend asking for pages of 500."""
    server = FakeClearMLServer(max_page_size=CAP).start()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "no-clearml.conf"))
    store = Store("clearml", lambda: clearml_backend(page_size=500), server=server)
    store.backend.register_template(Template(name=ALGO, queue=QUEUE))
    yield store
    store.close()
    server.stop()


@pytest.mark.parametrize("n", [CAP - 1, CAP, 2 * CAP, 2 * CAP + 2])
def test_lists_are_whole_whatever_the_servers_page_cap(capped: Store, n: int) -> None:
    b = capped.backend
    ids = {submit(capped, f"scan-{i:02d}").task_id for i in range(n)}
    assert {t.task_id for t in b.list_tasks(limit=100)} == ids
    assert {t.task_id for t in b.list_tasks(JobState.queued, limit=100)} == ids
    assert len(b.list_tasks(limit=n - 1)) == n - 1
    page = b.changes(None, limit=500)
    assert ({c.task_id for c in page.changes}, page.more) == (ids, False)
    if n > 2:
        page = b.changes(None, limit=n - 1)
        assert (len(page.changes), page.more) == (n - 1, True)
    assert b.queue_stats(QUEUE).pending == n


def test_a_capped_server_pages_changes_sharing_one_timestamp(capped: Store) -> None:
    with capped.same_timestamps():  # more tasks at one status_changed than a server page holds
        ids = [submit(capped, f"scan-{i:02d}").task_id for i in range(2 * CAP + 1)]
    seen, cursor = read_all(capped, None, limit=2)
    assert sorted(c.task_id for c in seen) == sorted(ids) and len(seen) == len(ids)
    assert read_all(capped, cursor)[0] == []


def test_a_capped_server_lists_every_model_version(capped: Store) -> None:
    b = capped.backend
    for i in range(2 * CAP + 1):
        b.models.register(ModelVersion(ALGO, f"v{i}", f"/weights/v{i}", "0" * 64, 1, registered_at=float(i)))
    assert [m.version for m in b.models.listing(None)] == [f"v{i}" for i in range(2 * CAP + 1)]
