"""Production mode with the real ``clearml-agent`` (the dev extra's), in venv mode as the EC2 boot
script runs it on a host without a worker image: ``clearml-agent daemon --queue Q --foreground`` with
``CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL=1`` and ``CLEARML_AGENT_SKIP_PIP_VENV_INSTALL`` naming the
python that has scantide (``autoscaler/providers/user_data.sh``), against the ClearML stand-in and
moto's S3. The agent stand-in (``tests.fakes.clearml_agent``) serves the faster tests.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.domain import JobState, ScanRequest
from service.enqueue import submit_scan
from service.synthetic import write_scan_video
from tests.conftest import wait_for
from tests.test_production_e2e import BUCKET, CPU_QUEUE, Production, agent_env, stop
from tests.test_production_e2e import prod as prod  # noqa: F401 - the fixture (pytest finds it by its own name)

WORKER = "i-real-agent-1"


def agent_binary() -> str:
    found = shutil.which("clearml-agent", path=str(Path(sys.executable).parent)) or shutil.which("clearml-agent")
    assert found, "clearml-agent is in the dev extra: pip install -e '.[dev]'"
    return found


def real_agent_env(prod: Production, home: Path) -> dict[str, str]:
    """The boot script's host branch: the SSM credentials, the worker id, tasks run by the python that
    has scantide (no venv built, nothing pip-installed), and an empty configuration file; HOME (so
    the agent's venv, cache and pip folders) in the test's temporary folder."""
    home.mkdir()
    (prod.tmp_path / "agent-tmp").mkdir()
    config = prod.tmp_path / "no-clearml.conf"
    config.write_text("")
    return {**agent_env(prod), "HOME": str(home), "CLEARML_CONFIG_FILE": str(config),
            "CLEARML_WORKER_ID": WORKER, "CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL": "1",
            "CLEARML_AGENT_SKIP_PIP_VENV_INSTALL": sys.executable, "PYTHONUNBUFFERED": "1",
            "TMPDIR": str(prod.tmp_path / "agent-tmp")}  # its per-task configuration and output files


@pytest.mark.slow
def test_the_real_agent_runs_a_command_algorithm_in_venv_mode(prod: Production) -> None:
    video = prod.tmp_path / "scan.mp4"
    write_scan_video(video, frames=48, fps=24, size=(160, 120), blur=None, exposure=None)
    prod.moto.client("s3").upload_file(str(video), BUCKET, "uploads/ra-1.mp4")
    backend = prod.backend()
    task = submit_scan(backend, prod.settings, ScanRequest(scan_id="ra-1", scan_uri=f"s3://{BUCKET}/uploads/ra-1.mp4",
                                                           algorithm="frame_stats", params={"min_brightness": 50})).task
    assert task.queue == CPU_QUEUE
    log = prod.log("clearml-agent")
    with open(log, "wb") as out:
        agent = subprocess.Popen([agent_binary(), "daemon", "--queue", CPU_QUEUE, "--foreground"], cwd=prod.tmp_path,
                                 env=real_agent_env(prod, prod.tmp_path / "home"), stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
    try:
        def ended() -> object:
            if agent.poll() is not None:
                pytest.fail(f"clearml-agent exited {agent.returncode}:\n{log.read_text()[-4000:]}")
            state = backend.get_task(task.task_id).state
            return state if state in (JobState.completed, JobState.failed) else None

        wait_for(ended, 75, interval_s=0.5, what="the agent to finish the task")
    finally:
        stop(agent)
    done = backend.get_task(task.task_id)
    output = log.read_text()
    assert done.state is JobState.completed, (done.error, output[-4000:])
    assert done.worker_id == WORKER
    result = done.result or {}
    assert (result["frame_count"], result["width"], result["min_brightness"]) == (48, 160, 50.0)
    prefix = "results/frame_stats/ra-1/"
    keys = {o["Key"] for o in prod.moto.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
    assert keys == {prefix + "result.json", prefix + "brightness.csv"}
    # the agent's own calls around the run: it takes the popped task off its queue into in_progress
    # (tasks.dequeue), pings it while it runs, and sends the task's console log in batches
    assert {"tasks.dequeue", "tasks.ping", "events.add_batch"} <= set(prod.clearml.app.calls)
    lines = "\n".join(e["msg"] for e in prod.clearml.app.logs.get(task.task_id, []))
    assert "frame_stats: 48 frames" in lines and "task_completed" in lines, lines[-3000:]
    assert WORKER not in prod.clearml.app.workers  # the agent unregistered on SIGTERM
    backend.close()
