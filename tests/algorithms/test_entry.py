"""The task entry point: its optional inputs (model weights, an earlier scan's summary) from local
paths and from S3 on a moto server, and its agent mode under a stand-in ``clearml-agent`` against
the wire-level ClearML stand-in, with the real algorithm on videos written by OpenCV."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from algorithms.entry import EntryError, Inputs, run_task
from service.domain import JobState
from service.settings import Settings, load_settings
from service.synthetic import write_scan_video
from tests.autoscaler.moto_server import AWS_TEST_ENV, MotoServer
from tests.backends.conftest import clearml_backend, clearml_server  # noqa: F401 - the stand-in fixture
from tests.conftest import TEST_BUCKET, builtin_bundle
from tests.fakes.clearml_server import FakeClearMLServer

REPO = Path(__file__).resolve().parents[2]
BUCKET = TEST_BUCKET
QUEUE = "entry-gpu"
SMALL = {"keyframes": 3, "segments": 4}


def small_video(path: Path, seed: int = 0) -> Path:
    write_scan_video(path, frames=48, fps=24, size=(160, 120), blur=None, exposure=None, seed=seed)
    return path


def bundled(tmp_path: Path, **params) -> dict:
    return {**builtin_bundle(tmp_path), **SMALL, **params}


def spec(tmp_path: Path, output_uri: str, **params) -> dict:
    return {"algorithm": "video_summary", "output_uri": output_uri, "bundle_cache": str(tmp_path / "bundles"),
            "params": bundled(tmp_path, **params)}


def weights_copy(tmp_path: Path) -> tuple[Path, str]:
    """A copy of the committed weights under another name, and its SHA-256."""
    from algorithms.video_summary import DEFAULT_WEIGHTS

    copy = tmp_path / "weights-v7.pt"
    shutil.copyfile(DEFAULT_WEIGHTS, copy)
    return copy, hashlib.sha256(copy.read_bytes()).hexdigest()


@pytest.fixture
def s3_settings(aws: MotoServer, tmp_path: Path) -> Settings:
    return load_settings(state_dir=tmp_path / "state", s3_endpoint_url=aws.url)


# -- optional inputs, embedded mode (local paths) -------------------------------------------------
def test_local_model_and_previous_summary_reach_the_algorithm(tmp_path: Path) -> None:
    scan = small_video(tmp_path / "scan.mp4")
    weights, sha = weights_copy(tmp_path)
    first = run_task(spec(tmp_path, str(tmp_path / "out" / "first"), scan_uri=str(scan)))
    assert "comparison" not in json.loads((tmp_path / "out" / "first" / "summary.json").read_text())

    second = run_task(spec(tmp_path, str(tmp_path / "out" / "second"), scan_uri=str(scan), model_uri=str(weights),
                           model_version="v7", previous_output_uri=first["output_uri"]))

    summary = json.loads((tmp_path / "out" / "second" / "summary.json").read_text())
    assert summary["model"]["sha256"] == sha and summary["model"]["version"] == "v7"
    assert "comparison" in summary  # the same video twice: compared with the first run's summary
    assert second["model_version"] == "v7"


@pytest.mark.parametrize(("param", "what"), [("model_uri", "the model weights"),
                                              ("previous_output_uri", "the previous scan's summary")])
def test_missing_local_input_fails_the_fetch(tmp_path: Path, param: str, what: str) -> None:
    scan = small_video(tmp_path / "scan.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EntryError) as err:
        run_task(spec(tmp_path, str(tmp_path / "out"), scan_uri=str(scan),
                      **{param: str(tmp_path / "empty" / "nothing")}))
    assert err.value.code == "fetch_failed" and what in err.value.message
    assert not (tmp_path / "out").exists()


# -- optional inputs from S3 ------------------------------------------------------------------------
def test_s3_model_and_previous_summary_are_fetched(s3_settings: Settings, aws: MotoServer, tmp_path: Path) -> None:
    s3 = aws.client("s3")
    s3.upload_file(str(small_video(tmp_path / "scan.mp4")), BUCKET, "uploads/p1/scan-2.mp4")
    weights, sha = weights_copy(tmp_path)
    s3.upload_file(str(weights), BUCKET, "models/video_summary/v7.pt")
    scan_uri = f"s3://{BUCKET}/uploads/p1/scan-2.mp4"
    first = run_task(spec(tmp_path, f"s3://{BUCKET}/results/first", scan_uri=scan_uri), s3_settings)

    second = run_task(spec(tmp_path, f"s3://{BUCKET}/results/second", scan_uri=scan_uri,
                           model_uri=f"s3://{BUCKET}/models/video_summary/v7.pt",
                           previous_output_uri=first["output_uri"] + "/"), s3_settings)

    summary = json.loads(s3.get_object(Bucket=BUCKET, Key="results/second/summary.json")["Body"].read())
    assert summary["model"]["sha256"] == sha
    assert "comparison" in summary
    assert second["output_uri"] == f"s3://{BUCKET}/results/second"


def test_s3_inputs_land_as_local_files(s3_settings: Settings, aws: MotoServer, tmp_path: Path) -> None:
    s3 = aws.client("s3")
    s3.put_object(Bucket=BUCKET, Key="models/m.pt", Body=b"weights" * 100)
    s3.put_object(Bucket=BUCKET, Key="results/prev/summary.json", Body=b'{"keyframes": []}')
    work = tmp_path / "work"
    params = Inputs(work, s3_settings).params({"scan_uri": "x", "model_uri": f"s3://{BUCKET}/models/m.pt",
                                               "previous_output_uri": f"s3://{BUCKET}/results/prev"})
    assert Path(params["model_path"]).read_bytes() == b"weights" * 100
    assert Path(params["model_path"]).suffix == ".pt" and Path(params["model_path"]).is_relative_to(work)
    assert Path(params["previous_summary"]).read_bytes() == b'{"keyframes": []}'

    with pytest.raises(EntryError) as err:
        Inputs(work, s3_settings).params({"previous_output_uri": f"s3://{BUCKET}/results/never-ran"})
    assert err.value.code == "fetch_failed"
    assert f"s3://{BUCKET}/results/never-ran/summary.json" in err.value.message


# -- agent mode ---------------------------------------------------------------------------------------
def agent_env(server: FakeClearMLServer, aws: MotoServer, tmp_path: Path) -> dict[str, str]:
    """A task process's environment under the agent: API credentials, AWS, the worker's settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SCANTIDE_", "CLEARML_", "AWS_"))}
    return {**base, **server.env(), **AWS_TEST_ENV, "CLEARML_CONFIG_FILE": str(tmp_path / "no-clearml.conf"),
            "SCANTIDE_BACKEND": "clearml", "SCANTIDE_S3_ENDPOINT_URL": aws.url,
            "SCANTIDE_CLEARML_PROJECT": "scantide-tests", "SCANTIDE_STATE_DIR": str(tmp_path / "worker-state"),
            "SCANTIDE_CONFIG": str(tmp_path / "absent.toml")}


def test_agent_mode_records_results_and_errors_on_the_task(clearml_server: FakeClearMLServer,  # noqa: F811
                                                           aws: MotoServer, tmp_path: Path) -> None:
    from service.algorithms import builtin_folders, register_folder
    from service.domain import ScanRequest
    from service.enqueue import submit_scan

    settings = load_settings(backend="clearml", state_dir=tmp_path / "state", clearml_project="scantide-tests",
                             output_root=f"s3://{BUCKET}/results", s3_endpoint_url=aws.url,
                             algorithm_queues={"gpu": QUEUE})
    backend = clearml_backend()
    (folder,) = builtin_folders()
    register_folder(backend, settings, folder, by="test")
    s3 = aws.client("s3")
    s3.upload_file(str(small_video(tmp_path / "scan.mp4")), BUCKET, "uploads/ok.mp4")
    s3.put_object(Bucket=BUCKET, Key="uploads/not-a-video.mp4", Body=b"this is not a video")
    tasks = {}
    for scan_id, key in (("ok", "uploads/ok.mp4"), ("refused", "uploads/not-a-video.mp4"),
                         ("missing", "uploads/missing.mp4")):
        request = ScanRequest(scan_id=scan_id, scan_uri=f"s3://{BUCKET}/{key}", metadata={"p": 1}, params=SMALL)
        tasks[scan_id] = submit_scan(backend, settings, request).task
        assert tasks[scan_id].queue == QUEUE

    agent = subprocess.run([sys.executable, "-m", "tests.fakes.clearml_agent", "--queue", QUEUE,
                            "--worker-id", "i-0123", "--max-tasks", "3"], check=False, cwd=REPO,
                           env=agent_env(clearml_server, aws, tmp_path), capture_output=True, text=True, timeout=180)
    assert agent.returncode == 0, agent.stderr[-3000:]

    ok = backend.get_task(tasks["ok"].task_id)
    assert ok.state is JobState.completed, (ok.error, agent.stderr[-3000:])
    assert ok.result is not None and ok.result["output_uri"] == f"s3://{BUCKET}/results/video_summary/ok"
    assert ok.progress == 1.0 and ok.worker_id == "i-0123"
    prefix = "results/video_summary/ok/"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
    assert {prefix + f for f in ok.result["outputs"]["files"]} == keys
    refused = backend.get_task(tasks["refused"].task_id)
    assert refused.state is JobState.failed and refused.error is not None
    assert refused.error.code == "invalid_video" and refused.result is None
    missing = backend.get_task(tasks["missing"].task_id)
    assert missing.state is JobState.failed and missing.error is not None
    assert missing.error.code == "fetch_failed" and "uploads/missing.mp4" in missing.error.message
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="results/video_summary/missing/")
    backend.close()


def test_agent_mode_needs_a_task_id(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCANTIDE_", "CLEARML_"))}
    proc = subprocess.run([sys.executable, "-m", "algorithms.entry"], check=False, cwd=REPO, capture_output=True,
                          text=True, env={**env, "SCANTIDE_CONFIG": str(tmp_path / "absent.toml")}, timeout=60)
    assert proc.returncode == 2
    assert "CLEARML_TASK_ID is not set" in proc.stderr
