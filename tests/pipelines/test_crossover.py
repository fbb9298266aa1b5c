"""A crossover run: a step on this machine's embedded workers, the next on a ClearML fleet (the
wire-level stand-in, its agent stand-in, moto's S3), the last back on this machine; inputs moved
between the targets' storage and checked by sha256 on both sides."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conductor.conductor import Conductor
from conductor.moves import InputMismatch, place_inputs
from monitor.outbox import Outbox
from service.algorithms import register_folder
from service.catalog.pipeline import parse_pipeline
from service.domain import ScanRequest
from service.input_cache import stats
from service.pipelines.runs import register, start_run
from service.pipelines.store import PipelineStore
from service.pipelines.targets import Targets, targets_for
from service.settings import Settings, load_settings
from service.synthetic import write_scan_video
from tests.autoscaler.moto_server import AWS_TEST_ENV, MotoServer
from tests.conftest import TEST_BUCKET, Workers, free_port
from tests.fakes.clearml_server import FakeClearMLServer
from tests.pipelines.conftest import EXAMPLES

REPO = Path(__file__).resolve().parents[2]
PIPELINE = {
    "name": "crossover", "version": "1",
    "steps": [
        {"name": "stats", "algorithm": "frame_stats", "compute": "local"},
        {"name": "report", "algorithm": "scan_report", "compute": "cloud", "needs": ["stats"],
         "inputs": ["scan", "steps.stats.outputs"]},
        {"name": "back", "algorithm": "scan_report", "compute": "local", "needs": ["report"],
         "inputs": ["steps.report.outputs"]},
    ],
}


@pytest.fixture
def clearml(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClearMLServer]:
    server = FakeClearMLServer(port=free_port()).start()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    yield server
    server.stop()


@pytest.fixture
def home(aws: MotoServer, clearml: FakeClearMLServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """An embedded deployment (target ``local``) that also holds a ClearML fleet (target ``cloud``)."""
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "no-clearml.conf"))
    return load_settings(
        state_dir=tmp_path / "state", s3_endpoint_url=aws.url, worker_poll_s=0.1, lease_s=5.0, heartbeat_s=0.5,
        compute_targets={"cloud": {"backend": "clearml", "clearml_project": "scantide-crossover",
                                   "output_root": f"s3://{TEST_BUCKET}/cloud", "clearml_timeout_s": 3.0,
                                   "clearml_retries": 0}})


def agent(home: Settings, aws: MotoServer, clearml: FakeClearMLServer, tmp_path: Path) -> subprocess.Popen:
    """One task of the cloud's ``cpu`` queue run by the agent stand-in, with a worker's environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SCANTIDE_", "CLEARML_", "AWS_"))}
    env = {**base, **AWS_TEST_ENV, **clearml.env(), "CLEARML_CONFIG_FILE": str(tmp_path / "no-clearml.conf"),
           "SCANTIDE_BACKEND": "clearml", "SCANTIDE_S3_ENDPOINT_URL": aws.url,
           "SCANTIDE_STATE_DIR": str(tmp_path / "agent"), "SCANTIDE_CONFIG": str(tmp_path / "absent.toml")}
    with open(tmp_path / "agent.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "tests.fakes.clearml_agent", "--queue", "cpu",
                                 "--worker-id", "agent-1", "--max-tasks", "1"], cwd=REPO, env=env, stdout=log,
                                stderr=log, stdin=subprocess.DEVNULL)


def drive(conductor: Conductor, store: PipelineStore, run_id: str, timeout_s: float = 180.0):  # noqa: ANN201
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        conductor.tick()
        run = store.get_run(run_id)
        if run.ended:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not end: {store.get_run(run_id)}")


def test_a_run_crosses_from_local_workers_to_a_clearml_fleet_and_back(home: Settings, aws: MotoServer,
                                                                      clearml: FakeClearMLServer,
                                                                      tmp_path: Path) -> None:
    targets = targets_for(home)
    assert sorted(targets) == ["cloud", "local"] and targets.default == "local"
    register_folder(targets["local"].backend, home, EXAMPLES / "algorithms" / "frame_stats", by="test")
    for name in ("local", "cloud"):
        register_folder(targets[name].backend, targets[name].settings, EXAMPLES / "algorithms" / "scan_report",
                        by="test")
    store = PipelineStore(home.pipelines_db)
    register(store, targets, parse_pipeline(PIPELINE), "test")
    scan = home.data_root / "scan.mp4"
    scan.parent.mkdir(parents=True, exist_ok=True)
    write_scan_video(scan, frames=48, fps=24.0, size=(96, 72))
    run, created = start_run(store, targets, ScanRequest(scan_id="s1", scan_uri="scan.mp4", pipeline="crossover"))
    assert created and {n: s.compute for n, s in run.steps.items()} == \
        {"stats": "local", "report": "cloud", "back": "local"}

    workers = Workers(home)
    workers.start(1)
    fleet = agent(home, aws, clearml, tmp_path)
    try:
        ended = drive(Conductor(store, targets, Outbox(home.state_dir / "monitor.db")), store, run.run_id)
        assert fleet.wait(timeout=60) == 0
    finally:
        workers.stop_all()
        if fleet.poll() is None:
            fleet.kill()
        targets.close()

    assert ended.state == "completed", (ended, (tmp_path / "agent.log").read_text()[-3000:])
    stats_step, report, back = ended.steps["stats"], ended.steps["report"], ended.steps["back"]
    assert report.result["upstream_steps"] == ["stats"] and back.result["upstream_steps"] == ["report"]
    assert report.result["output_uri"].startswith(f"s3://{TEST_BUCKET}/cloud/scan_report/")
    moved = scan.stat().st_size + sum((home.output_root / "frame_stats" / f"{run.run_id}.stats.1" / f).stat().st_size
                                      for f in stats_step.result["checksums"])
    assert report.bytes_moved == moved and stats_step.bytes_moved == 0 and back.bytes_moved == 0
    keys = {o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=TEST_BUCKET,
                                                               Prefix=f"cloud/runs/{run.run_id}/")["Contents"]}
    assert keys == {f"cloud/runs/{run.run_id}/scan/scan.mp4",
                    *(f"cloud/runs/{run.run_id}/stats/{f}" for f in stats_step.result["checksums"])}
    # the local step read the cloud step's outputs from S3 through this machine's input cache
    assert stats(home.input_cache_dir)["misses"] == len(report.result["checksums"])


def test_an_output_changed_after_its_step_is_not_moved(home: Settings, tmp_path: Path) -> None:
    targets: Targets = targets_for(home)
    out = tmp_path / "stats-out"
    out.mkdir()
    (out / "result.json").write_text('{"tampered": true}')
    from service.pipelines.store import Run, StepRun

    run = Run(run_id="run_x", pipeline="p", version="1", scan_id="s", scan_uri=str(tmp_path / "scan.mp4"),
              metadata={}, steps={
                  "stats": StepRun("frame_stats", "1", "local", state="completed",
                                   result={"output_uri": str(out), "checksums": {"result.json": "0" * 64}}),
                  "report": StepRun("scan_report", "1", "cloud")})
    with pytest.raises(InputMismatch, match="result.json has sha256 .* not the 000000000000… its step recorded"):
        place_inputs(run, "report", ("stats",), targets["cloud"])
