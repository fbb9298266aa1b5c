"""``scantide pipelines …`` and ``scantide runs …`` as real subprocesses on a fresh state dir."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from service.domain import ScanRequest
from service.pipelines.runs import start_run
from service.pipelines.store import PipelineStore
from service.pipelines.targets import targets_for
from service.settings import load_settings
from service.supervisor import cli_argv

REPO = Path(__file__).resolve().parents[2]
TRIAGE = REPO / "examples" / "pipelines" / "triage"


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANTIDE_")}
    env.update(SCANTIDE_STATE_DIR=str(tmp_path / "state"), SCANTIDE_CONFIG=str(tmp_path / "absent.toml"),
               COLUMNS="200")
    return subprocess.run(cli_argv(*args), cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_validate_register_list_show_and_runs(tmp_path: Path) -> None:
    missing = cli(tmp_path, "pipelines", "validate", str(TRIAGE), "--json")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["errors"] == [
        "steps[0].algorithm: unknown algorithm 'frame_stats': register it first",
        "steps[2].algorithm: unknown algorithm 'scan_report': register it first"]
    for name in ("frame_stats", "scan_report"):
        assert cli(tmp_path, "algorithms", "register", str(REPO / "examples" / "algorithms" / name)).returncode == 0
    valid = cli(tmp_path, "pipelines", "validate", str(TRIAGE))
    assert valid.returncode == 0 and "valid: triage 1 (3 steps: stats, summary, report)" in valid.stdout

    first = cli(tmp_path, "pipelines", "register", str(TRIAGE / "scantide-pipeline.yaml"), "--json", "--by", "ana")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["created"] is True and json.loads(first.stdout)["registered_by"] == "ana"
    assert "already registered (same content)" in cli(tmp_path, "pipelines", "register", str(TRIAGE)).stdout
    changed = tmp_path / "triage.yaml"
    changed.write_text((TRIAGE / "scantide-pipeline.yaml").read_text().replace("keyframes: 6", "keyframes: 7"))
    refused = cli(tmp_path, "pipelines", "register", str(changed))
    assert refused.returncode != 0 and "pipeline_version_exists" in refused.stderr + refused.stdout

    listed = json.loads(cli(tmp_path, "pipelines", "list", "--json").stdout)
    assert [(p["name"], p["version"]) for p in listed] == [("triage", "1")]
    shown = json.loads(cli(tmp_path, "pipelines", "show", "triage", "--json").stdout)
    assert [s["name"] for s in shown["descriptor"]["steps"]] == ["stats", "summary", "report"]
    assert cli(tmp_path, "pipelines", "show", "nope").returncode != 0

    settings = load_settings(state_dir=tmp_path / "state")
    (settings.data_root / "scan.mp4").parent.mkdir(parents=True)
    (settings.data_root / "scan.mp4").write_bytes(b"not decoded here")
    run, _ = start_run(PipelineStore(settings.pipelines_db), targets_for(settings),
                       ScanRequest(scan_id="s1", scan_uri="scan.mp4", pipeline="triage"))
    runs = json.loads(cli(tmp_path, "runs", "list", "--json").stdout)
    assert [(r["run_id"], r["state"]) for r in runs] == [(run.run_id, "queued")]
    table = cli(tmp_path, "runs", "show", run.run_id)
    assert table.returncode == 0 and "stats" in table.stdout and "pending" in table.stdout
    pinned = json.loads(cli(tmp_path, "runs", "show", run.run_id, "--json").stdout)["steps"]
    assert {name: step["version"] for name, step in pinned.items()} == {n: s.version for n, s in run.steps.items()}
    retry = cli(tmp_path, "runs", "retry", run.run_id)
    assert retry.returncode != 0 and "run_not_retryable" in retry.stderr + retry.stdout
