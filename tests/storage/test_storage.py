"""Storage adapters against real parts: local files, and S3 on a moto server spoken to over HTTP
on 127.0.0.1 with dummy credentials. The task entry point runs the real algorithm on a scan in S3
and its outputs land in S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from monitor.events import linker_for
from service.errors import ForbiddenScanUri
from service.settings import Settings, load_settings
from service.storage import HttpsSource, LocalStorage, ObjectNotFound, ObjectTooLarge, Storage, storage_for
from service.storage.s3 import S3Storage
from tests.autoscaler.moto_server import AWS_TEST_ENV, MotoServer
from tests.conftest import TEST_BUCKET, builtin_bundle

REPO = Path(__file__).resolve().parents[2]
BUCKET = TEST_BUCKET


@pytest.fixture
def s3_settings(aws: MotoServer, tmp_path: Path) -> Settings:
    return load_settings(state_dir=tmp_path / "state", s3_endpoint_url=aws.url, presign_ttl_s=600)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Storage, str]:
    """Each adapter with a base URI to write under."""
    if request.param == "local":
        return LocalStorage(), (tmp_path / "store").as_uri()
    settings = request.getfixturevalue("s3_settings")
    return storage_for(f"s3://{BUCKET}/x", settings), f"s3://{BUCKET}/outputs"


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"summary.json": b'{"ok": true}', "keyframes/kf_00.jpg": b"\xff\xd8jpeg" * 100,
             "nested/deeper/a b.csv": b"a,b\n1,2\n"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_round_trip(store: tuple[Storage, str], tmp_path: Path) -> None:
    storage, base = store
    files = make_tree(tmp_path / "src")

    written = storage.put_dir(tmp_path / "src", base + "/scan-1/")

    assert written == [f"{base}/scan-1/{rel}" for rel in sorted(files)]
    for rel, data in files.items():
        uri = f"{base}/scan-1/{rel}"
        assert storage.exists(uri)
        dest = tmp_path / "back" / rel
        assert storage.fetch(uri, dest, max_bytes=1 << 20) == len(data)
        assert dest.read_bytes() == data
    assert not storage.exists(f"{base}/scan-1/absent.json")
    with pytest.raises(ObjectNotFound):
        storage.fetch(f"{base}/scan-1/absent.json", tmp_path / "absent", max_bytes=1 << 20)


def test_size_cap(store: tuple[Storage, str], tmp_path: Path) -> None:
    storage, base = store
    src = tmp_path / "big.mp4"
    src.write_bytes(b"v" * 5000)
    storage.put_file(src, f"{base}/big.mp4")
    dest = tmp_path / "dl" / "big.mp4"

    with pytest.raises(ObjectTooLarge) as err:
        storage.fetch(f"{base}/big.mp4", dest, max_bytes=4999)

    assert err.value.code == "scan_too_large"
    assert not dest.exists() and not any(dest.parent.glob("*"))  # no partial file left
    assert storage.fetch(f"{base}/big.mp4", dest, max_bytes=5000) == 5000


def test_s3_link_is_a_presigned_get(s3_settings: Settings, tmp_path: Path) -> None:
    storage = storage_for(f"s3://{BUCKET}/k", s3_settings)
    assert storage is storage_for(f"s3://{BUCKET}/other", s3_settings)  # one client per endpoint
    sheet = tmp_path / "contact_sheet.jpg"
    sheet.write_bytes(b"\xff\xd8\xff" + os.urandom(2048))
    uri = f"s3://{BUCKET}/outputs/video_summary/scans:abc/contact_sheet.jpg"
    storage.put_file(sheet, uri)

    url = storage.link(uri, 600)
    via_monitor = linker_for(s3_settings)(uri)

    for link in (url, via_monitor):
        assert link.startswith(f"{s3_settings.s3_endpoint_url}/{BUCKET}/outputs/video_summary/")
        assert "X-Amz-Signature=" in link and "X-Amz-Expires=600" in link
        resp = httpx.get(link, timeout=10)  # a plain GET, no credentials: the signature is the grant
        assert resp.status_code == 200
        assert resp.content == sheet.read_bytes()
        assert resp.headers["content-type"] == "image/jpeg"
    assert linker_for(s3_settings)("/data/out/summary.json") == "file:///data/out/summary.json"


def test_local_link_and_file_uris(tmp_path: Path) -> None:
    storage = LocalStorage()
    src = tmp_path / "a b.json"
    src.write_text("{}")
    target = tmp_path / "out dir" / "summary.json"

    storage.put_file(src, target.as_uri())  # file:// URIs are percent-decoded

    assert target.read_text() == "{}"
    assert storage.exists(str(target)) and storage.exists(target.as_uri())
    assert storage.link(str(target), 60) == target.as_uri()
    assert storage.fetch(target.as_uri(), tmp_path / "copy.json", max_bytes=10) == 2


def test_https_refuses_a_host_that_now_resolves_inside(tmp_path: Path) -> None:
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"connected to {request.url}")

    source = HttpsSource(resolver=lambda host: ["10.0.0.7"], transport=httpx.MockTransport(never))

    with pytest.raises(ForbiddenScanUri):
        source.fetch("https://scans.example.com/scan.mp4", tmp_path / "scan.mp4", max_bytes=100)
    assert not (tmp_path / "scan.mp4").exists()


def test_https_connects_to_the_validated_address(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/old.mp4":  # a redirect is validated again before it is followed
            return httpx.Response(302, headers={"location": "https://cdn.example.com/scan.mp4"})
        return httpx.Response(200, content=b"x" * 300)

    answers = {"scans.example.com": ["93.184.216.34"], "cdn.example.com": ["151.101.1.69"]}
    source = HttpsSource(resolver=answers.__getitem__, transport=httpx.MockTransport(serve))

    assert source.fetch("https://scans.example.com/old.mp4", tmp_path / "s.mp4", max_bytes=300) == 300
    assert [(r.url.host, r.headers["host"], r.extensions["sni_hostname"]) for r in seen] == [
        ("93.184.216.34", "scans.example.com", "scans.example.com"),
        ("151.101.1.69", "cdn.example.com", "cdn.example.com"),
    ]
    with pytest.raises(ObjectTooLarge):
        source.fetch("https://scans.example.com/scan.mp4", tmp_path / "t.mp4", max_bytes=299)

    answers["cdn.example.com"] = ["169.254.169.254"]  # rebinding between the hops
    with pytest.raises(ForbiddenScanUri):
        source.fetch("https://scans.example.com/old.mp4", tmp_path / "u.mp4", max_bytes=300)


# -- the task entry point with S3 in and out -----------------------------------------------------
def test_entry_runs_an_s3_scan_into_s3_outputs(aws: MotoServer, tmp_path: Path) -> None:
    from service.synthetic import write_scan_video

    video = tmp_path / "scan.mp4"
    write_scan_video(video, frames=48, fps=24, size=(160, 120), blur=None, exposure=None)
    s3 = aws.client("s3")
    scan_key = "uploads/clinic 7/scan 1.mp4"
    s3.upload_file(str(video), BUCKET, scan_key)
    prefix = "results/video_summary/uploads:clinic-7:scan-1-0123456789ab"
    output_uri = f"s3://{BUCKET}/{prefix}"
    work = tmp_path / "work"
    work.mkdir()
    spec = {"task_id": "t-1", "algorithm": "video_summary", "output_uri": output_uri,
            "params": {"scan_id": "s-1", "scan_uri": f"s3://{BUCKET}/{scan_key}", "output_uri": output_uri,
                       "keyframes": 3, "segments": 4, **builtin_bundle(tmp_path)},
            "result_path": str(work / "result.json"), "progress_path": str(work / "progress")}
    (work / "spec.json").write_text(json.dumps(spec))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SCANTIDE_")}, **AWS_TEST_ENV,
           "SCANTIDE_S3_ENDPOINT_URL": aws.url, "SCANTIDE_STATE_DIR": str(tmp_path / "state"),
           "SCANTIDE_CONFIG": str(tmp_path / "absent.toml")}

    proc = subprocess.run([sys.executable, "-m", "algorithms.entry", "--spec", str(work / "spec.json")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)

    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((work / "result.json").read_text())["result"]
    assert result["output_uri"] == output_uri
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")["Contents"]
    keys = {o["Key"].removeprefix(prefix + "/") for o in listed}
    assert {"summary.json", "contact_sheet.jpg"} <= keys
    assert keys == set(result["outputs"]["files"])
    assert set(result["outputs"]["keyframes"]) <= keys and result["outputs"]["keyframes"]
    summary = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/summary.json")["Body"].read())
    assert summary["frame_count"] == 48 and summary["width"] == 160
    assert (work / "progress").read_text() == "1.000"


@pytest.mark.parametrize(
    ("scan", "max_bytes", "code"),
    [("uploads/missing.mp4", 1 << 20, "fetch_failed"), ("uploads/present.mp4", 10, "scan_too_large")],
)
def test_entry_fetch_failures(s3_settings: Settings, aws: MotoServer, tmp_path: Path, scan: str, max_bytes: int,
                              code: str) -> None:
    from algorithms.entry import EntryError, run_task

    aws.client("s3").put_object(Bucket=BUCKET, Key="uploads/present.mp4", Body=b"not really a video")
    settings = s3_settings.model_copy(update={"max_scan_bytes": max_bytes})
    spec = {"algorithm": "video_summary", "output_uri": f"s3://{BUCKET}/results/x",
            "params": {"scan_uri": f"s3://{BUCKET}/{scan}", **builtin_bundle(tmp_path)}}

    with pytest.raises(EntryError) as err:
        run_task(spec, settings)

    assert err.value.code == code
    assert "Contents" not in aws.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="results/")


def test_s3_storage_against_an_unreachable_endpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from service.storage import StorageUnavailable
    from tests.autoscaler.moto_server import free_port

    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    storage = S3Storage(f"http://127.0.0.1:{free_port()}")  # nothing listens there

    with pytest.raises(StorageUnavailable):
        storage.fetch(f"s3://{BUCKET}/x.mp4", tmp_path / "x.mp4", max_bytes=10)


def test_files_under_leaves_links_out(tmp_path: Path) -> None:
    """An output folder holding a link to a file of the machine (a secret, say) lists no such file:
    it would be uploaded and handed to the next pipeline step."""
    from service.storage.base import files_under

    secret = tmp_path / "secret"
    secret.write_text("token")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "result.json").write_text("{}")
    (out / "sub" / "a.txt").write_text("a")
    (out / "leak").symlink_to(secret)
    (out / "linked").symlink_to(tmp_path)
    assert files_under(out) == ["result.json", "sub/a.txt"]
