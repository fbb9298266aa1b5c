"""``scantide algorithms validate | register | list | show`` as real subprocesses on a fresh state dir."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from service.supervisor import cli_argv

REPO = Path(__file__).resolve().parent.parent
FRAME_STATS = REPO / "examples" / "algorithms" / "frame_stats"


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANTIDE_")}
    env.update(SCANTIDE_STATE_DIR=str(tmp_path / "state"), SCANTIDE_CONFIG=str(tmp_path / "absent.toml"),
               COLUMNS="200")
    return subprocess.run(cli_argv("algorithms", *args), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_validate_names_every_problem_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "scantide-algorithm.yaml").write_text(
        'name: ok_name\nversion: 2\ncommand: ["python", "{here}/run.py", "{params.level}"]\n'
        "parameters:\n  level: {type: number, minimum: low}\n")
    out = cli(tmp_path, "validate", str(bad))
    assert out.returncode == 1
    assert 'version: expected a string (quote it: "2")' in out.stdout
    assert "parameters.level.minimum: expected a number" in out.stdout
    as_json = cli(tmp_path, "validate", str(bad), "--json")
    assert as_json.returncode == 1
    body = json.loads(as_json.stdout)
    assert body["valid"] is False and body["code"] == "invalid_descriptor" and len(body["errors"]) >= 2

    good = cli(tmp_path, "validate", str(FRAME_STATS), "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["descriptor"]["name"] == "frame_stats"


def test_register_list_and_show(tmp_path: Path) -> None:
    first = cli(tmp_path, "register", str(FRAME_STATS), "--json", "--by", "ana")
    assert first.returncode == 0, first.stderr
    registered = json.loads(first.stdout)
    assert registered["created"] is True and registered["registered_by"] == "ana"
    again = cli(tmp_path, "register", str(FRAME_STATS))
    assert again.returncode == 0 and "already registered (same content)" in again.stdout

    listing = json.loads(cli(tmp_path, "list", "--json").stdout)
    assert {(v["name"], v["version"]) for v in listing} == {("frame_stats", "1"), ("video_summary", "3")}
    shown = json.loads(cli(tmp_path, "show", "frame_stats", "--json").stdout)
    assert shown["sha256"] == registered["sha256"] and shown["descriptor"]["queue"] == "cpu"
    missing = cli(tmp_path, "show", "frame_stats", "--version", "9")
    assert missing.returncode == 3 and "algorithm_not_found" in missing.stderr  # not_found
