"""The embedded SQLite backend against real SQLite files: idempotency, exactly-once claims across
processes, leases, the change feed, statistics and draining."""

from __future__ import annotations

import multiprocessing
import queue as queue_mod
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.backends.embedded import EmbeddedBackend
from service.domain import JobState, TaskError, TaskInfo, Template
from service.errors import InvalidRequest, LeaseLost, UnknownAlgorithm

QUEUE = "q-test"
ALGO = "algo"
MAX_ATTEMPTS = 2


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "scantide.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[EmbeddedBackend]:
    b = EmbeddedBackend(db_path, max_attempts=MAX_ATTEMPTS)
    b.register_template(Template(name=ALGO, queue=QUEUE, params={"keyframes": 8, "segments": 10}))
    yield b
    b.close()


def submit(store: EmbeddedBackend, scan_id: str, **params: Any) -> TaskInfo:
    return store.submit(ALGO, scan_id, {"scan_id": scan_id, **params}, f"/out/{scan_id}").task


def all_changes(store: EmbeddedBackend) -> list:
    page = store.changes(None, limit=100_000)
    assert not page.more
    return page.changes


def poll(predicate, timeout_s: float = 10.0, interval_s: float = 0.02):
    """The first truthy value of ``predicate``; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {predicate}")
        time.sleep(interval_s)


# -- idempotency ---------------------------------------------------------------------------


def test_submit_is_idempotent_on_algorithm_and_scan_id(store: EmbeddedBackend) -> None:
    first = store.submit(ALGO, "scan-1", {"scan_id": "scan-1", "model_version": "v1"}, "/out/scan-1")
    again = store.submit(ALGO, "scan-1", {"scan_id": "scan-1", "model_version": "v2", "extra": 1}, "/out/other")

    assert first.created is True
    assert again.created is False
    assert again.task.task_id == first.task.task_id
    # The template's params are merged in; the repeat changes nothing.
    assert first.task.params == {"keyframes": 8, "segments": 10, "scan_id": "scan-1", "model_version": "v1"}
    assert again.task.params == first.task.params
    assert again.task.output_uri == "/out/scan-1"
    assert store.get_task(first.task.task_id).params == first.task.params
    assert [(c.task_id, c.state) for c in all_changes(store)] == [(first.task.task_id, JobState.queued)]
    assert store.queue_stats(QUEUE).pending == 1


def test_same_scan_under_another_algorithm_is_another_task(store: EmbeddedBackend) -> None:
    store.register_template(Template(name="other", queue=QUEUE))
    a = store.submit(ALGO, "scan-1", {}, "/out/a")
    b = store.submit("other", "scan-1", {}, "/out/b")
    assert a.created and b.created
    assert a.task.task_id != b.task.task_id
    assert [t.algorithm for t in store.tasks_for_scan("scan-1")] == [ALGO, "other"]


def test_unknown_algorithm_is_refused(store: EmbeddedBackend) -> None:
    with pytest.raises(UnknownAlgorithm) as info:
        store.submit("no_such_algo", "scan-1", {}, "/out/x")
    assert info.value.code == "unknown_algorithm"
    assert ALGO in info.value.message  # says what is registered
    assert store.list_tasks() == []
    assert all_changes(store) == []


# -- concurrency ---------------------------------------------------------------------------

CLAIMERS = 8
CONCURRENT_TASKS = 240


def _claimer(path: str, worker_id: str, barrier: Any, results: Any) -> None:
    """Child process: claim and finish tasks until the queue is empty; report what it claimed."""
    claimed: list[str] = []
    errors: list[str] = []
    try:
        backend = EmbeddedBackend(path, max_attempts=MAX_ATTEMPTS)
        backend.register_worker(worker_id, QUEUE)
        barrier.wait(timeout=120)
        while True:
            task = backend.claim(QUEUE, worker_id, lease_s=300)
            if task is None:
                break
            claimed.append(task.task_id)
            # A worker works between claims. Without a pause, SQLite's lock (no fairness: waiters
            # back off and sleep) can hand every claim to one process on a loaded machine.
            time.sleep(0.002)
            if task.state is not JobState.running or task.worker_id != worker_id or task.attempt != 1:
                errors.append(f"claimed {task.task_id} as {task.state} by {task.worker_id} attempt {task.attempt}")
            backend.finish(task.task_id, worker_id, result={"by": worker_id})
        backend.close()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        errors.append(repr(exc))
    results.put((worker_id, claimed, errors))


def test_concurrent_claimers_get_each_task_exactly_once(store: EmbeddedBackend, db_path: Path) -> None:
    ids = {submit(store, f"scan-{i:04d}").task_id for i in range(CONCURRENT_TASKS)}
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(CLAIMERS)
    results = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(str(db_path), f"w{i}", barrier, results)) for i in range(CLAIMERS)]
    for p in procs:
        p.start()
    reports = []
    try:
        for _ in procs:
            reports.append(results.get(timeout=120))
    except queue_mod.Empty:
        pytest.fail(f"only {len(reports)} of {CLAIMERS} claimers reported: {[p.exitcode for p in procs]}")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * CLAIMERS

    errors = [e for _, _, errs in reports for e in errs]
    assert errors == []
    claims = Counter(task_id for _, claimed, _ in reports for task_id in claimed)
    assert set(claims) == ids
    assert [t for t, n in claims.items() if n > 1] == []
    # The claimers really competed (each task's winner is recorded on the task, below).
    per_worker = {w: len(claimed) for w, claimed, _ in reports}
    assert sum(1 for n in per_worker.values() if n) >= 2, per_worker

    claimed_by = {task_id: w for w, claimed, _ in reports for task_id in claimed}
    tasks = store.list_tasks(limit=CONCURRENT_TASKS + 10)
    assert len(tasks) == CONCURRENT_TASKS
    for t in tasks:
        assert t.state is JobState.completed, t
        assert t.attempt == 1
        assert t.result == {"by": claimed_by[t.task_id]}
        assert t.worker_id == claimed_by[t.task_id]
    states = Counter(c.state for c in all_changes(store))
    assert states == {JobState.queued: CONCURRENT_TASKS, JobState.running: CONCURRENT_TASKS,
                      JobState.completed: CONCURRENT_TASKS}
    assert store.queue_stats(QUEUE).pending == 0


# -- leases --------------------------------------------------------------------------------

SHORT_LEASE_S = 0.05


@pytest.mark.parametrize("observer", ["reap_expired", "claim"])
def test_expired_lease_requeues_then_fails_worker_lost(store: EmbeddedBackend, observer: str) -> None:
    task = submit(store, "scan-1")
    first = store.claim(QUEUE, "w1", lease_s=SHORT_LEASE_S)
    assert first is not None and first.task_id == task.task_id and first.attempt == 1

    if observer == "reap_expired":
        (requeued,) = poll(store.reap_expired)
        assert requeued.task_id == task.task_id
        assert requeued.state is JobState.queued
        assert requeued.attempt == 1  # kept: the next claim makes it 2
        assert requeued.worker_id is None
        assert store.get_task(task.task_id).state is JobState.queued
        second = store.claim(QUEUE, "w2", lease_s=SHORT_LEASE_S)
    else:
        # Another worker's claim reaps the expired lease and then takes the task itself.
        second = poll(lambda: store.claim(QUEUE, "w2", lease_s=SHORT_LEASE_S))
    assert second is not None and second.task_id == task.task_id
    assert second.attempt == 2
    assert second.worker_id == "w2"

    # The first worker lost its lease for good.
    with pytest.raises(LeaseLost):
        store.heartbeat("w1", task.task_id, lease_s=30)
    with pytest.raises(LeaseLost):
        store.finish(task.task_id, "w1", result={"late": True})

    if observer == "reap_expired":
        (failed,) = poll(store.reap_expired)
    else:
        # A third worker's claim reaps the second expiry; nothing is left for it to take.
        poll(lambda: store.claim(QUEUE, "w3", lease_s=30) is None
             and store.get_task(task.task_id).state is JobState.failed)
        failed = store.get_task(task.task_id)
    assert failed.task_id == task.task_id
    assert failed.state is JobState.failed
    assert failed.attempt == MAX_ATTEMPTS
    assert failed.error is not None and failed.error.code == "worker_lost"
    assert failed.finished_at is not None
    assert store.reap_expired() == []
    with pytest.raises(LeaseLost):
        store.finish(task.task_id, "w2", result={"late": True})
    assert store.get_task(task.task_id).state is JobState.failed

    history = [(c.state, c.attempt) for c in all_changes(store)]
    assert history == [(JobState.queued, 0), (JobState.running, 1), (JobState.queued, 1), (JobState.running, 2),
                       (JobState.failed, 2)]


class StoreClock:
    """Stands in for the ``time`` module of ``service.backends.embedded``, whose every timestamp
    (lease ends, heartbeats, reaps) is its ``time()``: the test moves it, nothing sleeps."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store_clock(monkeypatch: pytest.MonkeyPatch) -> StoreClock:
    import service.backends.embedded as embedded

    clock = StoreClock(time.time())
    monkeypatch.setattr(embedded, "time", clock)
    return clock


def test_heartbeat_extends_the_lease_and_records_progress(store: EmbeddedBackend, store_clock: StoreClock) -> None:
    lease_s = 1.0
    task = submit(store, "scan-1")
    claimed = store.claim(QUEUE, "w1", lease_s=lease_s)
    assert claimed is not None and claimed.started_at == store_clock.now
    original_lease_end = claimed.started_at + lease_s

    beats = 0
    while store_clock.now < original_lease_end + lease_s:  # two leases long, a beat every fifth of one
        store_clock.advance(lease_s / 5)
        assert store.heartbeat("w1", task.task_id, lease_s=lease_s, progress=0.25) is False
        beats += 1
        assert store.reap_expired() == []
    assert beats >= 10
    # The last beat's lease holds until its end, from the beat (not from the claim).
    store_clock.advance(lease_s * 0.9)
    assert store.reap_expired() == []

    now = store.get_task(task.task_id)
    assert now.state is JobState.running
    assert now.attempt == 1
    assert now.worker_id == "w1"
    assert now.progress == 0.25
    # A heartbeat without progress keeps the last value.
    store.heartbeat("w1", task.task_id, lease_s=lease_s)
    assert store.get_task(task.task_id).progress == 0.25

    done = store.finish(task.task_id, "w1", result={"ok": True})
    assert done.state is JobState.completed
    assert done.attempt == 1
    assert done.progress == 1.0
    assert done.result == {"ok": True}
    # Once finished, the task is nobody's: heartbeats for it are refused.
    with pytest.raises(LeaseLost):
        store.heartbeat("w1", task.task_id, lease_s=lease_s)


def test_heartbeat_and_finish_by_another_worker_are_refused(store: EmbeddedBackend) -> None:
    task = submit(store, "scan-1")
    assert store.claim(QUEUE, "w1", lease_s=30) is not None
    with pytest.raises(LeaseLost) as info:
        store.heartbeat("w2", task.task_id, lease_s=30)
    assert info.value.code == "lease_lost"
    with pytest.raises(LeaseLost):
        store.finish(task.task_id, "w2", error=TaskError.make("x", "y"))
    assert store.get_task(task.task_id).state is JobState.running


def test_finish_takes_exactly_one_of_result_or_error(store: EmbeddedBackend) -> None:
    task = submit(store, "scan-1")
    assert store.claim(QUEUE, "w1", lease_s=30) is not None
    with pytest.raises(ValueError):
        store.finish(task.task_id, "w1")
    with pytest.raises(ValueError):
        store.finish(task.task_id, "w1", result={"a": 1}, error=TaskError.make("bad_input", "no"))
    assert store.get_task(task.task_id).state is JobState.running

    failed = store.finish(task.task_id, "w1", error=TaskError.make("bad_input", "not a video", log="x" * 5000))
    assert failed.state is JobState.failed
    assert failed.result is None
    assert failed.error is not None and failed.error.code == "bad_input"
    assert len(failed.error.log_tail) == TaskError.LOG_TAIL_BYTES
    assert store.get_task(task.task_id).error == failed.error


# -- change feed ---------------------------------------------------------------------------


def _make_history(store: EmbeddedBackend, tasks: int, runs: int) -> list[tuple[str, JobState]]:
    """Submit ``tasks`` tasks, run the first ``runs`` to completion; the changes, in order."""
    expected = []
    for i in range(tasks):
        t = submit(store, f"scan-{i}")
        expected.append((t.task_id, JobState.queued))
    for _ in range(runs):
        t = store.claim(QUEUE, "w1", lease_s=30)
        assert t is not None
        expected.append((t.task_id, JobState.running))
        store.finish(t.task_id, "w1", result={})
        expected.append((t.task_id, JobState.completed))
    return expected


@pytest.mark.parametrize(("tasks", "runs", "limit", "pages"), [(7, 3, 4, 4), (6, 3, 4, 3), (2, 0, 1, 2)])
def test_changes_page_in_order_and_each_exactly_once(
    store: EmbeddedBackend, tasks: int, runs: int, limit: int, pages: int
) -> None:
    expected = _make_history(store, tasks, runs)
    seen = []
    mores = []
    cursor = None
    for _ in range(len(expected) + 2):
        page = store.changes(cursor, limit=limit)
        assert len(page.changes) <= limit
        seen.extend(page.changes)
        mores.append(page.more)
        if page.changes:
            assert page.cursor == page.changes[-1].cursor
        cursor = page.cursor
        if not page.more:
            break
    assert mores == [True] * (pages - 1) + [False]
    assert [(c.task_id, c.state) for c in seen] == expected
    seqs = [int(c.cursor) for c in seen]
    assert seqs == sorted(set(seqs))  # strictly increasing: none twice, none out of order
    assert [c.cursor for c in seen] == [c.cursor for c in all_changes(store)]

    # Caught up: an empty page keeps the cursor.
    empty = store.changes(cursor, limit=limit)
    assert empty.changes == [] and empty.more is False and empty.cursor == cursor

    # A later change shows up after that cursor, and only it.
    late = submit(store, "scan-late")
    page = store.changes(cursor, limit=limit)
    assert [(c.task_id, c.state) for c in page.changes] == [(late.task_id, JobState.queued)]
    assert page.more is False
    assert page.changes[0].task.task_id == late.task_id


def test_change_carries_attempt_and_current_task(store: EmbeddedBackend) -> None:
    task = submit(store, "scan-1")
    store.claim(QUEUE, "w1", lease_s=30)
    store.finish(task.task_id, "w1", result={"n": 1})
    changes = all_changes(store)
    assert [(c.state, c.attempt) for c in changes] == [(JobState.queued, 0), (JobState.running, 1),
                                                      (JobState.completed, 1)]
    # Every change shows the task as it is now.
    assert {c.task.state for c in changes} == {JobState.completed}
    assert changes[0].at <= changes[1].at <= changes[2].at


def test_empty_feed_and_bad_cursor(store: EmbeddedBackend) -> None:
    page = store.changes(None)
    assert page.changes == [] and page.cursor is None and page.more is False
    for bad in ("abc", "1.5", "seq-3"):
        with pytest.raises(InvalidRequest) as info:
            store.changes(bad)
        assert info.value.code == "invalid_request"


# -- statistics, workers, draining ---------------------------------------------------------


def test_queue_stats(store: EmbeddedBackend) -> None:
    store.register_template(Template(name="elsewhere", queue="q-other"))
    empty = store.queue_stats(QUEUE)
    assert (empty.pending, empty.running, empty.oldest_queued_age_s) == (0, 0, 0.0)

    for i in range(3):
        submit(store, f"scan-{i}")
    store.submit("elsewhere", "scan-x", {}, "/out/x")
    assert store.claim(QUEUE, "w1", lease_s=30) is not None

    stats = store.queue_stats(QUEUE)
    assert stats.queue == QUEUE
    assert (stats.pending, stats.running) == (2, 1)
    assert stats.oldest_queued_age_s > 0
    other = store.queue_stats("q-other")
    assert (other.pending, other.running) == (1, 0)
    assert store.queues() == ["q-other", QUEUE]

    # Terminal tasks count nowhere.
    running = store.list_tasks(state=JobState.running)
    store.finish(running[0].task_id, "w1", result={})
    assert (store.queue_stats(QUEUE).pending, store.queue_stats(QUEUE).running) == (2, 0)


def test_workers_and_drain(store: EmbeddedBackend) -> None:
    store.register_worker("busy", QUEUE)
    store.register_worker("idle", QUEUE)
    store.register_worker("elsewhere", "q-other")
    for i in range(3):
        submit(store, f"scan-{i}")
    task = store.claim(QUEUE, "busy", lease_s=30)
    assert task is not None

    by_id = {w.worker_id: w for w in store.workers(QUEUE)}
    assert set(by_id) == {"busy", "idle"}
    assert by_id["busy"].task_id == task.task_id
    assert by_id["busy"].idle_since is None
    assert by_id["idle"].task_id is None
    assert by_id["idle"].idle_since is not None
    assert not any(w.draining for w in by_id.values())
    assert {w.worker_id for w in store.workers()} == {"busy", "idle", "elsewhere"}

    store.request_drain("idle")
    assert store.claim(QUEUE, "idle", lease_s=30) is None  # two tasks are queued, but it drains
    assert store.queue_stats(QUEUE).pending == 2
    assert store.heartbeat("idle", None, lease_s=30) is True
    assert store.heartbeat("busy", task.task_id, lease_s=30) is False
    assert {w.worker_id: w.draining for w in store.workers(QUEUE)} == {"busy": False, "idle": True}

    # A draining worker still finishes the task it holds.
    store.request_drain("busy")
    assert store.heartbeat("busy", task.task_id, lease_s=30) is True
    store.finish(task.task_id, "busy", result={})
    busy = {w.worker_id: w for w in store.workers(QUEUE)}["busy"]
    assert busy.task_id is None and busy.idle_since is not None
    assert store.claim(QUEUE, "busy", lease_s=30) is None

    store.unregister_worker("idle")
    assert [w.worker_id for w in store.workers(QUEUE)] == ["busy"]


def test_a_second_backend_on_the_same_file_sees_everything(store: EmbeddedBackend, db_path: Path) -> None:
    task = submit(store, "scan-1")
    other = EmbeddedBackend(db_path)
    try:
        assert other.get_template(ALGO).queue == QUEUE
        claimed = other.claim(QUEUE, "w-other", lease_s=30)
        assert claimed is not None and claimed.task_id == task.task_id
        assert store.get_task(task.task_id).worker_id == "w-other"
        assert store.claim(QUEUE, "w1", lease_s=30) is None
    finally:
        other.close()


V1_SCHEMA = """
CREATE TABLE templates (name TEXT PRIMARY KEY, entry_point TEXT NOT NULL, queue TEXT NOT NULL,
    params TEXT NOT NULL, max_runtime_s REAL NOT NULL);
CREATE TABLE tasks (id TEXT PRIMARY KEY, algorithm TEXT NOT NULL, scan_id TEXT NOT NULL, queue TEXT NOT NULL,
    state TEXT NOT NULL, params TEXT NOT NULL, output_uri TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,
    worker_id TEXT, lease_until REAL, created_at REAL NOT NULL, queued_at REAL, started_at REAL,
    finished_at REAL, result TEXT, error TEXT, progress REAL, heartbeat_at REAL, UNIQUE (algorithm, scan_id));
CREATE INDEX tasks_by_queue ON tasks (queue, state, queued_at);
CREATE INDEX tasks_by_scan ON tasks (scan_id);
CREATE INDEX tasks_running ON tasks (state, lease_until);
CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL, state TEXT NOT NULL,
    attempt INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE workers (id TEXT PRIMARY KEY, queue TEXT NOT NULL, task_id TEXT, last_seen REAL NOT NULL,
    idle_since REAL, draining INTEGER NOT NULL DEFAULT 0);
INSERT INTO templates VALUES ('video_summary', 'algorithms.entry', 'default', '{}', 60);
INSERT INTO tasks (id, algorithm, scan_id, queue, state, params, output_uri, created_at, queued_at)
    VALUES ('old-task', 'video_summary', 'old-scan', 'default', 'queued', '{}', '/out', 1, 1);
INSERT INTO changes (task_id, state, attempt, at) VALUES ('old-task', 'queued', 0, 1);
PRAGMA user_version = 1;
"""


def test_a_version_1_store_is_upgraded_in_place(tmp_path) -> None:
    import sqlite3

    from service.backends.embedded_schema import SCHEMA_VERSION

    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.close()
    b = EmbeddedBackend(path)
    assert b.get_task("old-task").scan_id == "old-scan"
    assert b.submit("video_summary", "old-scan", {}, "/out").created is False  # the key still holds
    assert b.submit("video_summary", "new-scan", {}, "/out").created is True
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"tasks_scan", "tasks_lease"} <= indexes and "tasks_by_scan" not in indexes
    conn.close()


def test_a_store_from_a_newer_scantide_is_refused(tmp_path) -> None:
    import sqlite3

    from service.errors import ConfigError

    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    with pytest.raises(ConfigError, match="newer"):
        EmbeddedBackend(path)
