"""The run contract of a registered algorithm, rule by rule, through real ``scantide worker``
processes: a command algorithm (a probe script whose ``mode`` parameter picks what it does) and
a ``python`` algorithm, each registered from a folder written here."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from service.algorithms import register_folder
from service.backends.base import TaskBackend
from service.domain import JobState, ScanRequest, TaskInfo
from service.enqueue import submit_scan
from service.settings import Settings
from tests.conftest import Workers, wait_for, wait_terminal

PROBE = '''
import json, os, signal, subprocess, sys, time
mode, inputs, outputs = sys.argv[1], sys.argv[2], sys.argv[3]
print("probe starting", mode, flush=True)
scans = os.listdir(inputs)
if mode == "ok":
    for step in (0.25, 0.5, 0.75):
        print(f"scantide:progress {step}", flush=True)
    with open(os.path.join(outputs, "notes.txt"), "w") as f:
        f.write("hello")
    json.dump({"scans": scans, "argv": sys.argv[1:], "env": sorted(os.environ),
               "home": os.environ["HOME"]}, open(os.path.join(outputs, "result.json"), "w"))
elif mode == "refuse":
    print("this scan is not for me", flush=True)
    sys.exit(2)
elif mode == "crash":
    print("x" * 3000 + " LAST WORDS", flush=True)
    sys.exit(3)
elif mode == "signal":
    os.kill(os.getpid(), signal.SIGKILL)
elif mode == "hang":
    # a grandchild in a process group of its own: the timeout must reach it too
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], process_group=0)
    print("helper pid", helper.pid, flush=True)
    time.sleep(600)
elif mode == "bad_result":
    open(os.path.join(outputs, "result.json"), "w").write("[1, 2]")
'''

DESCRIPTOR = '''
name: probe
version: "1"
command: ["python", "{here}/probe.py", "{params.mode}", "{inputs}", "{outputs}"]
parameters:
  mode: {type: string, enum: [ok, refuse, crash, signal, hang, bad_result]}
required: [mode]
resources: {timeout_s: 2, max_attempts: 3}
'''

PY_MODULE = '''
import os

class Refused(Exception):
    code = "scan_too_dark"
    message = "the scan is too dark to analyse"

def run(scan_path, params, out_dir, progress=None):
    progress(0.5)
    if params["mode"] == "value_error":
        raise ValueError("not a scan this function takes")
    if params["mode"] == "coded":
        raise Refused()
    if params["mode"] == "boom":
        raise RuntimeError("boom")
    (out_dir / "seen.txt").write_text(scan_path.name)
    return {"size": scan_path.stat().st_size, "env": sorted(os.environ), "scan_id": params["scan_id"],
            "scan_path": str(scan_path), "pid": os.getpid()}
'''

PY_DESCRIPTOR = '''
name: pyprobe
version: "1"
python: "pyprobe:run"
parameters:
  mode: {type: string, default: ok}
'''


@pytest.fixture
def registered(tmp_path: Path, settings: Settings, backend: TaskBackend) -> None:
    for name, files in (("probe", {"probe.py": PROBE, "scantide-algorithm.yaml": DESCRIPTOR}),
                        ("pyprobe", {"pyprobe.py": PY_MODULE, "scantide-algorithm.yaml": PY_DESCRIPTOR})):
        folder = tmp_path / name
        folder.mkdir()
        for file, text in files.items():
            (folder / file).write_text(textwrap.dedent(text))
        register_folder(backend, settings, folder, by="test")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def run_modes(backend: TaskBackend, settings: Settings, workers: Workers, make_video, algorithm: str,
              modes: list[str]) -> dict[str, TaskInfo]:
    make_video("scan.mp4", frames=12, size=(64, 48))
    ids = {mode: submit_scan(backend, settings, ScanRequest(scan_id=f"{algorithm}-{mode}", scan_uri="scan.mp4",
                                                            algorithm=algorithm, params={"mode": mode})).task.task_id
           for mode in modes}
    workers.start(2)
    return {mode: wait_terminal(backend, task_id, timeout_s=120) for mode, task_id in ids.items()}


@pytest.mark.usefixtures("registered")
def test_command_exit_codes_progress_results_and_log_tails(backend: TaskBackend, settings: Settings,
                                                           workers: Workers, make_video) -> None:
    done = run_modes(backend, settings, workers, make_video, "probe",
                     ["ok", "refuse", "crash", "signal", "hang", "bad_result"])

    ok = done["ok"]
    assert ok.state is JobState.completed and ok.progress == 1.0
    result = ok.result or {}
    assert result["scans"] == ["scan.mp4"] and result["argv"][0] == "ok"
    assert sorted(result["outputs"]["files"]) == ["notes.txt", "result.json"]
    assert result["algorithm_version"] == "1"
    assert (Path(result["output_uri"]) / "notes.txt").read_text() == "hello"
    # no secrets, no worker settings: a minimal environment and a private home
    assert not [k for k in result["env"] if k.startswith(("SCANTIDE_", "AWS_", "CLEARML_"))]
    assert "scantide-run-" in result["home"]

    def failed(mode: str, code: str) -> TaskInfo:
        task = done[mode]
        assert task.state is JobState.failed and task.error is not None, (mode, task)
        assert task.error.code == code, (mode, task.error)
        assert task.attempt == 1  # only a lost worker is retried, never what the algorithm decided
        return task

    assert "this scan is not for me" in failed("refuse", "invalid_input").error.log_tail
    crash = failed("crash", "algorithm_crashed").error
    assert crash.log_tail.rstrip().endswith("LAST WORDS") and len(crash.log_tail.encode()) <= 2048
    assert "exited with status 3" in crash.message
    assert "signal 9" in failed("signal", "algorithm_crashed").error.message
    hang = failed("hang", "timeout").error
    assert "2 s limit" in hang.message
    helper = int(hang.log_tail.split("helper pid", 1)[1].split()[0])
    wait_for(lambda: not alive(helper), timeout_s=30, what="the timed-out command's helper process to be killed")
    assert "not a JSON object" in failed("bad_result", "invalid_result").error.message


@pytest.mark.usefixtures("registered")
def test_python_runner_results_and_errors(backend: TaskBackend, settings: Settings, workers: Workers,
                                          make_video) -> None:
    workers.env.update(AWS_SECRET_ACCESS_KEY="not-for-algorithms", CLEARML_API_SECRET_KEY="nor-this")
    done = run_modes(backend, settings, workers, make_video, "pyprobe", ["ok", "value_error", "coded", "boom"])

    ok = done["ok"]
    assert ok.state is JobState.completed, ok.error
    assert ok.result is not None and ok.result["scan_id"] == "pyprobe-ok" and ok.result["size"] > 0
    assert (Path(ok.result["output_uri"]) / "seen.txt").read_text() == "scan.mp4"
    # its own process, with none of the worker's credentials, on its own copy of the scan
    assert not [k for k in ok.result["env"] if k.startswith(("SCANTIDE_", "AWS_", "CLEARML_"))]
    assert "scantide-run-" in ok.result["scan_path"] and ok.result["pid"] != workers.procs[0].pid
    codes = {mode: (t.state, t.error.code if t.error else None) for mode, t in done.items() if mode != "ok"}
    assert codes == {"value_error": (JobState.failed, "invalid_input"), "coded": (JobState.failed, "scan_too_dark"),
                     "boom": (JobState.failed, "algorithm_crashed")}
    assert "RuntimeError: boom" in done["boom"].error.log_tail


@pytest.mark.usefixtures("registered")
def test_a_task_whose_bundle_is_not_the_registered_one_never_runs(backend: TaskBackend, settings: Settings,
                                                                  workers: Workers, make_video) -> None:
    make_video("scan.mp4", frames=12, size=(64, 48))
    task = submit_scan(backend, settings, ScanRequest(scan_id="forged", scan_uri="scan.mp4", algorithm="probe",
                                                      params={"mode": "ok"})).task
    with backend.db.tx() as db:  # type: ignore[attr-defined]
        params = {**task.params, "bundle_sha256": "0" * 64}
        db.execute("UPDATE tasks SET params = ? WHERE id = ?", (json.dumps(params), task.task_id))
    workers.start(1)
    done = wait_terminal(backend, task.task_id)
    assert done.state is JobState.failed and done.error is not None
    assert done.error.code == "unregistered_algorithm" and "only registered code runs" in done.error.message


@pytest.mark.usefixtures("registered")
def test_a_required_parameter_is_refused_at_enqueue(backend: TaskBackend, settings: Settings, make_video) -> None:
    from service.errors import InvalidParams

    make_video("scan.mp4", frames=12, size=(64, 48))
    with pytest.raises(InvalidParams) as refused:
        submit_scan(backend, settings, ScanRequest(scan_id="no-mode", scan_uri="scan.mp4", algorithm="probe"))
    assert refused.value.message == "params.mode: required"
    assert backend.tasks_for_scan("no-mode") == []


@pytest.mark.usefixtures("registered")
def test_a_task_queued_before_its_algorithm_was_registered_runs_the_newest_version(
        backend: TaskBackend, settings: Settings, workers: Workers, make_video) -> None:
    make_video("scan.mp4", frames=12, size=(64, 48))
    task = submit_scan(backend, settings, ScanRequest(scan_id="old", scan_uri="scan.mp4", algorithm="pyprobe")).task
    with backend.db.tx() as db:  # type: ignore[attr-defined]  # as a scantide without a registry queued it
        params = {k: v for k, v in task.params.items() if k not in ("algorithm_version", "bundle_uri", "bundle_sha256")}
        db.execute("UPDATE tasks SET params = ? WHERE id = ?", (json.dumps(params), task.task_id))
    workers.start(1)
    done = wait_terminal(backend, task.task_id)
    assert done.state is JobState.completed, done.error
    assert done.result is not None and done.result["algorithm_version"] == "1"
