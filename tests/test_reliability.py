"""Processes that die: a worker killed outright is forgotten, `scantide up` killed outright leaves
nothing running, and two `scantide up` never share a state dir."""

from __future__ import annotations

import signal
from pathlib import Path

from service.backends.base import TaskBackend
from service.backends.embedded import EmbeddedBackend
from service.settings import Settings
from tests.conftest import ApiServer, Workers, wait_for


def test_a_silent_workers_registration_expires(tmp_path: Path) -> None:
    backend = EmbeddedBackend(tmp_path / "s.db", worker_expiry_s=30.0)
    backend.register_worker("alive", "default")
    backend.register_worker("killed", "default")
    with backend.db.tx() as db:  # its last heartbeat a minute ago: killed with kill -9
        db.execute("UPDATE workers SET last_seen = last_seen - 60 WHERE id = 'killed'")
    assert [w.worker_id for w in backend.workers()] == ["alive"]
    assert [w.worker_id for w in backend.workers("default")] == ["alive"]
    backend.reap_expired()
    with backend.db.tx(write=False) as db:
        assert [r[0] for r in db.execute("SELECT id FROM workers")] == ["alive"]


def test_a_worker_killed_outright_leaves_the_queue_view(api: ApiServer, workers: Workers, backend: TaskBackend,
                                                         settings: Settings) -> None:
    (proc,) = workers.start(1)
    with api.client() as client:
        def count() -> int:
            return sum(q["workers"] for q in client.get("/v1/queues").json()["queues"])

        wait_for(lambda: count() == 1, timeout_s=30, what="the worker to register")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_for(lambda: count() == 0, timeout_s=60, what="the killed worker to expire")
