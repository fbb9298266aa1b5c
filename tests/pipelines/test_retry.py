"""A failed step fails its run with that step's error, once; a retry re-runs only what did not complete."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from service.algorithms import register_folder
from service.backends.base import TaskBackend
from tests.conftest import ApiServer, Workers, wait_for
from tests.pipelines.conftest import ConductorProcess, outcome_events, register_pipeline, wait_run

FAIL_ONCE = '''
import pathlib, sys
marker, outputs = pathlib.Path(sys.argv[1].removeprefix("--marker=")), pathlib.Path(sys.argv[2])
if not marker.exists():
    marker.write_text("failed once")
    print("fail_once: the first try fails on purpose", flush=True)
    sys.exit(1)
(outputs / "result.json").write_text('{"second_try": true}')
'''

PIPELINE = """
name: flaky
version: "1"
steps:
  - {name: stats, algorithm: frame_stats}
  - {name: check, algorithm: fail_once, needs: [stats], params: {marker: "MARKER"}}
  - {name: report, algorithm: scan_report, needs: [check], inputs: [steps.stats.outputs, steps.check.outputs]}
"""


def test_failed_step_fails_the_run_and_retry_keeps_completed_steps(
        api: ApiServer, workers: Workers, conductor: ConductorProcess, backend: TaskBackend, registered: None,
        settings, make_video: Callable, tmp_path: Path) -> None:
    folder = tmp_path / "fail_once"
    folder.mkdir()
    (folder / "fail_once.py").write_text(FAIL_ONCE)
    (folder / "scantide-algorithm.yaml").write_text(
        'name: fail_once\nversion: "1"\ncommand: ["python", "{here}/fail_once.py", "--marker={params.marker}", "{outputs}"]\n'
        "parameters: {marker: {type: string}}\nrequired: [marker]\n")
    register_folder(backend, settings, folder, by="test")
    make_video("scan.mp4", frames=24, fps=24.0, size=(64, 48))
    with api.client() as client:
        assert register_pipeline(client, PIPELINE.replace("MARKER", str(tmp_path / "marker"))).status_code == 201
        run_id = client.post("/v1/scans", json={"scan_id": "s1", "scan_uri": "scan.mp4",
                                                "pipeline": "flaky"}).json()["run_id"]
        conductor.start()
        workers.start(1)
        failed = wait_run(client, run_id)
        assert failed["state"] == "failed"
        assert {n: s["state"] for n, s in failed["steps"].items()} == \
            {"stats": "completed", "check": "failed", "report": "skipped"}
        assert failed["error"]["step"] == "check" and failed["error"]["code"] == "algorithm_crashed"
        assert "the first try fails on purpose" in failed["error"]["log_tail"]
        assert failed["steps"]["report"]["error"]["message"] == "step check failed"
        assert client.post(f"/v1/runs/{run_id}/retry", headers={"Authorization": "Bearer test-token-read"}
                           ).status_code == 403

        retried = client.post(f"/v1/runs/{run_id}/retry")
        assert retried.status_code == 200 and retried.json()["retries"] == 1
        done = wait_run(client, run_id)
        assert done["state"] == "completed", done
        assert done["steps"]["stats"]["task_id"] == failed["steps"]["stats"]["task_id"]  # kept, not re-run
        assert done["steps"]["stats"]["attempt"] == 1
        assert done["steps"]["check"]["attempt"] == 2 and done["steps"]["check"]["result"]["second_try"] is True
        assert done["steps"]["report"]["result"]["upstream_steps"] == ["check", "stats"]
        assert client.post(f"/v1/runs/{run_id}/retry").json()["error"]["code"] == "run_not_retryable"

    events = wait_for(lambda: (found := outcome_events(settings)) and len(found) == 2 and found, timeout_s=30)
    by_type = {e["type"]: e for e in events}
    assert set(by_type) == {"pipeline.failed", "pipeline.completed"}
    failure = by_type["pipeline.failed"]["data"]
    assert failure["error"]["step"] == "check" and "fails on purpose" in failure["error"]["log_tail"]
