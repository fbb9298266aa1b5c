"""The ``TaskBackend`` contract, one suite run against every backend: the embedded SQLite store
and ClearML (the real SDK against the wire-level stand-in)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

from monitor import events
from service.domain import JobState, SubmitItem, TaskError, TaskInfo, Template
from service.errors import LeaseLost, TaskNotFound, TaskNotRetryable, UnknownAlgorithm
from tests.backends.conftest import ALGO, QUEUE, Store
from tests.conftest import wait_for


def submit(store: Store, scan_id: str, **params: Any) -> TaskInfo:
    return store.backend.submit(ALGO, scan_id, {"scan_id": scan_id, **params}, f"/out/{scan_id}").task


def all_changes(store: Store) -> list:
    page = store.backend.changes(None, limit=100_000)
    assert not page.more
    return page.changes


# -- submit --------------------------------------------------------------------------------------


def test_submit_is_idempotent(store: Store) -> None:
    b = store.backend
    meta = {"patient": "p-1", "teeth": [11, 12]}
    first = b.submit(ALGO, "scan-1", {"scan_id": "scan-1", "model_version": "v1", "metadata": meta}, "/out/scan-1")
    again = b.submit(ALGO, "scan-1", {"scan_id": "scan-1", "model_version": "v2"}, "/out/other")

    assert (first.created, again.created) == (True, False)
    assert again.task.task_id == first.task.task_id
    # The template's parameters come first; the repeat changes nothing.
    assert first.task.params == {"keyframes": 8, "segments": 10, "scan_id": "scan-1", "model_version": "v1",
                                 "metadata": meta}
    assert again.task.params == first.task.params
    assert again.task.output_uri == "/out/scan-1"
    assert (first.task.state, first.task.algorithm, first.task.scan_id, first.task.queue) == (
        JobState.queued, ALGO, "scan-1", QUEUE)
    assert b.get_task(first.task.task_id).params == first.task.params
    assert [(c.task_id, c.state) for c in all_changes(store)] == [(first.task.task_id, JobState.queued)]
    assert b.queue_stats(QUEUE).pending == 1


def test_a_task_keeps_the_request_id_it_was_submitted_with(store: Store) -> None:
    b = store.backend
    items = [SubmitItem(ALGO, s, {"scan_id": s}, f"/out/{s}", request_id=r) for s, r in (("r-1", "req-1"),
                                                                                          ("r-2", None))]
    first, second = b.submit_many(items)
    again = b.submit_many([SubmitItem(ALGO, "r-1", {"scan_id": "r-1"}, "/out/r-1", request_id="req-9")])[0]
    assert (first.task.request_id, second.task.request_id, again.task.request_id) == ("req-1", None, "req-1")
    assert b.get_task(first.task.task_id).request_id == "req-1"
    claimed = b.claim(QUEUE, "w1", lease_s=30)
    assert claimed is not None and claimed.request_id == "req-1"
    assert {c.task_id: c.task.request_id for c in all_changes(store)} == {first.task.task_id: "req-1",
                                                                          second.task.task_id: None}


def test_unknown_algorithm_is_refused_naming_the_known_ones(store: Store) -> None:
    with pytest.raises(UnknownAlgorithm) as info:
        store.backend.submit("no_such_algo", "scan-1", {}, "/out/x")
    assert ALGO in info.value.message
    assert store.backend.list_tasks() == []


SUBMITTERS = 4  # ClearML: the racing clones of one scan fit in one page of the stand-in (5), as in 500 on a server
ROUNDS = 4


def test_concurrent_submits_of_one_scan_make_one_task(store: Store) -> None:
    """Several processes (here: threads, each with its own client) submit the same scan at once."""
    clients = [store.client() for _ in range(SUBMITTERS)]
    for round_ in range(ROUNDS):
        scan_id = f"scan-race-{round_}"
        barrier = threading.Barrier(SUBMITTERS)
        outcomes: list[Any] = [None] * SUBMITTERS

        def run(i: int) -> None:
            barrier.wait(timeout=30)
            try:
                outcomes[i] = clients[i].submit(ALGO, scan_id, {"scan_id": scan_id}, f"/out/{scan_id}")
            except Exception as exc:  # noqa: BLE001 - reported below
                outcomes[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(SUBMITTERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not [o for o in outcomes if not hasattr(o, "task")], outcomes
        assert sum(o.created for o in outcomes) == 1
        assert len({o.task.task_id for o in outcomes}) == 1
        (task,) = store.backend.tasks_for_scan(scan_id)
        assert task.task_id == outcomes[0].task.task_id and task.state is JobState.queued
    assert store.backend.queue_stats(QUEUE).pending == ROUNDS
    assert len(store.backend.list_tasks()) == ROUNDS


# -- reading tasks -------------------------------------------------------------------------------


def test_get_task_tasks_for_scan_and_list_tasks(store: Store) -> None:
    b = store.backend
    b.register_template(Template(name="other", queue=QUEUE))
    a = submit(store, "scan-1")
    other = b.submit("other", "scan-1", {"scan_id": "scan-1"}, "/out/other").task
    tasks = [submit(store, f"scan-{i}") for i in range(2, 5)]

    assert b.get_task(a.task_id) == a
    assert [(t.algorithm, t.task_id) for t in b.tasks_for_scan("scan-1")] == [(ALGO, a.task_id),
                                                                            ("other", other.task_id)]
    assert b.tasks_for_scan("scan-none") == []
    newest_first = [t.task_id for t in reversed([a, other, *tasks])]
    assert [t.task_id for t in b.list_tasks()] == newest_first
    assert [t.task_id for t in b.list_tasks(limit=2)] == newest_first[:2]

    claimed = b.claim(QUEUE, "w1", lease_s=30)
    assert claimed is not None and claimed.task_id == a.task_id  # the oldest queued task
    assert [t.task_id for t in b.list_tasks(JobState.running)] == [a.task_id]
    assert [t.task_id for t in b.list_tasks(JobState.queued)] == newest_first[:-1]
    b.finish(a.task_id, "w1", result={"n": 1})
    assert [t.task_id for t in b.list_tasks(JobState.completed)] == [a.task_id]
    assert b.list_tasks(JobState.failed) == []


def test_unknown_task_is_task_not_found(store: Store) -> None:
    for task_id in ("no-such-task", "0123456789abcdef0123456789abcdef"):
        with pytest.raises(TaskNotFound) as info:
            store.backend.get_task(task_id)
        assert info.value.code == "task_not_found"


# -- the agent side ------------------------------------------------------------------------------


def test_claim_heartbeat_finish_with_a_result(store: Store) -> None:
    b = store.backend
    b.register_worker("w1", QUEUE)
    task = submit(store, "scan-1")
    claimed = b.claim(QUEUE, "w1", lease_s=30)
    assert claimed is not None and claimed.task_id == task.task_id
    assert (claimed.state, claimed.attempt, claimed.worker_id) == (JobState.running, 1, "w1")
    assert claimed.started_at is not None and claimed.started_at >= claimed.created_at
    assert b.claim(QUEUE, "w2", lease_s=30) is None  # nothing left for another worker

    assert b.heartbeat("w1", task.task_id, lease_s=30, progress=0.25) is False
    b.heartbeat("w1", task.task_id, lease_s=30)  # without progress: the last value stays
    now = b.get_task(task.task_id)
    assert (now.state, now.progress, now.worker_id) == (JobState.running, 0.25, "w1")
    assert now.heartbeat_at is not None

    result = {"output_uri": "/out/scan-1", "summary": {"frames": 120}, "outputs": {"summary": "summary.json"}}
    done = b.finish(task.task_id, "w1", result=result)
    assert (done.state, done.result, done.error, done.progress, done.attempt) == (
        JobState.completed, result, None, 1.0, 1)
    assert done.finished_at is not None and done.finished_at >= done.started_at
    assert b.get_task(task.task_id) == done
    with pytest.raises(LeaseLost):  # finished: the task is nobody's
        b.heartbeat("w1", task.task_id, lease_s=30)
    (change,) = [c for c in all_changes(store) if c.state is JobState.completed]
    assert change.task.result == result and change.attempt == 1


def test_finish_with_an_error_fails_the_task(store: Store) -> None:
    b = store.backend
    task = submit(store, "scan-1")
    assert b.claim(QUEUE, "w1", lease_s=30) is not None
    with pytest.raises(ValueError):
        b.finish(task.task_id, "w1")
    error = TaskError.make("bad_input", "not a video", log="x" * 5000)
    failed = b.finish(task.task_id, "w1", error=error)
    assert (failed.state, failed.result, failed.error) == (JobState.failed, None, error)
    assert len(failed.error.log_tail) == TaskError.LOG_TAIL_BYTES
    assert b.get_task(task.task_id).error == error
    event = events.from_change([c for c in all_changes(store) if c.task_id == task.task_id][-1])
    assert event is not None and event.type == "scan.failed" and event.data["error"]["code"] == "bad_input"


def test_a_failed_task_runs_again_with_its_run_in_its_history(store: Store) -> None:
    b = store.backend
    task = submit(store, "scan-1")
    assert b.claim(QUEUE, "w1", lease_s=30) is not None
    error = TaskError.make("bad_input", "not a video")
    b.finish(task.task_id, "w1", error=error)
    before = b.changes(None, limit=100_000)  # a monitor reads the failure before the retry
    retried = b.retry(task.task_id)
    assert retried.state is JobState.queued and retried.error is None and retried.result is None
    assert [(h["attempt"], h["state"], h["error"]["code"]) for h in retried.history] == [(1, "failed", "bad_input")]
    again = b.claim(QUEUE, "w2", lease_s=30)
    assert again is not None and (again.task_id, again.attempt) == (task.task_id, 2)
    done = b.finish(task.task_id, "w2", result={"ok": True})
    assert done.state is JobState.completed and len(b.get_task(task.task_id).history) == 1
    with pytest.raises(TaskNotRetryable):
        b.retry(task.task_id)
    after = b.changes(before.cursor, limit=100_000)
    built = [events.from_change(c) for c in [*before.changes, *after.changes] if c.task_id == task.task_id]
    ids = [(e.type, e.id) for e in built if e is not None]
    assert [t for t, _ in ids] == ["scan.failed", "scan.completed"] and len({i for _, i in ids}) == 2


def lose(store: Store, worker_id: str) -> TaskInfo:
    """``worker_id`` claims the next task on a lease that runs out at once, and is lost: the task as
    the reaper leaves it."""
    task = store.backend.claim(QUEUE, worker_id, lease_s=0.01)
    assert task is not None
    return wait_for(lambda: next((t for t in store.backend.reap_expired() if t.task_id == task.task_id), None),
                    timeout_s=10, what=f"the lease of {task.task_id} to run out")


def test_a_handed_back_task_runs_again_without_counting_an_attempt(store: Store) -> None:
    """A spot interruption hands the task back: queued again, its run in the history as stopped with the
    reason, and the attempt limit (2 here) counts only the runs after it."""
    b = store.backend
    task = submit(store, "scan-1")
    b.register_worker("w1", QUEUE)
    assert b.claim(QUEUE, "w1", lease_s=30) is not None
    reason = TaskError.make("spot_interruption", "EC2 reclaims this spot instance (terminate at 2026-01-01T00:02:00Z)")

    back = b.hand_back(task.task_id, "w1", reason)

    assert back.state is JobState.queued and back.worker_id is None and back.error is None
    assert [(h["attempt"], h["state"], h["error"]["code"]) for h in b.get_task(task.task_id).history] == [
        (1, "stopped", "spot_interruption")]
    with pytest.raises(LeaseLost):
        b.hand_back(task.task_id, "w1", reason)
    assert b.claim(QUEUE, "w1", lease_s=30) is None, "the worker that handed it back is leaving: no new task"

    second = lose(store, "w2")
    assert (second.state, second.attempt) == (JobState.queued, 2), "one counted run of 2: queued again"
    third = lose(store, "w3")
    assert third.state is JobState.failed and third.error is not None and third.error.code == "worker_lost"
    assert third.attempt == 3, "the handed-back run was not counted"


CLAIMERS = 4
CLAIMED_TASKS = 12


def test_concurrent_claimers_get_each_task_exactly_once(store: Store) -> None:
    ids = {submit(store, f"scan-{i:02d}").task_id for i in range(CLAIMED_TASKS)}
    clients = [store.client() for _ in range(CLAIMERS)]
    barrier = threading.Barrier(CLAIMERS)
    claimed: list[list[str]] = [[] for _ in range(CLAIMERS)]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            while (task := clients[i].claim(QUEUE, f"w{i}", lease_s=60)) is not None:
                claimed[i].append(task.task_id)
                clients[i].finish(task.task_id, f"w{i}", result={"by": f"w{i}"})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLAIMERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    counts = Counter(task_id for got in claimed for task_id in got)
    assert set(counts) == ids and set(counts.values()) == {1}
    for i, got in enumerate(claimed):
        for task_id in got:
            assert store.backend.get_task(task_id).result == {"by": f"w{i}"}


def test_another_workers_heartbeat_and_finish_are_refused(store: Store) -> None:
    b = store.backend
    task = submit(store, "scan-1")
    assert b.claim(QUEUE, "w1", lease_s=30) is not None
    with pytest.raises(LeaseLost):
        b.heartbeat("w2", task.task_id, lease_s=30)
    with pytest.raises(LeaseLost):
        b.finish(task.task_id, "w2", result={"stolen": True})
    assert b.get_task(task.task_id).state is JobState.running


def test_clearml_only_a_task_completed_without_a_result_is_failed_no_result(clearml_store: Store) -> None:
    """An agent killed by SIGTERM marks its task completed with no result. The embedded store
    cannot express that (its finish takes a result or an error), hence ClearML only."""
    from clearml.backend_api.services.v2_23 import tasks

    b = clearml_store.backend
    task = submit(clearml_store, "scan-1")
    assert b.claim(QUEUE, "w1", lease_s=30) is not None
    b.store.send(tasks.CompletedRequest(task=task.task_id, status_reason="aborted by signal"))  # as the agent does

    now = b.get_task(task.task_id)
    assert now.state is JobState.failed
    assert now.error is not None and now.error.code == "no_result"
    assert b.list_tasks(JobState.completed) == [] and [t.task_id for t in b.list_tasks(JobState.failed)] == [
        task.task_id]
    change = b.changes(None, 100).changes[-1]
    assert change.state is JobState.failed
    event = events.from_change(change)
    assert event is not None and event.type == "scan.failed" and event.data["error"]["code"] == "no_result"


# -- the change feed -----------------------------------------------------------------------------


def read_feed(store: Store, cursor: str | None, limit: int) -> tuple[list, list[bool], str | None]:
    seen, mores = [], []
    for _ in range(1000):
        page = store.backend.changes(cursor, limit=limit)
        assert len(page.changes) <= limit
        if page.changes:
            assert page.cursor == page.changes[-1].cursor
        seen.extend(page.changes)
        mores.append(page.more)
        cursor = page.cursor
        if not page.more:
            return seen, mores, cursor
    pytest.fail("the feed never ended")


def test_changes_page_through_equal_timestamps_each_exactly_once(store: Store) -> None:
    b = store.backend
    with store.same_timestamps():  # ClearML: more tasks share one status_changed than a server page holds
        ids = [submit(store, f"scan-{i:02d}").task_id for i in range(13)]
        for _ in range(3):
            t = b.claim(QUEUE, "w1", lease_s=30)
            assert t is not None
            b.finish(t.task_id, "w1", result={"n": 1})

    seen, mores, cursor = read_feed(store, None, limit=4)
    assert len(mores) > 2 and mores[-1] is False and all(mores[:-1])
    assert [c.cursor for c in seen] == [c.cursor for c in all_changes(store)]  # same order, none twice
    assert len({(c.cursor, c.task_id) for c in seen}) == len(seen)
    last = {c.task_id: c for c in seen}  # each task's latest change is its state now
    assert set(last) == set(ids)
    assert {t: c.state for t, c in last.items()} == {t: b.get_task(t).state for t in ids}
    assert Counter(c.state for c in last.values()) == {JobState.queued: 10, JobState.completed: 3}
    if store.kind == "clearml":
        assert len({c.at for c in seen}) < len(seen)  # the ties really happened

    # Caught up: an empty page keeps the cursor; later changes show up after it, and only they.
    empty = b.changes(cursor, limit=4)
    assert (empty.changes, empty.more, empty.cursor) == ([], False, cursor)
    late = submit(store, "scan-late")
    t = b.claim(QUEUE, "w1", lease_s=30)
    assert t is not None
    later, _, _ = read_feed(store, cursor, limit=1)
    assert [c.task_id for c in later][-1] == t.task_id and later[-1].state is JobState.running
    assert {c.task_id for c in later} == {late.task_id, t.task_id}


def test_changes_made_while_paging_are_not_lost(store: Store) -> None:
    b = store.backend
    with store.same_timestamps():
        ids = [submit(store, f"scan-{i:02d}").task_id for i in range(8)]
    page = b.changes(None, limit=3)
    seen = list(page.changes)
    # Tasks behind and ahead of the cursor change before the reader goes on.
    for _ in range(4):
        t = b.claim(QUEUE, "w1", lease_s=30)
        assert t is not None
        b.finish(t.task_id, "w1", error=TaskError.make("bad_input", "no"))
    rest, _, _ = read_feed(store, page.cursor, limit=3)
    seen.extend(rest)
    last = {c.task_id: c.state for c in seen}
    assert last == {t: b.get_task(t).state for t in ids}
    assert Counter(last.values()) == {JobState.queued: 4, JobState.failed: 4}


def test_bad_cursor_is_invalid_request(store: Store) -> None:
    from service.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        store.backend.changes("not a cursor")


# -- queues and workers --------------------------------------------------------------------------


def test_queue_stats(store: Store) -> None:
    b = store.backend
    b.register_template(Template(name="elsewhere", queue="q-other"))
    empty = b.queue_stats(QUEUE)
    assert (empty.queue, empty.pending, empty.running, empty.oldest_queued_age_s) == (QUEUE, 0, 0, 0.0)

    for i in range(3):
        submit(store, f"scan-{i}")
    b.submit("elsewhere", "scan-x", {}, "/out/x")
    claimed = b.claim(QUEUE, "w1", lease_s=30)
    assert claimed is not None
    stats = b.queue_stats(QUEUE)
    assert (stats.pending, stats.running) == (2, 1)
    assert stats.oldest_queued_age_s > 0
    assert (b.queue_stats("q-other").pending, b.queue_stats("q-other").running) == (1, 0)
    assert b.queues() == ["q-other", QUEUE]
    b.finish(claimed.task_id, "w1", result={})
    assert (b.queue_stats(QUEUE).pending, b.queue_stats(QUEUE).running) == (2, 0)  # finished counts nowhere
    assert b.queue_stats("q-never").pending == 0


def test_workers_and_drain(store: Store) -> None:
    b = store.backend
    b.register_worker("busy", QUEUE)
    b.register_worker("idle.example.internal", QUEUE)  # host names hold dots
    b.register_worker("elsewhere", "q-other")
    for i in range(3):
        submit(store, f"scan-{i}")
    task = b.claim(QUEUE, "busy", lease_s=30)
    assert task is not None

    by_id = {w.worker_id: w for w in b.workers(QUEUE)}
    assert set(by_id) == {"busy", "idle.example.internal"}
    assert (by_id["busy"].task_id, by_id["busy"].idle_since) == (task.task_id, None)
    assert by_id["idle.example.internal"].task_id is None
    assert by_id["idle.example.internal"].idle_since is not None
    assert all(w.queue == QUEUE and w.last_seen > 0 and not w.draining for w in by_id.values())
    assert {w.worker_id for w in b.workers()} == {"busy", "idle.example.internal", "elsewhere"}

    b.request_drain("idle.example.internal")
    assert b.claim(QUEUE, "idle.example.internal", lease_s=30) is None  # work is queued, but it drains
    assert b.queue_stats(QUEUE).pending == 2
    assert b.heartbeat("idle.example.internal", None, lease_s=30) is True
    assert b.heartbeat("busy", task.task_id, lease_s=30) is False
    assert {w.worker_id: w.draining for w in b.workers(QUEUE)} == {"busy": False, "idle.example.internal": True}

    # A draining worker still finishes the task it holds.
    b.request_drain("busy")
    assert b.heartbeat("busy", task.task_id, lease_s=30) is True
    b.finish(task.task_id, "busy", result={})
    busy = {w.worker_id: w for w in b.workers(QUEUE)}["busy"]
    assert busy.task_id is None and busy.idle_since is not None
    assert b.claim(QUEUE, "busy", lease_s=30) is None

    b.unregister_worker("idle.example.internal")
    assert [w.worker_id for w in b.workers(QUEUE)] == ["busy"]
