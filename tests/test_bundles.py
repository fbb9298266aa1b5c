"""Algorithm bundles: one canonical archive however a folder was packed, uploads read defensively,
unpacking whole or not at all."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from scantide.bundle import pack, pack_folder
from service.bundles import descriptor_of, read_upload, sha256, unpack
from service.errors import InvalidBundle, InvalidDescriptor

DESCRIPTOR = b'name: tiny_algo\nversion: "1"\ncommand: ["python", "{here}/run.py", "{inputs}", "{outputs}"]\n'


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


def member(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, target: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def test_the_same_files_make_the_same_bundle(tmp_path: Path) -> None:
    folder = tmp_path / "algo"
    (folder / "lib").mkdir(parents=True)
    (folder / "scantide-algorithm.yaml").write_bytes(DESCRIPTOR)
    (folder / "run.py").write_text("print('hi')")
    (folder / "lib" / "helper.py").write_text("X = 1")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "run.cpython-311.pyc").write_bytes(b"junk")
    (folder / ".secret").write_text("left out")
    first = pack_folder(folder)
    (folder / "run.py").touch()  # a newer time changes nothing
    assert pack_folder(folder) == first
    files = read_upload(first, 1 << 20)
    assert sorted(files) == ["lib/helper.py", "run.py", "scantide-algorithm.yaml"]
    assert sha256(pack(files)) == sha256(first)
    assert descriptor_of(files).name == "tiny_algo"
    here = unpack(first, tmp_path / "task" / "bundle")
    assert (here / "lib" / "helper.py").read_text() == "X = 1"


def test_a_bundle_that_cannot_be_unpacked_leaves_nothing(tmp_path: Path) -> None:
    broken = tar_of(member("scantide-algorithm.yaml", DESCRIPTOR),  # written first, then the link is refused
                    member("zz", kind=tarfile.SYMTYPE, target="/etc/passwd"))
    with pytest.raises(InvalidBundle):
        unpack(broken, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize(("members", "message"), [
    ([member("../escape.py")], "../escape.py: a path in the upload must stay inside the folder"),
    ([member("/etc/passwd")], "/etc/passwd: a path in the upload must stay inside the folder"),
    ([member("scantide-algorithm.yaml", DESCRIPTOR), member("link", kind=tarfile.SYMTYPE, target="/etc/passwd")],
     "link: only regular files and folders may be uploaded (no links or devices)"),
    ([member("scantide-algorithm.yaml", DESCRIPTOR), member("hard", kind=tarfile.LNKTYPE, target="run.py")],
     "hard: only regular files and folders may be uploaded (no links or devices)"),
    ([member("run.py")], "the upload holds no descriptor: put scantide-algorithm.yaml at the top of the folder"),
    ([member("scantide-algorithm.yaml", DESCRIPTOR), member("lib"), member("lib/x.py")],
     "lib/x.py: a file of the upload has the same path as this file's folder"),
    ([member("scantide-algorithm.yaml", DESCRIPTOR), member("run.py"), member("./run.py")],
     "run.py: the upload holds this path twice"),
])
def test_uploads_that_leave_their_folder_or_hold_links_are_refused(members: list, message: str) -> None:
    with pytest.raises(InvalidBundle) as refused:
        read_upload(tar_of(*members), 1 << 20)
    assert refused.value.message == message


def test_uploads_are_bounded_and_must_be_archives() -> None:
    with pytest.raises(InvalidBundle) as too_big:
        read_upload(tar_of(member("scantide-algorithm.yaml", DESCRIPTOR), member("big.bin", b"x" * 5000)), 4096)
    assert "more than 4096 bytes" in too_big.value.message
    folders = [member(f"d{i}", kind=tarfile.DIRTYPE) for i in range(1001)]
    with pytest.raises(InvalidBundle) as too_many:  # folders count: each costs a header to read
        read_upload(tar_of(member("scantide-algorithm.yaml", DESCRIPTOR), *folders), 1 << 20)
    assert "1000 entries" in too_many.value.message
    with pytest.raises(InvalidBundle) as not_tar:
        read_upload(b"PK\x03\x04 a zip file", 1 << 20)
    assert "not a readable tar.gz" in not_tar.value.message


def test_the_folder_must_hold_what_the_descriptor_names() -> None:
    files = read_upload(tar_of(member("scantide-algorithm.yaml", DESCRIPTOR)), 1 << 20)
    with pytest.raises(InvalidDescriptor) as missing:
        descriptor_of(files)
    assert missing.value.errors == ["command[1]: {here}/run.py is not in the folder"]


def test_a_changed_bundle_cache_is_never_trusted(tmp_path: Path) -> None:
    from algorithms.errors import EntryError
    from algorithms.task_files import Inputs

    good = pack({"scantide-algorithm.yaml": (DESCRIPTOR, False), "run.py": (b"print('registered')", False)})
    digest = sha256(good)
    store = tmp_path / "store" / "bundle.tar.gz"
    store.parent.mkdir()
    store.write_bytes(good)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{digest}.tar.gz").write_bytes(  # a poisoned cache entry under the registered digest
        pack({"scantide-algorithm.yaml": (DESCRIPTOR, False), "run.py": (b"print('planted')", False)}))
    first = tmp_path / "task1"
    first.mkdir()
    here = Inputs(first, None).bundle(str(store), digest, cache)
    assert (here / "run.py").read_text() == "print('registered')"
    assert (cache / f"{digest}.tar.gz").read_bytes() == good  # the cache is mended
    store.write_bytes(b"changed after registration")
    (cache / f"{digest}.tar.gz").unlink()
    second = tmp_path / "task2"
    second.mkdir()
    with pytest.raises(EntryError) as refused:
        Inputs(second, None).bundle(str(store), digest, cache)
    assert refused.value.code == "bundle_mismatch"
