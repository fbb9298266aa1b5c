"""The conductor killed with ``kill -9`` at each point of a run: nothing lost, nothing run twice,
exactly one outcome event."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import pytest

from service.backends.base import TaskBackend
from tests.conftest import ApiServer, Workers
from tests.pipelines.conftest import ConductorProcess, outcome_events, register_pipeline, wait_run


@pytest.mark.parametrize("point", ["mid-submit", "step-completed", "mid-webhook"])
def test_a_killed_conductor_neither_loses_nor_repeats_a_step(point: str, api: ApiServer, workers: Workers,
                                                             conductor: ConductorProcess, backend: TaskBackend,
                                                             registered: None, settings,
                                                             make_video: Callable) -> None:
    make_video("long.mp4", frames=72, fps=24.0, size=(96, 72))
    with api.client() as client:
        assert register_pipeline(client).status_code == 201
        run_id = client.post("/v1/scans", json={"scan_id": "s1", "scan_uri": "long.mp4",
                                                "pipeline": "triage"}).json()["run_id"]
        workers.start(2)
        conductor.start([sys.executable, "-m", "tests.support.crashing_conductor", point])
        assert conductor.wait_exit() == -signal.SIGKILL
        conductor.start()  # the real one picks up where the dead one stopped
        run = wait_run(client, run_id)

    assert run["state"] == "completed", run
    assert {n: s["state"] for n, s in run["steps"].items()} == \
        {"stats": "completed", "summary": "completed", "report": "completed"}
    for name, step in run["steps"].items():
        assert step["attempt"] == 1
        tasks = backend.tasks_for_scan(f"{run_id}.{name}.1") + backend.tasks_for_scan(f"{run_id}.{name}.2")
        assert [t.task_id for t in tasks] == [step["task_id"]], f"step {name} ran as {len(tasks)} tasks"
    events = outcome_events(settings)
    assert [(e["type"], e["data"]["run_id"]) for e in events] == [("pipeline.completed", run_id)]
