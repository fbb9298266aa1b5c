"""The doorbell between scantide's processes: real Unix datagram sockets in a real folder, rung by
the embedded store's commits, across a real process boundary."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from service.backends.embedded import EmbeddedBackend
from service.domain import Template
from service.doorbell import CHANGES, QUEUE, Doorbell, Listener


def test_a_ring_wakes_the_listeners_of_its_topic_only(tmp_path: Path) -> None:
    bell = Doorbell(tmp_path / "bells")
    with bell.listener(QUEUE) as queue, bell.listener(CHANGES) as changes:
        bell.ring(QUEUE)
        assert queue.wait(10.0)
        assert not changes.wait(0.05)
        assert not queue.wait(0.05)  # each ring is consumed once
        bell.ring(QUEUE, CHANGES)
        assert queue.wait(10.0) and changes.wait(10.0)


def test_a_listener_left_by_a_killed_process_is_removed_by_the_next_ring(tmp_path: Path) -> None:
    folder = tmp_path / ("deep" * 30)  # longer than a socket address holds: bound through the folder's fd
    code = ("import os, sys; from pathlib import Path; from service.doorbell import Listener; "
            f"Listener(Path({str(folder)!r}), 'queue'); os._exit(0)")  # exits without closing it
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    assert len(list(folder.glob("queue.*.sock"))) == 1
    bell = Doorbell(folder)
    with bell.listener(QUEUE) as alive:
        bell.ring(QUEUE)
        assert alive.wait(10.0)
        assert [p.name for p in folder.glob("queue.*.sock")] == [alive.path.name]  # type: ignore[union-attr]
    assert list(folder.glob("*.sock")) == []  # closed: its socket is gone too


def test_wake_ends_a_wait_from_another_thread_with_or_without_a_folder(tmp_path: Path) -> None:
    for listener in (Listener(None, QUEUE), Listener(tmp_path, QUEUE)):
        with listener:
            assert not listener.wait(0.05)
            threading.Timer(0.05, listener.wake).start()
            assert listener.wait(60.0)


def test_the_embedded_store_rings_on_queued_tasks_and_changes(tmp_path: Path) -> None:
    backend = EmbeddedBackend(tmp_path / "tasks.db")
    backend.register_template(Template(name="t", entry_point="x", queue="q-1", params={}, max_runtime_s=60))
    with backend.listener(QUEUE) as queue, backend.listener(CHANGES) as changes:
        task = backend.submit("t", "scan-1", {}, "/out").task
        assert queue.wait(10.0) and changes.wait(10.0)
        backend.register_worker("w", "q-1")
        assert backend.claim("q-1", "w", 30.0) is not None
        assert changes.wait(10.0) and not queue.wait(0.05)  # a claim is a change, not work
        backend.finish(task.task_id, "w", result={})
        assert changes.wait(10.0)
    backend.close()


def test_without_wake_ups_nothing_is_bound_or_rung(tmp_path: Path) -> None:
    backend = EmbeddedBackend(tmp_path / "tasks.db", wake_ups=False)
    backend.register_template(Template(name="t", entry_point="x", queue="q-1", params={}, max_runtime_s=60))
    with backend.listener(QUEUE) as queue:
        backend.submit("t", "scan-1", {}, "/out")
        assert not queue.wait(0.05)
    assert not (tmp_path / "tasks.db.bells").exists()
    backend.close()
