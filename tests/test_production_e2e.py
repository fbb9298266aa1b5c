"""Production mode end to end, every part real but the ClearML server: the wire-level stand-in
(``tests.fakes.clearml_server``) for ClearML, the moto server for S3, EC2 and SSM, all over HTTP on
127.0.0.1; the Lambda handler, the autoscaler with the EC2 provider, a stand-in ``clearml-agent``
running ``python -m algorithms.entry`` on a video written by OpenCV, the real ``scantide monitor``
and ``scantide autoscaler`` processes, the API on uvicorn, a webhook receiver that checks
signatures.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import lambda_enqueue.handler as lam
from autoscaler.model import Launch
from autoscaler.providers.ec2 import TAG_MANAGED, TAG_POOL
from autoscaler.runner import build
from service.algorithms import builtin_folders, register_folder
from service.backends.clearml import ClearMLBackend
from service.domain import JobState, ScanRequest
from service.enqueue import submit_scan
from service.settings import Settings, load_settings
from service.signing import verify_signature
from service.supervisor import cli_argv, settings_env
from service.synthetic import write_scan_video
from tests.autoscaler.moto_server import (
    AWS_TEST_ENV,
    REGION,
    Ec2World,
    MotoServer,
    build_world,
)
from tests.conftest import TOKEN, ApiServer, free_port, wait_for
from tests.fakes.clearml_server import FakeClearMLServer
from tests.monitor.receiver import Receiver

REPO = Path(__file__).resolve().parent.parent
BUCKET = "scantide-prod"
QUEUE = "gpu-scans"
POOL = "gpu"
SSM_PREFIX = "/scantide/e2e"
SECRET = "e2e-webhook-secret-0123456789abcdef"
CPU_QUEUE = "cpu-scans"
FRAME_STATS = REPO / "examples" / "algorithms" / "frame_stats"


@dataclass
class Production:
    moto: MotoServer
    ec2_world: Ec2World
    clearml: FakeClearMLServer
    receiver: Receiver
    settings: Settings
    tmp_path: Path

    def env(self) -> dict[str, str]:
        """A control-plane process's environment: settings, ClearML credentials, AWS (moto)."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SCANTIDE_", "CLEARML_", "AWS_"))}
        return {**base, **AWS_TEST_ENV, **self.clearml.env(), **settings_env(self.settings),
                "CLEARML_CONFIG_FILE": str(self.tmp_path / "no-clearml.conf"),
                "SCANTIDE_CONFIG": str(self.tmp_path / "absent.toml")}

    def backend(self) -> ClearMLBackend:
        return ClearMLBackend.from_settings(self.settings)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.log(name), "wb") as log:
            return subprocess.Popen(cli_argv(*args), cwd=REPO, env=self.env(), stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL)

    def log(self, name: str) -> Path:
        return self.tmp_path / f"{name}.log"

    def instances(self) -> list[dict]:
        """The pool's live instances in moto."""
        found = self.moto.client("ec2").describe_instances(Filters=[
            {"Name": f"tag:{TAG_POOL}", "Values": [POOL]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]}])["Reservations"]
        return [i for r in found for i in r["Instances"]]


def autoscaler_config(path: Path, moto: MotoServer, world: Ec2World) -> Path:
    path.write_text(f"""\
tick_s = 0.5
provider = "ec2"

[[pools]]
name = "{POOL}"
queue = "{QUEUE}"
max_instances = 2
expected_service_s = 900.0
boot_timeout_s = 3600.0
lost_after_s = 3600.0

[[pools.options]]
instance_type = "g5.xlarge"
market = "spot"
price_per_hour = 0.45

{world.ec2_toml(moto, SSM_PREFIX)}""")
    return path


@pytest.fixture
def prod(moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Production]:
    """The AWS account (bucket, subnets, SSM parameters), ClearML with the template registered,
    a webhook receiver, and this process's environment pointed at them (the Lambda reads it)."""
    moto.reset()
    world = build_world(moto)
    moto.client("s3").create_bucket(Bucket=BUCKET)
    clearml = FakeClearMLServer(port=free_port()).start()
    receiver = Receiver(SECRET)
    receiver.up()
    settings = load_settings(
        backend="clearml", state_dir=tmp_path / "state", clearml_project="scantide-e2e", default_queue=QUEUE,
        output_root=f"s3://{BUCKET}/results", s3_endpoint_url=moto.url, presign_ttl_s=600,
        webhook_url=receiver.url, webhook_secret=SECRET, webhook_backoff_base_s=0.2, webhook_backoff_cap_s=1.0,
        monitor_poll_s=0.2, clearml_timeout_s=3.0, clearml_retries=0, api_port=free_port(),
        api_tokens={TOKEN: ["enqueue", "read"]}, algorithm_queues={"gpu": QUEUE, "cpu": CPU_QUEUE},
        autoscaler_config=autoscaler_config(tmp_path / "autoscaler.toml", moto, world))
    p = Production(moto, world, clearml, receiver, settings, tmp_path)
    for name, value in p.env().items():
        if name.startswith(("SCANTIDE_", "CLEARML_", "AWS_")):
            monkeypatch.setenv(name, value)
    ssm = moto.client("ssm")
    for name, value in clearml.env().items():  # what the deploy guide puts in SSM for the workers
        ssm.put_parameter(Name=f"{SSM_PREFIX}/{name}", Value=value, Type="SecureString")
    backend = p.backend()
    for folder in (*builtin_folders(), FRAME_STATS):  # video_summary on the GPU queue, frame_stats on the CPU one
        register_folder(backend, settings, folder, by="e2e")
    backend.close()
    lam.runtime.cache_clear()
    yield p
    lam.runtime.cache_clear()
    receiver.down()
    clearml.stop()


def s3_event(bucket: str, key: str, size: int) -> dict:
    return {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION,
                         "eventName": "ObjectCreated:Put",
                         "s3": {"bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                                "object": {"key": key.replace(" ", "+"), "size": size}}}]}


def agent_env(prod: Production) -> dict[str, str]:
    """What the boot script gives the agent: ClearML credentials read from SSM at boot (never in
    user data), AWS from the instance role (here: moto), the worker image's settings."""
    ssm = prod.moto.client("ssm")
    creds = {name: ssm.get_parameter(Name=f"{SSM_PREFIX}/{name}", WithDecryption=True)["Parameter"]["Value"]
             for name in ("CLEARML_API_HOST", "CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY")}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SCANTIDE_", "CLEARML_", "AWS_"))}
    return {**base, **AWS_TEST_ENV, **creds, "CLEARML_CONFIG_FILE": str(prod.tmp_path / "no-clearml.conf"),
            "SCANTIDE_BACKEND": "clearml", "SCANTIDE_S3_ENDPOINT_URL": prod.moto.url,
            "SCANTIDE_STATE_DIR": str(prod.tmp_path / "worker"), "SCANTIDE_CONFIG": str(prod.tmp_path / "absent.toml")}


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def test_s3_upload_is_analysed_on_an_ec2_worker_and_reported(prod: Production) -> None:
    video = prod.tmp_path / "scan.mp4"
    write_scan_video(video, frames=48, fps=24, size=(160, 120), blur=None, exposure=None)
    key = "uploads/clinic 7/scan-0042.mp4"
    prod.moto.client("s3").upload_file(str(video), BUCKET, key)
    monitor = prod.start("monitor", "monitor")
    try:
        # S3 → Lambda → a task enqueued in ClearML
        assert lam.handler(s3_event(BUCKET, key, video.stat().st_size)) == {
            "submitted": 1, "existing": 0, "rejected": 0, "ignored": 0}
        backend = prod.backend()
        (task,) = [t for t in backend.list_tasks() if t.algorithm == "video_summary"]
        assert task.state is JobState.queued and task.params["scan_uri"] == f"s3://{BUCKET}/{key}"
        assert backend.queue_stats(QUEUE).pending == 1

        # one autoscaler tick launches an instance for the pool
        built = build(prod.settings, backend)
        assert any(isinstance(a, Launch) for a in built.autoscaler.tick())
        (instance,) = wait_for(prod.instances, 30, what="the launched instance")
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags[TAG_POOL] == POOL and tags[TAG_MANAGED] == "true"
        user_data = base64.b64decode(prod.moto.client("ec2").describe_instance_attribute(
            InstanceId=instance["InstanceId"], Attribute="userData")["UserData"]["Value"]).decode()
        assert f"QUEUE={QUEUE}" in user_data and f"SSM_PREFIX={SSM_PREFIX}" in user_data
        assert prod.clearml.app.secret_key not in user_data

        # the instance's agent takes the task and runs the entry point
        agent = subprocess.run([sys.executable, "-m", "tests.fakes.clearml_agent", "--queue", QUEUE,
                                "--worker-id", instance["InstanceId"]], cwd=REPO, env=agent_env(prod),
                               capture_output=True, text=True, timeout=180, check=False)
        assert agent.returncode == 0, agent.stderr[-3000:]
        done = backend.get_task(task.task_id)
        assert done.state is JobState.completed, (done.error, agent.stderr[-3000:])
        assert done.worker_id == instance["InstanceId"] and done.progress == 1.0
        prefix = f"results/video_summary/{task.scan_id}/"
        keys = {o["Key"] for o in prod.moto.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
        assert {prefix + "summary.json", prefix + "contact_sheet.jpg"} <= keys

        # the monitor posts a signed scan.completed with presigned links
        completed = wait_for(lambda: [r for r in prod.receiver.events_for(task.scan_id) if r.type == "scan.completed"],
                             60, what="scan.completed at the receiver")[0]
        verify_signature(SECRET, completed.headers, completed.raw)
        data = completed.body["data"]
        assert data["task_id"] == task.task_id and data["state"] == "completed"
        assert data["metadata"] == task.params["metadata"]
        link = data["outputs"]["summary"]
        assert link.startswith(prod.moto.url) and "Signature=" in link
        summary = httpx.get(link, timeout=10).raise_for_status().json()
        assert summary["frame_count"] == 48
        backend.close()
    finally:
        stop(monitor)


def test_clearml_outage_answers_503_and_the_daemons_recover(prod: Production) -> None:
    backend = prod.backend()
    api = ApiServer(prod.settings, backend)
    api.start()
    monitor = prod.start("monitor", "monitor")
    autoscaler = prod.start("autoscaler", "autoscaler")
    client = api.client()
    try:
        # a scan before the outage: the autoscaler launches for it and its agent starts running it
        first = client.post("/v1/scans", json={"scan_id": "before", "scan_uri": f"s3://{BUCKET}/uploads/a.mp4"})
        assert first.status_code == 202, first.text
        (instance,) = wait_for(prod.instances, 30, what="a launch for the first scan")
        worker = instance["InstanceId"]
        backend.register_worker(worker, QUEUE)
        running = backend.claim(QUEUE, worker, lease_s=3600)
        assert running is not None and running.scan_id == "before"

        prod.clearml.stop()  # ClearML goes away mid-run
        down = client.post("/v1/scans", json={"scan_id": "during", "scan_uri": f"s3://{BUCKET}/uploads/b.mp4"})
        assert down.status_code == 503
        error = down.json()["error"]
        assert error["code"] == "backend_unavailable" and "ClearML" in error["message"]
        assert client.get("/v1/scans/before").status_code == 503
        wait_for(lambda: "monitor_backend_unavailable" in prod.log("monitor").read_text(), 30,
                 what="the monitor to notice the outage")
        wait_for(lambda: "autoscaler_tick_failed" in prod.log("autoscaler").read_text(), 30,
                 what="the autoscaler to notice the outage")
        assert monitor.poll() is None and autoscaler.poll() is None  # backing off, not crashed

        prod.clearml.start()  # back, same port, same state
        backend.finish(running.task_id, worker, result={"output_uri": f"s3://{BUCKET}/results/before",
                                                        "outputs": {"summary": "summary.json", "keyframes": []}})
        backend.unregister_worker(worker)
        prod.moto.client("ec2").terminate_instances(InstanceIds=[worker])  # the agent exited: the box shuts down
        after = client.post("/v1/scans", json={"scan_id": "after", "scan_uri": f"s3://{BUCKET}/uploads/c.mp4"})
        assert after.status_code == 202, after.text

        wait_for(lambda: [r for r in prod.receiver.events_for("before") if r.type == "scan.completed"], 60,
                 what="the monitor to deliver the scan finished during the outage")
        (relaunched,) = wait_for(prod.instances, 60, what="the autoscaler to launch for the scan after the outage")
        assert relaunched["InstanceId"] != worker
        assert monitor.poll() is None and autoscaler.poll() is None
    finally:
        client.close()
        for proc in (monitor, autoscaler):
            stop(proc)
        api.stop()
        backend.close()


def test_a_command_algorithm_runs_on_an_agent_from_its_registered_bundle(prod: Production) -> None:
    """frame_stats (a script plus its descriptor) registered in ClearML: its bundle in S3, one template
    task for the version with the descriptor in its configuration, tasks on the CPU queue; a stock
    agent's run fetches the bundle, checks it against the registry, runs the command and stores the
    outputs beside the result."""
    video = prod.tmp_path / "scan.mp4"
    write_scan_video(video, frames=48, fps=24, size=(160, 120), blur=None, exposure=None)
    prod.moto.client("s3").upload_file(str(video), BUCKET, "uploads/fs-1.mp4")
    backend = prod.backend()
    version = backend.latest_algorithm("frame_stats")
    assert version is not None and version.queue == CPU_QUEUE
    assert version.uri == f"s3://{BUCKET}/results/algorithms/frame_stats/1/{version.sha256}.tar.gz"
    (template,) = [t for t in prod.clearml.app.tasks.values() if "alg:frame_stats" in t["tags"]]
    assert "version:1" in template["tags"] and template["status"] == "created"
    assert json.loads(template["configuration"]["descriptor"]["value"])["command"][1] == "{here}/frame_stats.py"
    assert template["script"]["entry_point"] == "-m algorithms.entry"

    task = submit_scan(backend, prod.settings, ScanRequest(scan_id="fs-1", scan_uri=f"s3://{BUCKET}/uploads/fs-1.mp4",
                                                           algorithm="frame_stats", params={"min_brightness": 50})).task
    assert task.queue == CPU_QUEUE and task.params["bundle_sha256"] == version.sha256
    agent = subprocess.run([sys.executable, "-m", "tests.fakes.clearml_agent", "--queue", CPU_QUEUE,
                            "--worker-id", "i-cpu-1"], cwd=REPO, env=agent_env(prod), capture_output=True, text=True,
                           timeout=180, check=False)
    assert agent.returncode == 0, agent.stderr[-3000:]
    done = backend.get_task(task.task_id)
    assert done.state is JobState.completed, (done.error, agent.stderr[-3000:])
    result = done.result or {}
    assert (result["frame_count"], result["width"], result["min_brightness"]) == (48, 160, 50.0)
    prefix = "results/frame_stats/fs-1/"
    keys = {o["Key"] for o in prod.moto.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
    assert keys == {prefix + "result.json", prefix + "brightness.csv"}
    assert sorted(result["outputs"]["files"]) == ["brightness.csv", "result.json"]
    backend.close()


def test_a_container_algorithm_template_names_its_image_and_queue(prod: Production) -> None:
    folder = prod.tmp_path / "in_a_box"
    folder.mkdir()
    (folder / "scantide-algorithm.yaml").write_text(
        'name: in_a_box\nversion: "2"\nimage: registry.example/segmenter:2.1\n'
        'command: ["segment", "--in", "{inputs}", "--out", "{outputs}"]\nresources: {gpu: 1, timeout_s: 600}\n')
    backend = prod.backend()
    version, created = register_folder(backend, prod.settings, folder, by="e2e")
    assert created and version.queue == QUEUE  # gpu > 0: the gpu queue, mapped to the pool's
    (template,) = [t for t in prod.clearml.app.tasks.values() if "alg:in_a_box" in t["tags"]]
    assert template["container"] == {"image": "registry.example/segmenter:2.1"}
    props = {item["name"]: item["value"] for item in template["hyperparams"]["properties"].values()}
    assert (props["queue"], props["max_runtime_s"], props["algorithm_version"]) == (QUEUE, "600.0", "2")
    assert backend.get_template("in_a_box").queue == QUEUE
    backend.close()
