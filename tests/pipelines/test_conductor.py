"""The conductor's loop in-process, over a real embedded store: what one tick does."""

from __future__ import annotations

import logging

import pytest

from conductor.conductor import Conductor
from monitor.outbox import Outbox
from service import logs
from service.backends.base import TaskBackend
from service.domain import ScanRequest
from service.pipelines.runs import start_run
from service.pipelines.store import PipelineStore
from service.pipelines.targets import targets_for
from service.settings import Settings
from tests.pipelines.conftest import TRIAGE


@pytest.fixture
def conductor(settings: Settings, backend: TaskBackend, registered: None) -> Conductor:
    from service.catalog.pipeline import load_pipeline
    from service.pipelines.runs import register

    store = PipelineStore(settings.pipelines_db)
    targets = targets_for(settings, backend)
    register(store, targets, load_pipeline(TRIAGE, "scantide-pipeline.yaml"), "test")
    return Conductor(store, targets, Outbox(settings.state_dir / "monitor.db"))


def test_one_broken_run_does_not_stop_the_others(conductor: Conductor, data_root, monkeypatch) -> None:
    (data_root / "scan.mp4").write_bytes(b"x")
    runs = [start_run(conductor.store, conductor.targets, ScanRequest(scan_id=s, scan_uri="scan.mp4",
                                                                       pipeline="triage"))[0] for s in ("a", "b")]
    real_refresh = Conductor._refresh

    def refresh(self, run):  # noqa: ANN001, ANN202
        if run.run_id == runs[0].run_id:
            raise RuntimeError("a bug met by one run only")
        return real_refresh(self, run)

    monkeypatch.setattr(Conductor, "_refresh", refresh)
    assert conductor.tick() == 2
    broken, fine = (conductor.store.get_run(r.run_id) for r in runs)
    assert broken.state == "queued" and broken.steps["stats"].task_id is None
    assert fine.state == "running" and fine.steps["stats"].state == "queued"
    task = conductor.targets["local"].backend.get_task(fine.steps["stats"].task_id)
    assert task.scan_id == f"{fine.run_id}.stats.1" and task.params["pipeline_step"] == "stats"

    monkeypatch.setattr(Conductor, "_refresh", real_refresh)
    conductor._next_sweep = 0.0  # the sweep comes back to the run the feeds have moved past
    conductor.tick()
    assert conductor.store.get_run(runs[0].run_id).steps["stats"].state == "queued"


def test_a_tick_with_nothing_changed_writes_nothing(conductor: Conductor, data_root) -> None:
    (data_root / "scan.mp4").write_bytes(b"x")
    run, _ = start_run(conductor.store, conductor.targets, ScanRequest(scan_id="a", scan_uri="scan.mp4",
                                                                       pipeline="triage"))
    conductor.tick()
    seq = conductor.store.get_run(run.run_id).seq
    conductor.tick()
    conductor.tick()
    assert conductor.store.get_run(run.run_id).seq == seq


def test_a_steps_task_gone_from_the_store_fails_the_run_instead_of_hanging(conductor: Conductor, data_root,
                                                                           monkeypatch) -> None:
    from service.errors import TaskNotFound
    from tests.pipelines.conftest import outcome_events

    (data_root / "scan.mp4").write_bytes(b"x")
    run, _ = start_run(conductor.store, conductor.targets, ScanRequest(scan_id="a", scan_uri="scan.mp4",
                                                                       pipeline="triage"))
    conductor.tick()
    backend = conductor.targets["local"].backend

    def gone(task_id: str):  # noqa: ANN202 - deleted by hand in the store's UI, say
        raise TaskNotFound(f"no task {task_id}")

    monkeypatch.setattr(backend, "get_task", gone)
    conductor._next_sweep = 0.0
    conductor.tick()
    ended = conductor.store.get_run(run.run_id)
    assert ended.state == "failed" and ended.error["step"] == "stats" and ended.error["code"] == "task_missing"
    assert {n: s.state for n, s in ended.steps.items()} == {"stats": "failed", "summary": "skipped",
                                                            "report": "skipped"}
    assert [e["type"] for e in outcome_events(conductor.targets["local"].settings)] == ["pipeline.failed"]


def test_a_target_that_is_down_holds_up_no_run_of_the_others(conductor: Conductor, settings: Settings,
                                                              data_root) -> None:
    from service.errors import BackendUnavailable
    from service.pipelines.targets import Target

    class Down:
        def changes(self, cursor, limit):  # noqa: ANN001, ANN201
            raise BackendUnavailable("cloud is down")

        def close(self) -> None:
            pass

    conductor.targets["cloud"] = Target("cloud", settings, Down())  # type: ignore[arg-type]
    (data_root / "scan.mp4").write_bytes(b"x")
    run, _ = start_run(conductor.store, conductor.targets, ScanRequest(scan_id="a", scan_uri="scan.mp4",
                                                                       pipeline="triage"))
    conductor.tick()
    assert conductor.store.get_run(run.run_id).steps["stats"].state == "queued"
    assert conductor.outbox.get("conductor:changes_cursor:cloud") is None


def test_a_runs_steps_keep_the_id_of_the_request_that_started_it(conductor: Conductor, data_root,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    (data_root / "scan.mp4").write_bytes(b"x")
    with logs.bind(request_id="req-run-1"):
        run, _ = start_run(conductor.store, conductor.targets, ScanRequest(scan_id="a", scan_uri="scan.mp4",
                                                                           pipeline="triage"))
    caplog.handler.addFilter(logs.ContextFilter())
    with caplog.at_level(logging.INFO, logger="conductor.conductor"):
        conductor.tick()
    step = conductor.store.get_run(run.run_id).steps["stats"]
    assert conductor.targets["local"].backend.get_task(step.task_id).request_id == "req-run-1"
    [line] = [r for r in caplog.records if r.getMessage().startswith("step_submitted ")]
    assert line.scantide_ids == {"request_id": "req-run-1", "run_id": run.run_id, "scan_id": "a",
                                 "task_id": step.task_id}
