"""The algorithm registry and cancel, one contract for both backends (embedded SQLite, the ClearML
stand-in): versions are immutable, the newest is what enqueue pins, a version's queue and time
limit are its template's, and only a queued task can be cancelled."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.algorithms import register_files
from service.domain import JobState, ScanRequest
from service.enqueue import submit_scan
from service.errors import AlgorithmVersionExists, TaskNotCancellable, TaskNotFound
from service.settings import Settings, load_settings
from tests.backends.conftest import Store

NAME = "contract_algo"


def descriptor(version: str, timeout_s: int = 60, queue: str = "q-contract") -> bytes:
    return (f'name: {NAME}\nversion: "{version}"\ncommand: ["python", "{{here}}/run.py", "{{inputs}}", "{{outputs}}"]\n'
            f"parameters:\n  level: {{type: integer, default: 3, minimum: 0}}\n"
            f"resources: {{timeout_s: {timeout_s}, max_attempts: 3}}\nqueue: {queue}\n").encode()


def files(version: str, script: str = "print('hi')", **kwargs) -> dict[str, tuple[bytes, bool]]:
    return {"scantide-algorithm.yaml": (descriptor(version, **kwargs), False), "run.py": (script.encode(), False)}


@pytest.fixture
def reg_settings(store: Store, tmp_path: Path) -> Settings:
    return load_settings(backend=store.kind, state_dir=tmp_path / "st", output_root=tmp_path / "out",
                         data_root=tmp_path / "data", algorithm_queues={"q-contract": "q-contract"})


def test_versions_are_immutable_and_the_newest_is_pinned(store: Store, reg_settings: Settings,
                                                         tmp_path: Path) -> None:
    b = store.backend
    first, created = register_files(b, reg_settings, files("1"), by="ana")
    assert created and (first.name, first.version, first.queue) == (NAME, "1", "q-contract")
    assert Path(first.uri).is_file() and first.size == Path(first.uri).stat().st_size
    again, created = register_files(store.client(), reg_settings, files("1"), by="bo")
    assert not created and again.sha256 == first.sha256 and again.registered_by == "ana"
    with pytest.raises(AlgorithmVersionExists):
        register_files(b, reg_settings, files("1", script="print('other')"), by="ana")

    second, _ = register_files(b, reg_settings, files("2", timeout_s=90), by="ana")
    other = store.client()  # another process's view
    assert other.latest_algorithm(NAME).version == "2"  # type: ignore[union-attr]
    assert other.algorithm_version(NAME, "1").sha256 == first.sha256  # type: ignore[union-attr]
    assert other.algorithm_version(NAME, "3") is None and other.latest_algorithm("nope") is None
    assert [v.version for v in other.list_algorithms(NAME)] == ["1", "2"]
    assert other.algorithm_version(NAME, "2").spec.parameters["level"]["default"] == 3  # type: ignore[union-attr]
    template = other.get_template(NAME)
    assert (template.queue, template.max_runtime_s) == ("q-contract", 90.0)

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "s.mp4").write_bytes(b"0")
    pinned = submit_scan(other, reg_settings, ScanRequest(scan_id="s1", scan_uri="s.mp4", algorithm=NAME)).task
    assert (pinned.queue, pinned.params["algorithm_version"], pinned.params["level"]) == ("q-contract", "2", 3)
    assert pinned.params["bundle_sha256"] == second.sha256
    old = submit_scan(other, reg_settings, ScanRequest(scan_id="s2", scan_uri="s.mp4", algorithm=NAME,
                                                       algorithm_version="1", params={"level": 0})).task
    assert (old.params["algorithm_version"], old.params["level"]) == ("1", 0)


def test_only_a_queued_task_is_cancelled(store: Store, reg_settings: Settings, tmp_path: Path) -> None:
    b = store.backend
    register_files(b, reg_settings, files("1"), by="ana")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "s.mp4").write_bytes(b"0")
    queued = submit_scan(b, reg_settings, ScanRequest(scan_id="c1", scan_uri="s.mp4", algorithm=NAME)).task
    running = submit_scan(b, reg_settings, ScanRequest(scan_id="c2", scan_uri="s.mp4", algorithm=NAME)).task

    stopped = store.client().cancel(queued.task_id)
    assert stopped.state is JobState.stopped and stopped.error is not None and stopped.error.code == "cancelled"
    assert b.get_task(queued.task_id).state is JobState.stopped
    with pytest.raises(TaskNotCancellable):
        b.cancel(queued.task_id)
    b.register_worker("w-1", "q-contract")
    claimed = b.claim("q-contract", "w-1", lease_s=60)
    assert claimed is not None and claimed.task_id == running.task_id  # the cancelled one is never handed out
    with pytest.raises(TaskNotCancellable):
        b.cancel(running.task_id)
    with pytest.raises(TaskNotFound):
        b.cancel("0" * 32)
