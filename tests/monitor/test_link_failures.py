"""An output that cannot be linked must not stop the monitor: the monitor started without AWS
credentials, its real S3 linker refusing every s3:// output, still sends each scan's event (the
reason in place of the links) and raises ``monitor.degraded`` once, not once per event."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from monitor.daemon import alert_config, delivery_policy, outbox_for
from monitor.events import linker_for
from monitor.outbox import Outbox
from monitor.watch import Watcher
from monitor.webhook import Deliverer
from service.backends.base import TaskBackend
from service.settings import Settings
from tests.autoscaler.moto_server import AWS_TEST_ENV
from tests.conftest import free_port
from tests.monitor.conftest import WORKER, complete, entries, result_for, start, with_settings
from tests.monitor.receiver import Receiver

BUCKET = "scans-out"
FILES = ["summary.json", "sheet.jpg", "k0.jpg", "k1.jpg"]  # what result_for() names


@pytest.fixture
def no_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """boto3's chain finds nothing: no variables, no files, no instance or container metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED",
                 "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.setenv(name, AWS_TEST_ENV[name])
    yield monkeypatch


def s3_linked(settings: Settings) -> Settings:
    """Settings whose S3 endpoint no other test used, so the linker builds its client under this
    test's environment. Presigning is local: nothing is ever sent to the endpoint."""
    return with_settings(settings, s3_endpoint_url=f"http://127.0.0.1:{free_port()}")


def complete_on_s3(backend: TaskBackend, scan_id: str) -> str:
    """A completed scan whose outputs are in S3; returns their base URI."""
    base = f"s3://{BUCKET}/outputs/video_summary/{scan_id}"
    task = start(backend, scan_id)
    backend.finish(task.task_id, WORKER, result={**result_for(scan_id), "output_uri": base})
    return base


def data(outbox: Outbox, type_: str) -> list[dict[str, Any]]:
    return [json.loads(e.body)["data"] for e in entries(outbox) if e.type == type_]


def test_no_credentials_sends_the_reason_and_alerts_once(backend: TaskBackend, monitor_settings: Settings,
                                                         receiver: Receiver,
                                                         no_aws_credentials: pytest.MonkeyPatch) -> None:
    s = s3_linked(monitor_settings)
    outbox = outbox_for(s)
    watcher = Watcher(backend, outbox, alert_config(s), link=linker_for(s), page_size=2)
    bases = {f"scan-s3-{i}": complete_on_s3(backend, f"scan-s3-{i}") for i in range(4)}
    complete(backend, "scan-local")  # local outputs link as ever, and say nothing of S3 coming back
    bases["scan-s3-4"] = complete_on_s3(backend, "scan-s3-4")

    assert watcher.poll_changes() == 6 + 1  # every scan's event, and one alert over many pages

    (alert,) = data(outbox, "monitor.degraded")
    assert (alert["what"], alert["status"], alert["error"]["code"]) == ("output_links", "degraded", "storage_error")
    assert alert["error"]["message"].startswith("no AWS credentials to reach s3://")
    completed = {d["scan_id"]: d for d in data(outbox, "scan.completed")}
    assert set(completed) == {*bases, "scan-local"}
    for scan_id, base in bases.items():
        outputs = completed[scan_id]["outputs"]
        assert outputs["uri"] == base and outputs["figures"] == result_for(scan_id)["summary"]
        assert (outputs["summary"], outputs["contact_sheet"], outputs["keyframes"]) == (None, None, [None, None])
        assert [(e["file"], e["code"]) for e in outputs["link_errors"]] == [(f, "storage_error") for f in FILES]
        assert all(e["message"].startswith(f"no AWS credentials to reach {base}/{e['file']}")
                   for e in outputs["link_errors"])
    local = completed["scan-local"]["outputs"]
    assert local["summary"] == "file:///srv/out/scan-local/summary.json" and "link_errors" not in local

    # Still failing, and after a restart too: no second alert.
    complete_on_s3(backend, "scan-s3-5")
    assert watcher.poll_changes() == 1
    restarted = Watcher(backend, outbox_for(s), alert_config(s), link=linker_for(s))
    complete_on_s3(backend, "scan-s3-6")
    assert restarted.poll_changes() == 1
    assert len(data(outbox, "monitor.degraded")) == 1

    # Credentials back (a monitor restarted with them): links again, and the alert says so once.
    for name, value in AWS_TEST_ENV.items():
        no_aws_credentials.setenv(name, value)
    fixed = s3_linked(s)
    healed = Watcher(backend, outbox_for(fixed), alert_config(fixed), link=linker_for(fixed))
    complete_on_s3(backend, "scan-s3-7")
    complete_on_s3(backend, "scan-s3-8")
    assert healed.poll_changes() == 2 + 1
    assert [(d["status"], d["error"]) for d in data(outbox, "monitor.degraded")][1:] == [("recovered", None)]
    linked = {d["scan_id"]: d["outputs"] for d in data(outbox, "scan.completed")}["scan-s3-7"]
    assert "link_errors" not in linked and "X-Amz-Signature=" in linked["summary"]

    policy = delivery_policy(s)
    assert policy is not None
    Deliverer(outbox, policy).drain(timeout_s=30)
    assert outbox.counts() == {"pending": 0, "delivered": 12, "dead": 0}
    alerts = [r.body["data"]["status"] for r in receiver.accepted() if r.type == "monitor.degraded"]
    assert alerts == ["degraded", "recovered"]
    (sent,) = receiver.events_for("scan-s3-0")
    assert sent.body["data"]["outputs"]["link_errors"][0]["file"] == "summary.json"
