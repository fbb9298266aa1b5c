"""The worker boot runner (``autoscaler/providers/user_data.sh``) executed by bash, with the
instance's programs (``curl`` to IMDS, ``aws``, ``docker``, ``nvidia-smi``, ``clearml-agent``,
``shutdown`` …) as recording stubs on ``PATH``: what the agents are started with, and that the box
shuts down after the last one exits.

The ``clearml-agent`` stub behaves as the agent does on start-up where it matters here: it writes
its pid file, ``<temp dir>/.clearmlagent_<pid>_*.tmp``, which other daemons on the machine read to
pick their instance slot (``clearml_agent/helper/singleton.py``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from autoscaler.providers.ec2_spec import Ec2PoolSpec, render_user_data
from service.errors import ConfigError

QUEUE = "gpu-scans"
PREFIX = "/scantide/prod"
INSTANCE = "i-0abc123def4567890"
STUBS = {
    # IMDSv2: a PUT for the token, then GETs that must carry it; LIFECYCLE and NOTICE say what the
    # instance is (on-demand unless told) and whether EC2 has posted the spot interruption notice
    "curl": f"""case "$*" in *PUT*api/token*) echo tok-1 ;;
  *X-aws-ec2-metadata-token:\\ tok-1*instance-id*) echo {INSTANCE} ;;
  *X-aws-ec2-metadata-token:\\ tok-1*instance-life-cycle*) echo "${{LIFECYCLE:-on-demand}}" ;;
  *X-aws-ec2-metadata-token:\\ tok-1*spot/instance-action*) [ -n "${{NOTICE:-}}" ] || exit 22; echo "$NOTICE" ;;
  *) exit 22 ;; esac""",
    "aws": """echo "aws $*" >> "$CALLS"
case "$*" in
  *"ssm get-parameter "*) args="$*"; name="${args##*--name }"; echo "from-ssm:${name%% *}" ;;
  *"ssm get-parameters "*) echo "${WORKER_IMAGE_PARAM:-None}" ;;
  *"ecr get-login-password "*) echo ecr-password ;;
  *) echo "unexpected aws call" >&2; exit 1 ;;
esac""",
    "clearml-agent": """{ echo "agent $*"; echo "host=$CLEARML_API_HOST key=$CLEARML_API_ACCESS_KEY worker=$CLEARML_WORKER_ID"
  echo "docker_args=${CLEARML_AGENT_EXTRA_DOCKER_ARGS:-}"
  echo "skip_env=${CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL:-} python=${CLEARML_AGENT_SKIP_PIP_VENV_INSTALL:-}"
  echo "opencv_libs=${CLEARML_AGENT__AGENT__DOCKER_INSTALL_OPENCV_LIBS:-}"
  echo "spot_notice_url=${SCANTIDE_SPOT_NOTICE_URL:-}"
  echo "earlier_agents=$(ls -A "$TMPDIR" | grep -c '^[.]clearmlagent_')"
  } >> "$CALLS"
touch "$TMPDIR/.clearmlagent_$$_x1y2.tmp"
[ "$CLEARML_WORKER_ID" = "${SLOW_WORKER:-}" ] && /bin/sleep 0.5
[ -n "${NOTICE:-}" ] && exec /bin/sleep 60  # runs until the notice stops it
echo "exit worker=$CLEARML_WORKER_ID" >> "$CALLS"; exit 3""",
    "nvidia-smi": """for ((K = 0; K < ${GPUS:-0}; K++)); do echo "GPU $K: NVIDIA A10G (UUID: GPU-$K)"; done
[ "${GPUS:-0}" -gt 0 ]""",
    "docker": 'cat > /dev/null; echo "docker $*" >> "$CALLS"',  # reads the piped ECR password
    "shutdown": 'echo "shutdown $*" >> "$CALLS"',
    "systemctl": "echo running",
    "logger": "cat > /dev/null",
    "sleep": "true",
}


def run_runner(tmp_path: Path, image: str | None, extra_path: Path | None = None, slots: int = 1,
               gpus: int = 1, slow_worker: str = "", lifecycle: str = "on-demand", notice: str = "") -> list[str]:
    """Run the boot runner; ``gpus``: how many GPUs ``nvidia-smi -L`` lists; ``slow_worker``: the
    worker id whose agent outlives the others a little; ``lifecycle``: what IMDS says the instance
    is; ``notice``: the spot interruption notice IMDS answers with (the agents then run until
    stopped)."""
    spec = Ec2PoolSpec(ami="ami-1", subnets=["subnet-1"], security_group_ids=["sg-1"], queue=QUEUE,
                       region="eu-west-1", ssm_prefix=PREFIX, instance_profile_name="scantide-worker",
                       slots=slots)
    text = render_user_data(spec, "gpu")
    runner = text.split("<<'RUNNER'\n", 1)[1].split("\nRUNNER\n", 1)[0]
    runner = runner.replace("LOG=/var/log/scantide-agent.log", f"LOG={tmp_path / 'agent.log'}")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (tmp_path / "runner").write_text(runner)
    calls = tmp_path / "calls"
    (tmp_path / "tmp").mkdir()
    env = {"PATH": f"{bin_dir}:{extra_path or bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "HOME": str(tmp_path),
           "TMPDIR": str(tmp_path / "tmp"), "GPUS": str(gpus), "SLOW_WORKER": slow_worker,
           "LIFECYCLE": lifecycle, "NOTICE": notice,
           **({"WORKER_IMAGE_PARAM": image} if image else {})}
    subprocess.run(["bash", str(tmp_path / "runner")], env=env, check=True, timeout=60, capture_output=True,
                   stdin=subprocess.DEVNULL)
    return calls.read_text().splitlines()


@pytest.mark.skipif(os.name != "posix", reason="bash")
def test_agent_in_the_worker_image_then_shutdown(tmp_path: Path) -> None:
    calls = run_runner(tmp_path, "123456789012.dkr.ecr.eu-west-1.amazonaws.com/scantide-worker:1")

    agent = next(i for i, c in enumerate(calls) if c.startswith("agent "))
    assert calls[agent] == (f"agent daemon --queue {QUEUE} --foreground --docker "
                            "123456789012.dkr.ecr.eu-west-1.amazonaws.com/scantide-worker:1 --gpus all")
    assert calls[agent + 1] == (f"host=from-ssm:{PREFIX}/CLEARML_API_HOST key=from-ssm:{PREFIX}/CLEARML_API_ACCESS_KEY "
                                f"worker={INSTANCE}")
    # The image's USER is uid 10001; the agent's in-container start-up needs root (it reads the
    # 0600 root-owned config it mounts, writes under /root): task containers run as root.
    assert calls[agent + 2] == "docker_args=--user 0:0 -e AWS_DEFAULT_REGION=eu-west-1 -e AWS_REGION=eu-west-1"
    assert calls[agent + 3] == "skip_env= python="  # in the image, the agent's own set-up
    assert calls[agent + 4] == "opencv_libs=false"  # no apt-get per task: the image has the libraries
    assert any(c.startswith("aws ecr get-login-password --region eu-west-1") for c in calls[:agent])
    assert "docker pull --quiet 123456789012.dkr.ecr.eu-west-1.amazonaws.com/scantide-worker:1" in calls[:agent]
    assert calls[-1] == "shutdown -h now"  # the agent exited: the instance goes away


def test_without_an_image_the_agent_runs_tasks_on_the_host(tmp_path: Path) -> None:
    """With the python that has scantide: left to itself the agent builds a fresh venv per task, and
    every task fails "No module named 'algorithms'"."""
    python = tmp_path / "venv" / "bin" / "python3"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    scantide = tmp_path / "bin-scantide" / "scantide"
    scantide.parent.mkdir()
    scantide.write_text(f"#!{python}\nimport service.cli\n")
    scantide.chmod(0o755)
    calls = run_runner(tmp_path, None, extra_path=scantide.parent)

    agent = calls.index(f"agent daemon --queue {QUEUE} --foreground")
    assert calls[agent + 3] == f"skip_env=1 python={python}"
    assert calls[agent + 4] == "opencv_libs="  # no container, no container set-up to configure
    assert not any(c.startswith("docker ") for c in calls)
    assert calls[-1] == "shutdown -h now"


IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/scantide-worker:1"


@pytest.mark.parametrize("image", [IMAGE, None], ids=["docker", "host"])
@pytest.mark.parametrize("gpus, expect", [(2, ["0", "1", "0"]), (1, ["0", "0", "0"]), (0, None)],
                         ids=["2-gpus", "1-gpu", "no-nvidia-smi"])
def test_slots_start_one_agent_each_under_its_own_worker_id(tmp_path: Path, image: str | None, gpus: int,
                                                            expect: list[str] | None) -> None:
    calls = run_runner(tmp_path, image, slots=3, gpus=gpus, slow_worker=f"{INSTANCE}:1")

    agents = [c for c in calls if c.startswith("agent ")]
    assert [c.rsplit("worker=", 1)[1] for c in calls if c.startswith("host=")] == [
        f"{INSTANCE}:0", f"{INSTANCE}:1", f"{INSTANCE}:2"]  # autoscaler.model.slot_worker_ids
    base = f"agent daemon --queue {QUEUE} --foreground" + (f" --docker {image}" if image else "")
    if expect is not None:  # slot k gets GPU k mod the GPU count: on one GPU, all share GPU 0
        assert agents == [f"{base} --gpus {g}" for g in expect]
    else:  # nothing says how many GPUs: every agent gets what one agent gets
        assert agents == [f"{base} --gpus all" if image else base] * 3
    # each agent starts once the one before has written its pid file, so that clearml-agent gives
    # each its own instance slot (and venvs folder)
    assert [c for c in calls if c.startswith("earlier_agents=")] == [f"earlier_agents={k}" for k in range(3)]
    # the instance powers off once, after the last agent (slot 1, the slow one) has exited
    assert calls.count("shutdown -h now") == 1 and calls[-1] == "shutdown -h now"
    assert calls[-2] == f"exit worker={INSTANCE}:1"
    assert sorted(c for c in calls if c.startswith("exit ")) == [f"exit worker={INSTANCE}:{k}" for k in range(3)]
    if image:
        assert sum(c.startswith("docker pull") for c in calls) == 1  # one image for every slot


def test_one_slot_keeps_the_instance_id_and_every_gpu(tmp_path: Path) -> None:
    calls = run_runner(tmp_path, IMAGE, slots=1, gpus=4)
    (agent,) = [c for c in calls if c.startswith("agent ")]
    assert agent.endswith("--gpus all")
    assert [c for c in calls if c.startswith("host=")][0].endswith(f"worker={INSTANCE}")


def test_user_data_renders_the_pool_slots_and_refuses_a_bad_count() -> None:
    def spec(slots: object) -> Ec2PoolSpec:
        return Ec2PoolSpec(ami="ami-1", subnets=["subnet-1"], security_group_ids=["sg-1"], queue=QUEUE,
                           region="eu-west-1", ssm_prefix=PREFIX, instance_profile_name="w", slots=slots)

    assert "\nSLOTS=4\n" in render_user_data(spec(4), "gpu")
    for bad in (0, 17, "2"):
        with pytest.raises(ConfigError, match="slots must be an integer from 1 to 16"):
            spec(bad)


NOTICE = '{"action": "terminate", "time": "2026-01-01T00:02:00Z"}'


@pytest.mark.parametrize("image", [IMAGE, None], ids=["docker", "host"])
def test_on_a_spot_instance_the_tasks_read_the_notice(tmp_path: Path, image: str | None) -> None:
    calls = run_runner(tmp_path, image, lifecycle="spot")

    agent = next(i for i, c in enumerate(calls) if c.startswith("agent "))
    if image:  # the task container gets it (IMDS answers containers: HttpPutResponseHopLimit=2)
        assert calls[agent + 2].endswith(" -e SCANTIDE_SPOT_NOTICE_URL=http://169.254.169.254")
    assert calls[agent + 5] == "spot_notice_url=http://169.254.169.254"  # the agent's environment, the task's
    assert calls[-1] == "shutdown -h now", "no notice: the agent exits and the instance goes as ever"


def test_on_demand_nothing_reads_the_notice(tmp_path: Path) -> None:
    calls = run_runner(tmp_path, IMAGE)

    assert [c for c in calls if c.startswith("spot_notice_url=")] == ["spot_notice_url="]
    assert "SCANTIDE_SPOT_NOTICE_URL" not in next(c for c in calls if c.startswith("docker_args="))


@pytest.mark.parametrize("image", [IMAGE, None], ids=["docker", "host"])
def test_a_spot_notice_stops_the_agents_and_leaves_the_instance_to_ec2(tmp_path: Path, image: str | None) -> None:
    """The agents would run for a minute: the notice kills them (no agent takes another task; none
    reports its running task stopped, as a SIGTERM would make it), and the runner does not power off
    until the time EC2 takes the instance has passed."""
    calls = run_runner(tmp_path, image, slots=2, lifecycle="spot", notice=NOTICE)

    assert len([c for c in calls if c.startswith("agent ")]) == 2
    assert not [c for c in calls if c.startswith("exit ")], "killed, not exited"
    log = (tmp_path / "agent.log").read_text()
    assert f"spot interruption notice {NOTICE}" in log
    assert "leaving the instance to EC2" in log
    assert calls[-1] == "shutdown -h now"
