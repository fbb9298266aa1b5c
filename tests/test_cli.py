"""The command line's contract for scripts, as docs/cli.md states it: ``--json`` on every reader
(stdout parses whole and has each documented key, against a real embedded store, with debug logs
on), the exit codes (each from a real case), and shell completion through a real bash."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer

from autoscaler.daemon import Journal
from autoscaler.fleet_report import fleet_report
from autoscaler.model import Instance, InstanceOption, InstanceState, Market, PoolConfig, PoolSnapshot, Snapshot
from monitor.daemon import outbox_for
from monitor.events import Event
from service.algorithms import register_folder
from service.backends import open_backend
from service.catalog.pipeline import load_pipeline
from service.domain import ScanRequest
from service.enqueue import submit_scan
from service.exit_codes import ExitCode, documented_classes, with_tables
from service.models import register_model
from service.pipelines.runs import register, start_run
from service.pipelines.store import PipelineStore
from service.pipelines.targets import targets_for
from service.settings import Settings, load_settings
from service.supervisor import cli_argv, settings_env

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "cli.md"
EXAMPLES = REPO / "examples"
TRIAGE = EXAMPLES / "pipelines" / "triage" / "scantide-pipeline.yaml"


def cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``scantide --log-level DEBUG ARGS`` in a child process: every log line it writes must stay off stdout."""
    full_env = {**os.environ, **settings_env(settings), "COLUMNS": "200", **env}
    return subprocess.run(cli_argv("--log-level", "DEBUG", *args), cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A state dir with something in every registry a reader reads: algorithms, a pipeline and its run,
    a task, a promoted model version, an outbox event and autoscaler decisions."""
    tmp = tmp_path_factory.mktemp("cli")
    settings = load_settings(state_dir=tmp / "state")
    backend = open_backend(settings)
    for name in ("frame_stats", "scan_report"):
        register_folder(backend, settings, EXAMPLES / "algorithms" / name, by="ana")
    scan = settings.data_root / "scan.mp4"  # type: ignore[operator]
    scan.parent.mkdir(parents=True, exist_ok=True)
    scan.write_bytes(b"not decoded here")
    pipelines, targets = PipelineStore(settings.pipelines_db), targets_for(settings)
    register(pipelines, targets, load_pipeline(TRIAGE.read_bytes(), TRIAGE.name), "ana")
    run, _ = start_run(pipelines, targets, ScanRequest(scan_id="s-run", scan_uri="scan.mp4", pipeline="triage"))
    submit_scan(backend, settings, ScanRequest(scan_id="s-task", scan_uri="scan.mp4"))
    weights = tmp / "weights.pt"
    weights.write_bytes(b"weights")
    register_model(backend, settings, "video_summary", "1", weights, by="ana")
    backend.promote_model("video_summary", "1", by="ana")
    backend.close()
    outbox_for(settings).append([Event("evt_cli_1", "scan.completed", "scan:s-task", time.time(),
                                       {"scan_id": "s-task"})])
    journal = Journal(settings.autoscaler_journal)
    journal.record(time.time(), "launch", "local", "activation: 1 queued", count=1,
                   option={"instance_type": "local", "market": "on_demand", "price_per_hour": 0.0, "subnet": None})
    journal.record(time.time(), "drain", "local", "idle past the break-even", instance="local-1",
                   workers=["local-1"])
    trace = tmp / "trace.csv"
    trace.write_text("arrival_s,service_s\n0,60\n120,60\n")
    return {"settings": settings, "run_id": run.run_id, "trace": str(trace), "tmp": tmp}


def documented_readers() -> list[tuple[str, list[str]]]:
    """(command, keys) for each row of docs/cli.md's table of readers; keys ending in "…" name the
    keys that are always there, and others may be."""
    text = DOC.read_text()
    table = text[text.index("| command | prints | keys |"):].split("\n\n")[0].splitlines()[2:]
    rows = []
    for line in table:
        command, _, keys = line.strip("|").split(" | ")
        rows.append((command.strip("` "), re.findall(r"`([a-z0-9_]+)`", keys) + (["…"] if "…" in keys else [])))
    return rows


def test_every_reader_is_documented() -> None:
    """The table names each command that reads state (a new reader needs its row, and its --json)."""
    documented = {" ".join(c.split()[1:3]) if c.split()[1] in GROUPS else c.split()[1] for c, _ in documented_readers()}
    assert documented == READERS


def json_commands() -> set[str]:
    """Every command of the ``scantide`` tree (with its plugins) that takes ``--json``, as ``group command``."""
    from service import cli

    probe = copy.copy(cli.app)  # main's tree, without touching the module's app
    probe.registered_commands = list(cli.app.registered_commands)
    probe.registered_groups = list(cli.app.registered_groups)
    cli.load_plugins(probe)
    found = set()

    def walk(command: Any, path: str) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())
        if any("--json" in getattr(p, "opts", ()) for p in command.params):
            found.add(path)

    walk(typer.main.get_command(probe), "")
    return found


def test_every_command_with_json_is_in_the_docs() -> None:
    text = DOC.read_text()
    assert {c for c in json_commands() if f"`scantide {c} " not in text} == set()


GROUPS = {"algorithms", "pipelines", "runs", "models", "events", "clearml"}
READERS = {"status", "fleet", "simulate", "algorithms list", "algorithms show", "pipelines list", "pipelines show",
           "runs list", "runs show", "models list", "models show", "events list", "clearml templates"}


@pytest.mark.parametrize("command, keys", documented_readers(),
                         ids=[c.split(" --")[0].removeprefix("scantide ") for c, _ in documented_readers()])
def test_json_of_each_reader_has_the_documented_keys(store: dict, command: str, keys: list[str]) -> None:
    group = command.split()[1]
    names = {"NAME": "triage" if group == "pipelines" else "frame_stats", "RUN_ID": store["run_id"],
             "ALGORITHM": "video_summary", "T": store["trace"]}
    args = [names.get(word, word) for word in command.split()[1:]]

    out = cli(store["settings"], *args)

    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)  # the whole of stdout: no log line, no table
    if isinstance(body, list):
        assert body, f"{command}: an empty list checks no key"
        body = body[0]
    if keys[-1] == "…":
        assert set(keys[:-1]) <= set(body), "docs/cli.md names keys the command does not print"
    else:
        assert sorted(body) == sorted(keys), "the command's keys are not docs/cli.md's: update its table"


def test_fleet_json_shows_instances_and_decisions(store: dict) -> None:
    """What the embedded store cannot show without running workers: an instance and its cost."""
    option = InstanceOption("g5.xlarge", Market.spot, 0.5)
    busy = Instance("i-1", "gpu", option, InstanceState.busy, launched_at=100.0, state_since=130.0, worker_ids=("i-1",),
                    task_ids=("t-1",))
    pool = PoolSnapshot("gpu", pending=2, running=1, oldest_queued_age_s=42.04, arrival_rate_per_s=0.0,
                        instances=(busy,))
    report = fleet_report(Snapshot(now=160.0, pools={"gpu": pool}), {"gpu": PoolConfig("gpu", "gpu-scans", (option,))},
                          Journal(store["settings"].autoscaler_journal).tail(5))

    (gpu,) = report.pools
    assert (gpu.queue, gpu.pending, gpu.running, gpu.oldest_queued_age_s, gpu.cost_per_hour) == ("gpu-scans", 2, 1,
                                                                                                 42.0, 0.5)
    assert gpu.instances[0].model_dump() == {"id": "i-1", "state": "busy", "instance_type": "g5.xlarge",
                                             "market": "spot", "price_per_hour": 0.5, "state_age_s": 30.0,
                                             "slots": 1, "task_ids": ["t-1"]}
    launch, drain = report.decisions
    assert (launch.kind, launch.count, launch.option["instance_type"]) == ("launch", 1, "local")
    assert (drain.kind, drain.instances, drain.workers) == ("drain", ["local-1"], ["local-1"])


def test_submit_json_keeps_its_logs_off_stdout(store: dict) -> None:
    out = cli(store["settings"], "submit", str(store["settings"].data_root / "scan.mp4"), "--scan-id", "s-json",
              "--json")
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(out.stdout)) == ["algorithm", "created", "links", "scan_id", "state", "task_id"]
    assert "scan_submitted" in out.stderr


# -- exit codes ------------------------------------------------------------------------------------
def exit_case(code: ExitCode, store: dict) -> tuple[list[str], dict[str, str], str | None]:
    """A real command line that ends with ``code``: (args, environment, the error code on stderr)."""
    tmp: Path = store["tmp"] / code.name.lower()
    tmp.mkdir(exist_ok=True)
    scan = str(store["settings"].data_root / "scan.mp4")
    if code is ExitCode.OK:
        return ["status", "--json"], {}, None
    if code is ExitCode.FAILED:
        (tmp / "scantide-algorithm.yaml").write_text("name: broken\nversion: 2\n")
        return ["algorithms", "validate", str(tmp)], {}, None
    if code is ExitCode.USAGE:
        return ["events", "list", "--state", "bogus"], {}, None
    if code is ExitCode.NOT_FOUND:
        return ["algorithms", "show", "no_such_algorithm"], {}, "algorithm_not_found"
    if code is ExitCode.INVALID:
        return ["submit", scan, "--param", "no-equals-sign"], {}, "invalid_request"
    if code is ExitCode.CONFLICT:
        changed = tmp / "frame_stats"
        shutil.copytree(EXAMPLES / "algorithms" / "frame_stats", changed, dirs_exist_ok=True)
        (changed / "frame_stats.py").write_text((changed / "frame_stats.py").read_text() + "\n# changed\n")
        return ["algorithms", "register", str(changed)], {}, "algorithm_version_exists"
    if code is ExitCode.UNAVAILABLE:
        (tmp / "state" / "scantide.db").mkdir(parents=True, exist_ok=True)  # a store that cannot be opened
        return ["status", "--json"], {"SCANTIDE_STATE_DIR": str(tmp / "state")}, "backend_unavailable"
    if code is ExitCode.CONFIG:
        return ["clearml", "register-template"], {}, "config_error"
    raise AssertionError(f"no case for {code!r}")


@pytest.mark.parametrize("code", list(ExitCode), ids=[c.name.lower() for c in ExitCode])
def test_each_documented_exit_code_is_what_a_real_case_returns(store: dict, code: ExitCode) -> None:
    args, env, error = exit_case(code, store)
    out = cli(store["settings"], *args, **env)
    assert out.returncode == code.value, (out.stdout, out.stderr)
    if error is not None:
        assert error in out.stderr
    if code is not ExitCode.OK:
        assert not out.stdout.lstrip().startswith(("{", "[")), "a failing command prints no JSON"


def test_the_exit_code_tables_in_the_docs_are_current() -> None:
    text = DOC.read_text()
    assert with_tables(text, documented_classes()) == text, "run: python -m service.exit_codes --write docs/cli.md"
    documented = {int(n) for n in re.findall(r"^\| (\d+) \| `", text, re.M)}
    assert documented == {c.value for c in ExitCode}


# -- shell completion --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def on_path(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose PATH has a ``scantide`` that runs this checkout (the completion script
    calls ``scantide`` by name)."""
    bin_dir = tmp_path_factory.mktemp("bin")
    wrapper = bin_dir / "scantide"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m service.cli "$@"\n')
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO)}


def test_show_completion_prints_a_bash_script(on_path: dict[str, str]) -> None:
    out = subprocess.run(["scantide", "--show-completion", "bash"], env=on_path, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "_SCANTIDE_COMPLETE=complete_bash" in out.stdout
    assert "complete -o default -F _scantide_completion scantide" in out.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")
@pytest.mark.parametrize("words, expected", [
    (["scantide", "alg"], ["algorithms"]),
    (["scantide", "algorithms", "s"], ["show"]),
    (["scantide", "status", "--j"], ["--json"]),
], ids=["command", "subcommand", "option"])
def test_bash_completes_with_the_script(on_path: dict[str, str], words: list[str], expected: list[str]) -> None:
    script = ('eval "$(scantide --show-completion bash)"\n'
              f'COMP_WORDS=({" ".join(words)}); COMP_CWORD={len(words) - 1}\n'
              '_scantide_completion scantide\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
    out = subprocess.run(["bash", "-c", script], env=on_path, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == expected
