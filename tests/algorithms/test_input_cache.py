"""The worker's input cache against real parts: files on disk, its SQLite index shared by processes,
and ``Inputs.get`` fetching from S3 on a moto server over loopback."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from algorithms.task_files import Inputs
from service.input_cache import InputCache, stats
from service.settings import Settings, load_settings
from service.storage.s3 import S3Storage
from tests.autoscaler.moto_server import MotoServer
from tests.conftest import TEST_BUCKET

REPO = Path(__file__).resolve().parents[2]
BUCKET = TEST_BUCKET


class Source:
    """A remote input stand-in: ``fetch`` writes ``data`` and counts the downloads."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls = 0

    def fetch(self, path: Path) -> int:
        self.calls += 1
        path.write_bytes(self.data)
        return len(self.data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_hit_after_miss(tmp_path: Path) -> None:
    cache = InputCache(tmp_path / "cache", 1024)
    source = Source(b"scan bytes")

    first = cache.get("s3://b/scan.mp4 etag=1", source.fetch)
    second = cache.get("s3://b/scan.mp4 etag=1", source.fetch)

    assert source.calls == 1
    assert first == second == tmp_path / "cache" / "blobs" / sha(b"scan bytes")
    assert first.read_bytes() == b"scan bytes" and cache.holds(first)
    assert stat.S_IMODE(first.stat().st_mode) == 0o444
    assert stats(tmp_path / "cache") == {"hits": 1, "misses": 1, "evictions": 0, "bytes": 10, "blobs": 1}


def test_two_keys_with_the_same_bytes_share_a_blob(tmp_path: Path) -> None:
    cache = InputCache(tmp_path / "cache", 1024)

    a = cache.get("https://x/a.mp4", Source(b"same").fetch)
    b = cache.get("https://x/b.mp4", Source(b"same").fetch)

    assert a == b
    assert stats(tmp_path / "cache")["bytes"] == 4


def test_lru_eviction_by_byte_cap(tmp_path: Path) -> None:
    cache = InputCache(tmp_path / "cache", 30)
    sources = {k: Source(k.encode() * 10) for k in "abcd"}
    for k in "abc":
        cache.get(k, sources[k].fetch)
    cache.get("a", sources["a"].fetch)  # a is now the most recently used; b the least

    cache.get("d", sources["d"].fetch)  # 40 bytes: one must go

    assert not (tmp_path / "cache" / "blobs" / sha(b"b" * 10)).exists()
    for k in "acd":
        cache.get(k, sources[k].fetch)
    assert {k: s.calls for k, s in sources.items()} == {"a": 1, "b": 1, "c": 1, "d": 1}
    cache.get("b", sources["b"].fetch)  # a, c, d were used in that order: a goes
    assert sources["b"].calls == 2
    assert not (tmp_path / "cache" / "blobs" / sha(b"a" * 10)).exists()
    s = stats(tmp_path / "cache")
    assert s["evictions"] == 2 and s["bytes"] == 30 and s["blobs"] == 3


def test_an_input_over_the_cap_is_the_callers_own(tmp_path: Path) -> None:
    cache = InputCache(tmp_path / "cache", 10)
    kept = cache.get("small", Source(b"x" * 8).fetch)
    big = Source(b"y" * 20)

    path = cache.get("big", big.fetch)

    assert not cache.holds(path) and path.read_bytes() == b"y" * 20
    path.unlink()  # the caller's to remove
    cache.get("big", big.fetch)
    assert big.calls == 2  # never kept
    assert kept.is_file()  # nor did it push anything out
    s = stats(tmp_path / "cache")
    assert (s["misses"], s["evictions"], s["bytes"]) == (3, 0, 8)


@pytest.mark.parametrize("damage", ["shrink", "remove"])
def test_a_damaged_blob_is_fetched_anew(tmp_path: Path, damage: str) -> None:
    cache = InputCache(tmp_path / "cache", 1024)
    source = Source(b"0123456789")
    blob = cache.get("k", source.fetch)
    blob.chmod(0o644)
    if damage == "shrink":
        blob.write_bytes(b"01234")
    else:
        blob.unlink()

    again = cache.get("k", source.fetch)

    assert source.calls == 2
    assert again.read_bytes() == b"0123456789"
    assert stats(tmp_path / "cache")["misses"] == 2


def _fill(root: str, barrier: multiprocessing.synchronize.Barrier, out: str) -> None:
    """One worker process missing the key: it downloads only once the other has missed too."""

    def fetch(path: Path) -> int:
        barrier.wait(timeout=60)
        path.write_bytes(b"shared scan" * 1000)
        return path.stat().st_size

    got = InputCache(Path(root), 1 << 20).get("s3://b/shared.mp4 etag=1", fetch)
    Path(out).write_bytes(got.read_bytes())


def test_two_processes_fill_the_same_key(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    root = tmp_path / "cache"
    procs = [ctx.Process(target=_fill, args=(str(root), barrier, str(tmp_path / f"out-{i}"))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)

    assert [p.exitcode for p in procs] == [0, 0]
    for i in range(2):
        assert (tmp_path / f"out-{i}").read_bytes() == b"shared scan" * 1000
    s = stats(root)
    assert (s["misses"], s["blobs"], s["bytes"]) == (2, 1, 11000)
    source = Source(b"unused")
    assert InputCache(root, 1 << 20).get("s3://b/shared.mp4 etag=1", source.fetch).read_bytes() == b"shared scan" * 1000
    assert source.calls == 0
    assert list((root / "tmp").iterdir()) == []


def test_stats_from_a_fresh_process(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = InputCache(root, 1024)
    for key in ("a", "a", "b"):
        cache.get(key, Source(key.encode() * 4).fetch)

    proc = subprocess.run([sys.executable, "-c", "import json, sys; from pathlib import Path; "
                           "from service.input_cache import stats; print(json.dumps(stats(Path(sys.argv[1]))))",
                           str(root)], cwd=REPO, capture_output=True, text=True, timeout=60)

    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"hits": 1, "misses": 2, "evictions": 0, "bytes": 8, "blobs": 2}


def test_stats_of_no_cache_creates_nothing(tmp_path: Path) -> None:
    assert stats(tmp_path / "absent") == {"hits": 0, "misses": 0, "evictions": 0, "bytes": 0, "blobs": 0}
    assert not (tmp_path / "absent").exists()


# -- through Inputs.get, from S3 on moto ---------------------------------------------------------------
@pytest.fixture
def s3_settings(aws: MotoServer, tmp_path: Path) -> Settings:
    return load_settings(state_dir=tmp_path / "state", s3_endpoint_url=aws.url)


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URIs S3Storage.fetch really downloads, in order (the fetch itself runs unchanged)."""
    seen: list[str] = []
    real: Callable[..., int] = S3Storage.fetch

    def counting(self: S3Storage, uri: str, dest: Path, *, max_bytes: int) -> int:
        seen.append(uri)
        return real(self, uri, dest, max_bytes=max_bytes)

    monkeypatch.setattr(S3Storage, "fetch", counting)
    return seen


def test_pipeline_steps_fetch_an_s3_scan_once(s3_settings: Settings, aws: MotoServer, downloads: list[str],
                                              tmp_path: Path) -> None:
    aws.client("s3").put_object(Bucket=BUCKET, Key="uploads/p1/scan.mp4", Body=b"video" * 1000)
    uri = f"s3://{BUCKET}/uploads/p1/scan.mp4"
    steps = [Inputs(tmp_path / f"step-{i}", s3_settings) for i in range(2)]

    paths = [step.get(uri, "scan", "scan file") for step in steps]

    assert downloads == [uri]
    for step, path in zip(steps, paths):
        assert path.read_bytes() == b"video" * 1000 and path.suffix == ".mp4"
        assert step.owned(path)  # a copy of the task's own: the run may move it
    paths[0].write_bytes(b"changed by a run")  # …and a run changing it leaves the cache alone
    assert steps[1].get(uri, "scan", "scan file").read_bytes() == b"video" * 1000
    s = stats(s3_settings.input_cache_dir)  # type: ignore[arg-type]
    assert (s["hits"], s["misses"], s["bytes"]) == (2, 1, 5000)


def test_a_replaced_s3_object_is_fetched_anew(s3_settings: Settings, aws: MotoServer, downloads: list[str],
                                              tmp_path: Path) -> None:
    s3 = aws.client("s3")
    uri = f"s3://{BUCKET}/results/a/summary.json"
    s3.put_object(Bucket=BUCKET, Key="results/a/summary.json", Body=b'{"v": 1}')
    assert Inputs(tmp_path / "one", s3_settings).get(uri, "prev", "summary").read_bytes() == b'{"v": 1}'
    s3.put_object(Bucket=BUCKET, Key="results/a/summary.json", Body=b'{"v": 2}')  # a re-run's output

    assert Inputs(tmp_path / "two", s3_settings).get(uri, "prev", "summary").read_bytes() == b'{"v": 2}'
    assert downloads == [uri, uri]


def test_a_cap_of_zero_turns_the_cache_off(s3_settings: Settings, aws: MotoServer, downloads: list[str],
                                           tmp_path: Path) -> None:
    aws.client("s3").put_object(Bucket=BUCKET, Key="m.pt", Body=b"weights")
    settings = s3_settings.model_copy(update={"input_cache_max_bytes": 0})
    for i in range(2):
        Inputs(tmp_path / f"t{i}", settings).get(f"s3://{BUCKET}/m.pt", "model", "the model weights")

    assert len(downloads) == 2
    assert not settings.input_cache_dir.exists()  # type: ignore[union-attr]


def test_local_inputs_are_read_in_place_and_not_owned(tmp_path: Path) -> None:
    scan = tmp_path / "data" / "scan.mp4"
    scan.parent.mkdir()
    scan.write_bytes(b"local")
    inputs = Inputs(tmp_path / "work", load_settings(state_dir=tmp_path / "state"))

    assert inputs.get(str(scan), "scan", "scan file") == scan
    assert not inputs.owned(scan)
    assert not (tmp_path / "state" / "input_cache").exists()


def test_status_shows_the_input_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.cli import app

    monkeypatch.setenv("SCANTIDE_CONFIG", str(tmp_path / "absent.toml"))
    cache = InputCache(tmp_path / "state" / "input_cache", 1 << 20)
    for key in ("a", "a", "a", "b"):
        cache.get(key, Source(b"z" * 1024).fetch)

    result = CliRunner().invoke(app, ["--state-dir", str(tmp_path / "state"), "status"])

    assert result.exit_code == 0, result.output
    assert "input cache: 2 hits, 2 misses (50% hit rate), 1 KiB of 20 GiB, 0 evictions" in result.output
