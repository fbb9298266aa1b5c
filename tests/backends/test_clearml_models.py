"""ClearML mode end to end: a registered file goes to S3 (the moto server) under the output root,
ClearML's model registry holds the version with its tags, and enqueue pins the promoted one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import boto3
import pytest

from service.domain import SubmitItem
from service.enqueue import submit_items
from service.models import register_model
from service.settings import Settings, load_settings
from tests.autoscaler.moto_server import AWS_TEST_ENV, MotoServer
from tests.backends.conftest import ALGO, Store, register_algorithm

BUCKET = "scantide-models-test"


@pytest.fixture
def s3_settings(moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    moto.reset()
    moto.client("s3").create_bucket(Bucket=BUCKET)
    return load_settings(state_dir=tmp_path / "state", backend="clearml", output_root=f"s3://{BUCKET}/outputs",
                         s3_endpoint_url=moto.url)


def test_register_uploads_to_s3_tags_the_promoted_version_and_enqueue_pins_it(
        clearml_store: Store, s3_settings: Settings, tmp_path: Path) -> None:
    b = clearml_store.backend
    content = b"pretend torch weights" * 500
    source = tmp_path / "net.pt"
    source.write_bytes(content)
    model, created = register_model(b, s3_settings, ALGO, "1", source, notes="first", by="ana")
    assert created and model.uri == f"s3://{BUCKET}/outputs/models/{ALGO}/1/net.pt"
    s3 = boto3.client("s3", endpoint_url=s3_settings.s3_endpoint_url)
    assert s3.get_object(Bucket=BUCKET, Key=f"outputs/models/{ALGO}/1/net.pt")["Body"].read() == content
    assert model.sha256 == hashlib.sha256(content).hexdigest()

    (doc,) = clearml_store.server.app.models.values()
    assert (doc["name"], doc["uri"], doc["comment"], doc["ready"]) == (f"{ALGO}/1", model.uri, "first", True)
    assert {"scantide-model", f"alg:{ALGO}", "version:1"} == set(doc["tags"])

    b.promote_model(ALGO, "1", by="ana")
    assert "promoted" in doc["tags"]
    register_algorithm(b, s3_settings)
    item = SubmitItem(ALGO, "scan-1", {"scan_id": "scan-1", "scan_uri": f"s3://{BUCKET}/scan-1.mp4"}, "/out/scan-1")
    (outcome,) = submit_items(b, [item])
    assert (outcome.task.params["model_version"], outcome.task.params["model_uri"]) == ("1", model.uri)
    assert clearml_store.client().get_task(outcome.task.task_id).params["model_uri"] == model.uri
