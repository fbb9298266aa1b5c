"""The Lambda handler against a real embedded backend (SQLite in a tmp dir), fed the sample events
under tests/events/. Settings come from SCANTIDE_* variables, as they do in Lambda."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambda_enqueue import handler as lam
from service import errors
from service.domain import SCAN_ID_PATTERN, TaskInfo
from tests.conftest import free_port

EVENTS = Path(__file__).resolve().parents[1] / "events"
REPO = Path(__file__).resolve().parents[2]
OUTPUT_ROOT = "s3://scantide-outputs/results"


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture
def rt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[lam.Runtime]:
    """A fresh container: SCANTIDE_* env over a tmp state dir, the runtime cache cleared."""
    for name in list(os.environ):
        if name.startswith("SCANTIDE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SCANTIDE_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("SCANTIDE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SCANTIDE_OUTPUT_ROOT", OUTPUT_ROOT)
    lam.runtime.cache_clear()
    runtime = lam.runtime()
    yield runtime
    runtime.backend.close()
    lam.runtime.cache_clear()


@pytest.fixture
def rt_cp_down(rt: lam.Runtime, monkeypatch: pytest.MonkeyPatch) -> Iterator[lam.Runtime]:
    """The container with ``SCANTIDE_CONTROL_PLANE_URL`` naming a loopback port nothing listens on: a
    request naming a pipeline fails transiently (connection refused, ``BackendUnavailable``)."""
    monkeypatch.setenv("SCANTIDE_CONTROL_PLANE_URL", f"http://127.0.0.1:{free_port()}")
    lam.runtime.cache_clear()
    down = lam.runtime()
    yield down
    down.backend.close()


def sqs_record(message_id: str, body: Any, arn: str = "arn:aws:sqs:us-east-1:123456789012:scantide-uploads") -> dict:
    return {"eventSource": "aws:sqs", "eventSourceARN": arn, "messageId": message_id,
            "body": body if isinstance(body, str) else json.dumps(body)}


def rejections(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(event + " ")]


def only_task(rt: lam.Runtime, scan_id: str) -> TaskInfo:
    tasks = rt.backend.tasks_for_scan(scan_id)
    assert len(tasks) == 1, f"{scan_id}: {tasks}"
    return tasks[0]


def all_tasks(rt: lam.Runtime) -> list[TaskInfo]:
    return rt.backend.list_tasks(limit=1000)


# -- S3 -------------------------------------------------------------------------------------------
def test_s3_put_enqueues_every_object(rt: lam.Runtime) -> None:
    out = lam.handler(load_event("s3_put.json"), None)

    assert out == {"submitted": 2, "existing": 0, "rejected": 0, "ignored": 0}
    plain = only_task(rt, "scans:clinic-7:scan-0001")
    assert plain.params["scan_uri"] == "s3://scantide-scans/scans/clinic-7/scan-0001.mp4"
    assert plain.output_uri == f"{OUTPUT_ROOT}/video_summary/scans:clinic-7:scan-0001"
    assert plain.params["metadata"]["etag"] == "0123456789abcdef0123456789abcdef"

    # "scans/clinic+7/patient+42+%28upper+arch%29.mp4" is the URL-encoded "…/clinic 7/patient 42 (upper arch).mp4"
    key = "scans/clinic 7/patient 42 (upper arch).mp4"
    spaced = only_task(rt, lam.scan_id_for_key(key))
    assert spaced.params["scan_uri"] == f"s3://scantide-scans/{key}"
    assert spaced.params["metadata"]["key"] == key
    assert re.fullmatch(r"scans:clinic-7:patient-42-upper-arch-[0-9a-f]{12}", spaced.scan_id)


def test_s3_retry_creates_no_second_task(rt: lam.Runtime) -> None:
    event = load_event("s3_put.json")
    lam.handler(event, None)
    before = {t.task_id for t in all_tasks(rt)}

    again = lam.handler(event, None)  # Lambda's retry of the same event

    assert again == {"submitted": 0, "existing": 2, "rejected": 0, "ignored": 0}
    assert {t.task_id for t in all_tasks(rt)} == before


def test_s3_skips_what_is_not_an_upload(rt: lam.Runtime) -> None:
    event = load_event("s3_put.json")
    good, _ = event["Records"]
    removed = {**good, "eventName": "ObjectRemoved:Delete"}
    folder = {**good, "s3": {**good["s3"], "object": {**good["s3"]["object"], "key": "scans/new-folder/"}}}
    hashed = {**good, "s3": {**good["s3"], "object": {**good["s3"]["object"], "key": "scans/a%23b.mp4"}}}

    out = lam.handler({"Records": [removed, folder, hashed, good]}, None)

    assert out == {"submitted": 1, "existing": 0, "rejected": 1, "ignored": 2}
    assert len(all_tasks(rt)) == 1
    assert lam.handler({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "scantide-scans"}, None)[
        "ignored"] == 1


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("scans/abc123.mp4", "scans:abc123"),
        ("abc123.mp4", "abc123"),
        ("a/b.c/scan.v2.mov", "a:b.c:scan.v2"),
        ("no-extension", "no-extension"),
    ],
)
def test_scan_id_for_clean_keys(key: str, expected: str) -> None:
    assert lam.scan_id_for_key(key) == expected


def test_scan_id_for_awkward_keys() -> None:
    keys = ["a b.mp4", "a-b.mp4", "a:b.mp4", "a/b.mp4", "ünïcode/scan.mp4", "_leading.mp4", "x" * 300 + ".mp4",
            "x" * 300 + "y.mp4", "!!!.mp4", ".mp4", "a//b.mp4"]
    ids = [lam.scan_id_for_key(k) for k in keys]
    assert all(re.fullmatch(SCAN_ID_PATTERN, i) for i in ids), ids
    assert len(set(ids)) == len(keys), ids  # distinct keys, distinct scans
    assert ids == [lam.scan_id_for_key(k) for k in keys]  # a pure function: retries map to the same scan


# -- API Gateway --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["apigw_v1.json", "apigw_v2.json"])
def test_api_gateway_enqueues(rt: lam.Runtime, name: str) -> None:
    event = load_event(name)

    first = lam.handler(event, None)
    again = lam.handler(event, None)

    assert first["statusCode"] == 202
    assert first["headers"]["Content-Type"] == "application/json"
    body = json.loads(first["body"])
    task = only_task(rt, body["scan_id"])
    assert body["task_id"] == task.task_id and body["created"] is True and body["state"] == "queued"
    raw = event["body"] if not event["isBase64Encoded"] else base64.b64decode(event["body"]).decode()
    assert task.params["scan_uri"] == json.loads(raw)["scan_uri"]
    assert again["statusCode"] == 200
    assert json.loads(again["body"])["task_id"] == task.task_id
    assert len(all_tasks(rt)) == 1


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"scan_id": "bad id!", "scan_uri": "s3://scantide-scans/x.mp4"}, 422, "invalid_request"),
        ({"scan_id": "ok", "scan_uri": "s3://scantide-scans/x.mp4", "extra": 1}, 422, "invalid_request"),
        ({"scan_id": "ok", "scan_uri": "ftp://example.com/x.mp4"}, 422, "invalid_scan_uri"),
        ({"scan_id": "ok", "scan_uri": "https://169.254.169.254/latest/meta-data"}, 422, "forbidden_scan_uri"),
        ("{not json", 400, "malformed_json"),
        (None, 400, "malformed_json"),
        ({"scan_id": "ok", "scan_uri": "s3://b/" + "x" * 70_000}, 413, "payload_too_large"),
    ],
)
def test_api_gateway_bad_body(rt: lam.Runtime, body: Any, status: int, code: str) -> None:
    event = load_event("apigw_v1.json")
    event["body"] = body if body is None or isinstance(body, str) else json.dumps(body)

    out = lam.handler(event, None)

    assert out["statusCode"] == status
    error = json.loads(out["body"])
    assert set(error) == {"error"} and error["error"]["code"] == code and error["error"]["message"]
    assert all_tasks(rt) == []


def test_api_gateway_refuses_other_methods(rt: lam.Runtime) -> None:
    event = load_event("apigw_v2.json")
    event["requestContext"]["http"]["method"] = "GET"

    out = lam.handler(event, None)

    assert out["statusCode"] == 405
    assert json.loads(out["body"])["error"]["code"] == "method_not_allowed"


# -- SQS ------------------------------------------------------------------------------------------
def test_sqs_bad_input_is_consumed_once(rt: lam.Runtime, caplog: pytest.LogCaptureFixture) -> None:
    """A message a redelivery would not fix is not returned (it would only end in the DLQ): it is
    consumed, with the reason logged."""
    event = load_event("sqs_batch.json")
    good, bad = event["Records"]

    with caplog.at_level(logging.INFO, logger=lam.__name__):
        out = lam.handler(event, None)

    assert out == {"batchItemFailures": []}
    [line] = rejections(caplog, "sqs_record_rejected")
    assert f"message_id={bad['messageId']} code=invalid_request message=" in line and "scan_id" in line
    assert "sqs_batch_done messages=2 rejected=1 failed=0" in caplog.messages
    task = only_task(rt, "scans:sqs:scan-0002")
    assert task.params["scan_uri"] == "s3://scantide-scans/scans/sqs/scan-0002.mp4"
    # The redelivered good message is a no-op.
    assert lam.handler({"Records": [good]}, None) == {"batchItemFailures": []}
    assert len(all_tasks(rt)) == 1


def test_sqs_scan_request_and_sns_envelope(rt: lam.Runtime, caplog: pytest.LogCaptureFixture) -> None:
    good = load_event("sqs_batch.json")["Records"][0]
    request = {**good, "messageId": "m-request",
               "body": json.dumps({"scan_id": "from-sqs", "scan_uri": "s3://scantide-scans/from-sqs.mp4"})}
    sns = {**good, "messageId": "m-sns", "body": json.dumps({"Type": "Notification", "Message": good["body"]})}
    broken = {**good, "messageId": "m-broken", "body": "{"}

    with caplog.at_level(logging.WARNING, logger=lam.__name__):
        out = lam.handler({"Records": [request, sns, broken]}, None)

    assert out == {"batchItemFailures": []}
    assert [line.split(" message=")[0] for line in rejections(caplog, "sqs_record_rejected")] == \
        ["sqs_record_rejected message_id=m-broken code=malformed_json"]
    assert only_task(rt, "from-sqs").params["scan_uri"] == "s3://scantide-scans/from-sqs.mp4"
    only_task(rt, "scans:sqs:scan-0002")


@pytest.mark.parametrize("delivery", ["s3", "sqs", "sns-sqs"])
def test_bad_input_is_rejected_alike_from_s3_and_sqs(rt: lam.Runtime, caplog: pytest.LogCaptureFixture,
                                                     delivery: str) -> None:
    """The same notification, one bad record beside a good one, whichever way it arrives: the good
    record is submitted, the bad one consumed once with its reason logged, nothing retried."""
    event = load_event("s3_put.json")
    good = event["Records"][0]
    hashed = {**good, "s3": {**good["s3"], "object": {**good["s3"]["object"], "key": "scans/a%23b.mp4"}}}
    notification = {"Records": [hashed, good]}
    body = json.dumps(notification)
    deliveries = {
        "s3": notification,
        "sqs": {"Records": [sqs_record("m-1", body)]},
        "sns-sqs": {"Records": [sqs_record("m-1", {"Type": "Notification", "Message": body})]},
    }

    with caplog.at_level(logging.WARNING, logger=lam.__name__):
        out = lam.handler(deliveries[delivery], None)

    if delivery == "s3":
        assert out == {"submitted": 1, "existing": 0, "rejected": 1, "ignored": 0}
        [line] = rejections(caplog, "s3_record_rejected")
        assert line.startswith("s3_record_rejected code=invalid_scan_uri message=")
    else:
        assert out == {"batchItemFailures": []}
        [line] = rejections(caplog, "sqs_record_rejected")
        assert line.startswith("sqs_record_rejected message_id=m-1 code=invalid_scan_uri message=")
    assert "'#'" in line
    only_task(rt, "scans:clinic-7:scan-0001")
    assert len(all_tasks(rt)) == 1


def test_sqs_transient_failure_is_redelivered(rt_cp_down: lam.Runtime, caplog: pytest.LogCaptureFixture) -> None:
    """Only a transient failure (here the control plane unreachable) goes back to the queue."""
    bad = sqs_record("m-bad", {"scan_id": "bad id!", "scan_uri": "s3://scantide-scans/x.mp4"})
    down = sqs_record("m-down", {"scan_id": "run-1", "scan_uri": "s3://scantide-scans/r.mp4", "pipeline": "triage"})
    good = sqs_record("m-good", {"scan_id": "plain-1", "scan_uri": "s3://scantide-scans/p.mp4"})

    with caplog.at_level(logging.WARNING, logger=lam.__name__):
        out = lam.handler({"Records": [bad, down, good]}, None)

    assert out == {"batchItemFailures": [{"itemIdentifier": "m-down"}]}
    assert any(m.startswith("sqs_message_failed message_id=m-down code=backend_unavailable") for m in caplog.messages)
    assert [line.split(" code=")[0] for line in rejections(caplog, "sqs_record_rejected")] == \
        ["sqs_record_rejected message_id=m-bad"]
    assert [t.scan_id for t in all_tasks(rt_cp_down)] == ["plain-1"]


def test_sqs_fifo_fails_everything_after_the_first_transient_failure(rt_cp_down: lam.Runtime) -> None:
    """Bad input is consumed and keeps no message back; after a transient failure nothing is done,
    so a FIFO queue redelivers the rest in order."""
    arn = "arn:aws:sqs:us-east-1:123456789012:scantide-uploads.fifo"
    bad = sqs_record("m-bad", "{", arn)
    before = sqs_record("m-before", {"scan_id": "fifo-0", "scan_uri": "s3://scantide-scans/0.mp4"}, arn)
    down = sqs_record("m-down", {"scan_id": "run-1", "scan_uri": "s3://scantide-scans/r.mp4", "pipeline": "triage"},
                      arn)
    after = sqs_record("m-after", {"scan_id": "fifo-1", "scan_uri": "s3://scantide-scans/1.mp4"}, arn)

    out = lam.handler({"Records": [bad, before, down, after]}, None)

    assert out == {"batchItemFailures": [{"itemIdentifier": "m-down"}, {"itemIdentifier": "m-after"}]}
    assert [t.scan_id for t in all_tasks(rt_cp_down)] == ["fifo-0"]


@pytest.mark.parametrize(
    ("error", "bad"),
    [
        (errors.InvalidRequest("x"), True),
        (errors.MalformedJson("x"), True),
        (errors.PayloadTooLarge("x"), True),
        (errors.Conflict("a scan_id reused for another scan"), True),
        (errors.NotFound("x"), True),
        (errors.PreviousScanNotCompleted("x"), False),  # passes once the earlier scan completes
        (errors.RateLimited("x"), False),
        (errors.BackendUnavailable("x"), False),
        (errors.ConfigError("x"), False),  # ours to fix: retried, and the errors alarm
    ],
)
def test_only_lasting_refusals_are_bad_input(error: errors.ScantideError, bad: bool) -> None:
    assert lam.is_bad_input(error) is bad


# -- cold start -----------------------------------------------------------------------------------
def test_import_is_light_and_pure() -> None:
    code = ("import lambda_enqueue.handler, sys; "
            "heavy = sorted({'cv2', 'torch', 'numpy', 'boto3', 'fastapi'} & set(sys.modules)); "
            "assert not heavy, heavy; "
            "assert lambda_enqueue.handler.runtime.cache_info().currsize == 0")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANTIDE_")}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env, timeout=60)


# -- pipelines ------------------------------------------------------------------------------------
def test_pipeline_for_key_takes_the_longest_prefix() -> None:
    prefixes = {"scans/": "triage", "scans/research/": "deep", "other/": "triage"}
    assert lam.pipeline_for_key("scans/research/a.mp4", prefixes) == "deep"
    assert lam.pipeline_for_key("scans/clinic/a.mp4", prefixes) == "triage"
    assert lam.pipeline_for_key("uploads/a.mp4", prefixes) is None


def test_s3_keys_under_a_pipeline_prefix_start_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Routed keys start one run each (a redelivery none), through the control plane's API; the rest
    are tasks as before."""
    from service.algorithms import register_folder
    from service.backends import open_backend
    from service.errors import BackendUnavailable
    from service.pipelines.store import PipelineStore
    from service.settings import load_settings
    from tests.conftest import TOKEN, ApiServer, free_port

    for name in list(os.environ):
        if name.startswith("SCANTIDE_"):
            monkeypatch.delenv(name)
    settings = load_settings(state_dir=tmp_path / "state", output_root=OUTPUT_ROOT, api_port=free_port(),
                             api_tokens={TOKEN: ["enqueue", "read", "register"]})
    backend = open_backend(settings)
    for name in ("frame_stats", "scan_report"):
        register_folder(backend, settings, REPO / "examples" / "algorithms" / name, by="test")
    server = ApiServer(settings, backend)
    server.start()
    try:
        with server.client() as client:
            text = (REPO / "examples" / "pipelines" / "triage" / "scantide-pipeline.yaml").read_text()
            assert client.post("/v1/pipelines", content=text,
                               headers={"Content-Type": "application/yaml"}).status_code == 201
        monkeypatch.setenv("SCANTIDE_CONFIG", str(tmp_path / "absent.toml"))
        monkeypatch.setenv("SCANTIDE_STATE_DIR", str(tmp_path / "lambda-state"))
        monkeypatch.setenv("SCANTIDE_OUTPUT_ROOT", OUTPUT_ROOT)
        monkeypatch.setenv("SCANTIDE_PIPELINE_PREFIXES", json.dumps({"scans/clinic-7/": "triage"}))
        monkeypatch.setenv("SCANTIDE_CONTROL_PLANE_URL", server.url)
        monkeypatch.setenv("SCANTIDE_CONTROL_PLANE_TOKEN", TOKEN)
        lam.runtime.cache_clear()
        event = load_event("s3_put.json")
        assert lam.handler(event, None) == {"submitted": 2, "existing": 0, "rejected": 0, "ignored": 0}
        assert lam.handler(event, None) == {"submitted": 0, "existing": 2, "rejected": 0, "ignored": 0}
        runs = PipelineStore(settings.pipelines_db).list_runs()
        assert [(r.pipeline, r.scan_id, r.scan_uri) for r in runs] == \
            [("triage", "scans:clinic-7:scan-0001", "s3://scantide-scans/scans/clinic-7/scan-0001.mp4")]
        other = lam.runtime().backend.list_tasks(limit=10)  # the key outside the prefix: a task, as before
        assert [t.scan_id for t in other] == [lam.scan_id_for_key("scans/clinic 7/patient 42 (upper arch).mp4")]

        gateway = {"httpMethod": "POST", "requestContext": {}, "body": json.dumps(
            {"scan_id": "gw-1", "scan_uri": "s3://scantide-scans/gw.mp4", "pipeline": "triage"})}
        answer = lam.handler(gateway, None)
        assert answer["statusCode"] == 202 and json.loads(answer["body"])["pipeline"] == "triage"
        sqs = {"Records": [{"eventSource": "aws:sqs", "messageId": "m1", "body": json.dumps(
            {"scan_id": "sqs-1", "scan_uri": "s3://scantide-scans/q.mp4", "pipeline": "triage"})}]}
        assert lam.handler(sqs, None) == {"batchItemFailures": []}
        assert {r.scan_id for r in PipelineStore(settings.pipelines_db).list_runs()} == \
            {"scans:clinic-7:scan-0001", "gw-1", "sqs-1"}

        monkeypatch.setenv("SCANTIDE_CONTROL_PLANE_TOKEN", "wrong")
        lam.runtime().backend.close()
        lam.runtime.cache_clear()
        routed = load_event("s3_put.json")
        routed["Records"] = routed["Records"][:1]
        routed["Records"][0]["s3"]["object"]["key"] = "scans/clinic-7/scan-0002.mp4"
        with pytest.raises(BackendUnavailable, match="401"):  # our configuration: retried, and the errors alarm
            lam.handler(routed, None)
    finally:
        lam.runtime().backend.close()
        lam.runtime.cache_clear()
        server.stop()
        backend.close()


def test_refused_input_is_reported_once_and_announced_as_scan_rejected(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the control plane is configured, each refused record reaches it once (a redelivery is
    not a second rejection) and the monitor sends it as scan.rejected."""
    from monitor.alerts import AlertConfig
    from monitor.outbox import Outbox
    from monitor.watch import Watcher
    from service.backends import open_backend
    from service.rejections import RejectionStore
    from service.settings import load_settings
    from tests.conftest import TOKEN, ApiServer

    for name in list(os.environ):
        if name.startswith("SCANTIDE_"):
            monkeypatch.delenv(name)
    settings = load_settings(state_dir=tmp_path / "control", output_root=OUTPUT_ROOT,
                             api_tokens={TOKEN: ["enqueue", "read"]})
    backend = open_backend(settings)
    server = ApiServer(settings, backend)
    server.start()
    try:
        monkeypatch.setenv("SCANTIDE_CONFIG", str(tmp_path / "absent.toml"))
        monkeypatch.setenv("SCANTIDE_STATE_DIR", str(tmp_path / "lambda-state"))
        monkeypatch.setenv("SCANTIDE_OUTPUT_ROOT", OUTPUT_ROOT)
        monkeypatch.setenv("SCANTIDE_CONTROL_PLANE_URL", server.url)
        monkeypatch.setenv("SCANTIDE_CONTROL_PLANE_TOKEN", TOKEN)
        lam.runtime.cache_clear()
        s3 = load_event("s3_put.json")
        s3["Records"] = s3["Records"][:1]
        s3["Records"][0]["s3"]["object"]["key"] = "scans/what%3F.mp4"  # "?" cuts an s3:// URI short: refused
        sqs = {"Records": [{"eventSource": "aws:sqs", "messageId": "m-bad", "body": json.dumps(
            {"scan_id": "bad id!", "scan_uri": "s3://b/k.mp4"})}]}
        for _ in range(2):  # the second time: a redelivery
            assert lam.handler(s3, None)["rejected"] == 1
            assert lam.handler(sqs, None) == {"batchItemFailures": []}
        kept, _ = RejectionStore(settings.rejections_db).since(0)
        assert sorted((r.source, r.ref, r.code) for r in kept) == [
            ("s3", "s3://scantide-scans/scans/what?.mp4@0123456789abcdef0123456789abcdef", "invalid_scan_uri"),
            ("sqs", "sqs:m-bad", "invalid_request")]
        outbox = Outbox(settings.state_dir / "monitor.db")
        watcher = Watcher(backend, outbox, AlertConfig(), rejections=RejectionStore(settings.rejections_db))
        assert watcher.poll_rejections() == 2 and watcher.poll_rejections() == 0
        bodies = [json.loads(e.body) for e in outbox.list() if e.type == "scan.rejected"]
        assert sorted(b["data"]["error"]["code"] for b in bodies) == ["invalid_request", "invalid_scan_uri"]
        by_source = {b["data"]["source"]: b["data"] for b in bodies}
        assert by_source["sqs"]["scan_id"] == "bad id!"
        assert by_source["s3"]["scan_uri"] == "s3://scantide-scans/scans/what?.mp4"
    finally:
        lam.runtime().backend.close()
        lam.runtime.cache_clear()
        server.stop()
        backend.close()
