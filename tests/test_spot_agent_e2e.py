"""A spot interruption under the real ``clearml-agent`` (venv mode, as the EC2 boot script runs it)
against the ClearML stand-in: the task's entry point reads the notice from a loopback stand-in of
the metadata service and hands its task back; the boot script's part (stopping the agents) is
played by the test, as ``test_user_data_boot`` pins it."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from service.algorithms import register_folder
from service.domain import JobState, ScanRequest
from service.enqueue import submit_scan
from service.spot import INTERRUPTION_CODE
from service.synthetic import write_scan_video
from tests.conftest import wait_for
from tests.support.imds import Imds
from tests.test_production_e2e import BUCKET, CPU_QUEUE, Production, stop
from tests.test_production_e2e import prod as prod  # noqa: F401 - the fixture (pytest finds it by its own name)
from tests.test_real_agent_e2e import agent_binary, real_agent_env

NAP = '''\
name: nap
version: "1"
python: "nap:run"
parameters:
  marker: {type: string, description: where the run writes its pid}
queue: cpu
'''
NAP_PY = '''\
import os
import time
from pathlib import Path


def run(scan_path, params, out_dir, progress=None):
    Path(params["marker"]).write_text(str(os.getpid()))
    time.sleep(600)
    return {}
'''


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_the_entry_point_hands_its_task_back_on_a_spot_notice(prod: Production) -> None:
    folder = prod.tmp_path / "nap"
    folder.mkdir()
    (folder / "scantide-algorithm.yaml").write_text(NAP)
    (folder / "nap.py").write_text(NAP_PY)
    backend = prod.backend()
    register_folder(backend, prod.settings, folder, by="test")
    video = prod.tmp_path / "scan.mp4"
    write_scan_video(video, frames=12, fps=12, size=(64, 48), blur=None, exposure=None)
    prod.moto.client("s3").upload_file(str(video), BUCKET, "uploads/nap-1.mp4")
    marker = prod.tmp_path / "nap.pid"
    task = submit_scan(backend, prod.settings, ScanRequest(scan_id="nap-1", scan_uri=f"s3://{BUCKET}/uploads/nap-1.mp4",
                                                           algorithm="nap", params={"marker": str(marker)})).task
    assert task.queue == CPU_QUEUE
    imds = Imds().start()
    env = {**real_agent_env(prod, prod.tmp_path / "home"), "SCANTIDE_SPOT_NOTICE_URL": imds.url,
           "SCANTIDE_SPOT_NOTICE_POLL_S": "0.2"}
    log = prod.log("clearml-agent")
    with open(log, "wb") as out:
        agent = subprocess.Popen([agent_binary(), "daemon", "--queue", CPU_QUEUE, "--foreground"], cwd=prod.tmp_path,
                                 env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def napping() -> int | None:
            if agent.poll() is not None:
                pytest.fail(f"clearml-agent exited {agent.returncode}:\n{log.read_text()[-4000:]}")
            return int(marker.read_text()) if marker.exists() and marker.read_text() else None

        pid = wait_for(napping, 90, interval_s=0.3, what="the algorithm to run under the agent")
        assert imds.notice_reads() >= 1, "the entry point polls the notice on a spot instance"

        os.kill(agent.pid, signal.SIGKILL)  # the boot script: the agents take no new task
        agent.wait(timeout=10)
        imds.interrupt()

        def back() -> object:
            t = backend.get_task(task.task_id)
            return t if t.state is JobState.queued else None

        wait_for(back, 30, interval_s=0.2, what="the task to be handed back")
        wait_for(lambda: not alive(pid), 30, interval_s=0.2, what="the algorithm to end with its entry point")
    finally:
        stop(agent)
        imds.stop()
    again = backend.get_task(task.task_id)
    assert again.state is JobState.queued and again.attempt == 1
    assert [(h["attempt"], h["state"], h["error"]["code"]) for h in again.history] == [(1, "stopped", INTERRUPTION_CODE)]

    # The next run counts as the first of the task's attempts: a worker that claims it sees attempt 2,
    # and its loss is re-queued (max_attempts 2 would fail it, had the interrupted run counted).
    claimed = backend.claim(CPU_QUEUE, "i-next", lease_s=0.01)
    assert claimed is not None and claimed.task_id == task.task_id and claimed.attempt == 2
    (reaped,) = wait_for(lambda: [t for t in backend.reap_expired() if t.task_id == task.task_id], 10,
                         what="the lease to run out")
    assert reaped.state is JobState.queued, reaped.error
    backend.close()
