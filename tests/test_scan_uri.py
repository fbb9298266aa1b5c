"""Where we are willing to fetch a scan from: ``validate_scan_uri`` and ``submit_scan``.

No network traffic: IP literals are never resolved, ``localhost`` comes from /etc/hosts, and
other host names go through a ``resolver`` function passed in.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.backends.base import TaskBackend
from service.domain import JobState, ScanRequest
from service.enqueue import Enqueuer, submit_scan
from service.errors import ForbiddenScanUri, InvalidScanUri, ScanMissing, ScantideError, UnknownAlgorithm
from service.scan_uri import validate_scan_uri
from service.settings import Settings

PUBLIC_IP = "93.184.216.34"


def no_dns(host: str) -> list[str]:
    raise AssertionError(f"no host name should be resolved here, got {host!r}")


class FixedResolver:
    """A resolver answering every host with the same addresses, remembering what it was asked."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.asked: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        return list(self.addresses)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "data"
    (r / "clinic").mkdir(parents=True)
    (r / "clinic" / "scan.mp4").write_bytes(b"video")
    return r


def check(uri: str, root: Path, **kwargs) -> str:
    kwargs.setdefault("resolver", no_dns)
    return validate_scan_uri(uri, data_root=root, **kwargs)


def refused(uri: str, root: Path, error: type[ScantideError], code: str, **kwargs) -> ScantideError:
    with pytest.raises(ScantideError) as info:
        check(uri, root, **kwargs)
    assert type(info.value) is error, f"{uri!r}: {type(info.value).__name__}: {info.value}"
    assert info.value.code == code
    assert info.value.status == 422
    return info.value


# -- accepted ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "normalised"),
    [
        ("s3://scans-bucket/clinic/2024/scan.mp4", "s3://scans-bucket/clinic/2024/scan.mp4"),
        ("  S3://scans-bucket//clinic/scan.mp4\n", "s3://scans-bucket/clinic/scan.mp4"),
        ("s3://scans.bucket-1/a", "s3://scans.bucket-1/a"),
        ("s3://scans-bucket/clinic/scan?v=2#take 1.mp4", "s3://scans-bucket/clinic/scan?v=2#take 1.mp4"),
    ],
)
def test_s3_uri_is_accepted_and_normalised(root: Path, uri: str, normalised: str) -> None:
    assert check(uri, root) == normalised


@pytest.mark.parametrize(
    "uri",
    [f"https://{PUBLIC_IP}/scans/a.mp4", f"https://{PUBLIC_IP}:8443/scans/a.mp4?sig=abc",
     "https://[2606:2800:220:1:248:1893:25c8:1946]/a.mp4"],
)
def test_https_to_a_public_ip_literal_is_accepted_without_resolving(root: Path, uri: str) -> None:
    assert check(uri, root, resolver=no_dns) == uri


def test_https_host_name_is_checked_with_the_given_resolver(root: Path) -> None:
    resolver = FixedResolver(PUBLIC_IP, "2606:2800:220:1:248:1893:25c8:1946")
    uri = "https://scans.example.com/a.mp4"
    assert check(uri, root, resolver=resolver) == uri
    assert resolver.asked == ["scans.example.com"]


@pytest.mark.parametrize("form", ["relative", "absolute", "file", "file_localhost", "dotted"])
def test_local_paths_under_the_root_become_absolute_paths(root: Path, form: str) -> None:
    target = root / "clinic" / "scan.mp4"
    uri = {
        "relative": "clinic/scan.mp4",
        "absolute": str(target),
        "file": f"file://{target}",
        "file_localhost": f"file://localhost{target}",
        "dotted": "./clinic/./scan.mp4",
    }[form]
    result = check(uri, root)
    assert result == str(target.resolve())
    assert os.path.isabs(result)


def test_symlink_inside_the_root_to_a_file_inside_is_accepted(root: Path) -> None:
    (root / "latest.mp4").symlink_to(root / "clinic" / "scan.mp4")
    assert check("latest.mp4", root) == str((root / "clinic" / "scan.mp4").resolve())


def test_file_uri_with_percent_encoding_is_decoded(root: Path) -> None:
    (root / "clinic" / "scan 2.mp4").write_bytes(b"video")
    assert check(f"file://{root}/clinic/scan%202.mp4", root) == str((root / "clinic" / "scan 2.mp4").resolve())


# -- refused: traversal and the data root --------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "clinic/../clinic/scan.mp4",
        "../data/clinic/scan.mp4",
        "{root}/clinic/../clinic/scan.mp4",
        "file://{root}/clinic/../clinic/scan.mp4",
        "file://{root}/clinic/%2e%2e/clinic/scan.mp4",
        "s3://scans-bucket/a/../b.mp4",
        "s3://scans-bucket/a/%2e%2e/b.mp4",
        "s3://scans-bucket/a/%2E%2E/b.mp4",
        "s3://scans-bucket/..",
        "https://93.184.216.34/a/../b.mp4",
        "https://93.184.216.34/a/%2e%2e/b.mp4",
    ],
)
def test_dot_dot_segments_are_refused(root: Path, uri: str) -> None:
    err = refused(uri.format(root=root), root, InvalidScanUri, "invalid_scan_uri")
    assert ".." in err.message


@pytest.mark.parametrize("form", ["absolute", "file"])
def test_paths_outside_the_root_are_forbidden(root: Path, tmp_path: Path, form: str) -> None:
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"not yours")
    uri = str(outside) if form == "absolute" else f"file://{outside}"
    refused(uri, root, ForbiddenScanUri, "forbidden_scan_uri")
    refused("/etc/passwd", root, ForbiddenScanUri, "forbidden_scan_uri")


def test_root_prefix_sibling_is_outside(root: Path) -> None:
    sibling = root.parent / (root.name + "-evil")
    sibling.mkdir()
    (sibling / "scan.mp4").write_bytes(b"x")
    refused(str(sibling / "scan.mp4"), root, ForbiddenScanUri, "forbidden_scan_uri")


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_symlink_inside_the_root_pointing_outside_is_forbidden(root: Path, tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "scan.mp4").write_bytes(b"not yours")
    if kind == "file":
        (root / "link.mp4").symlink_to(outside / "scan.mp4")
        uri = "link.mp4"
    else:
        (root / "linkdir").symlink_to(outside)
        uri = str(root / "linkdir" / "scan.mp4")
    refused(uri, root, ForbiddenScanUri, "forbidden_scan_uri")


@pytest.mark.parametrize("uri", ["clinic/missing.mp4", "{root}/missing.mp4", "file://{root}/missing.mp4", "clinic"])
def test_missing_local_file_is_scan_missing(root: Path, uri: str) -> None:
    refused(uri.format(root=root), root, ScanMissing, "scan_missing")


def test_file_uri_naming_a_host_is_refused(root: Path) -> None:
    refused(f"file://fileserver{root}/clinic/scan.mp4", root, InvalidScanUri, "invalid_scan_uri")


# -- refused: schemes and hosts ------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    ["ftp://93.184.216.34/a.mp4", "gopher://93.184.216.34:70/_x", "data:video/mp4;base64,AAAA",
     "javascript:alert(1)", "sftp://host/a.mp4"],
)
def test_other_schemes_are_refused(root: Path, uri: str) -> None:
    refused(uri, root, InvalidScanUri, "invalid_scan_uri")


def test_plain_http_is_refused(root: Path) -> None:
    err = refused(f"http://{PUBLIC_IP}/a.mp4", root, InvalidScanUri, "invalid_scan_uri")
    assert "https" in err.message


@pytest.mark.parametrize(
    "uri",
    ["", "   ", "s3://Bad_Bucket/a", "s3://scans-bucket", "s3://scans-bucket/", "s3://scans-bucket/dir/",
     "https:///a.mp4", "clinic/scan.mp4\x00.txt", "https://93.184.216.34/a\r\nX-Injected: 1"],
)
def test_malformed_uris_are_invalid(root: Path, uri: str) -> None:
    refused(uri, root, InvalidScanUri, "invalid_scan_uri")


@pytest.mark.parametrize(
    "host",
    ["169.254.169.254", "127.0.0.1", "10.0.0.1", "192.168.1.10", "172.16.0.1", "100.64.0.1", "0.0.0.0",
     "224.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:169.254.169.254]", "[fe80::1]", "[fd00::1]", "[::]"],
)
def test_non_public_ip_literals_are_forbidden(root: Path, host: str) -> None:
    err = refused(f"https://{host}/latest/meta-data/", root, ForbiddenScanUri, "forbidden_scan_uri",
                  resolver=no_dns)
    assert "SCANTIDE_ALLOWED_SCAN_HOSTS" in err.message


def test_userinfo_cannot_hide_the_real_host(root: Path) -> None:
    refused(f"https://{PUBLIC_IP}@127.0.0.1/a.mp4", root, ForbiddenScanUri, "forbidden_scan_uri")


def test_localhost_is_forbidden_via_the_hosts_file(root: Path) -> None:
    # The system resolver answers localhost from /etc/hosts; nothing goes on the wire.
    with pytest.raises(ForbiddenScanUri) as info:
        validate_scan_uri("https://localhost/a.mp4", data_root=root)
    assert info.value.code == "forbidden_scan_uri"


@pytest.mark.parametrize(
    "addresses",
    [("10.1.2.3",), (PUBLIC_IP, "127.0.0.1"), ("::1",), ("fe80::1%eth0",), ("::ffff:10.0.0.1",)],
)
def test_a_name_resolving_to_any_non_public_address_is_forbidden(root: Path, addresses: tuple[str, ...]) -> None:
    resolver = FixedResolver(*addresses)
    refused("https://innocent.example.com/a.mp4", root, ForbiddenScanUri, "forbidden_scan_uri", resolver=resolver)
    assert resolver.asked == ["innocent.example.com"]


def test_an_unresolvable_name_is_invalid(root: Path) -> None:
    def unresolvable(host: str) -> list[str]:
        raise InvalidScanUri(f"cannot resolve host {host!r}")

    refused("https://nowhere.invalid/a.mp4", root, InvalidScanUri, "invalid_scan_uri", resolver=unresolvable)


def test_allowed_hosts_let_an_internal_host_through(root: Path) -> None:
    uri = "https://127.0.0.1:9000/scans/a.mp4"
    refused(uri, root, ForbiddenScanUri, "forbidden_scan_uri")
    assert check(uri, root, allowed_hosts=["127.0.0.1"]) == uri
    # Only the listed host: another loopback address stays forbidden.
    refused("https://127.0.0.2/a.mp4", root, ForbiddenScanUri, "forbidden_scan_uri", allowed_hosts=["127.0.0.1"])
    # An allowed host does not excuse a traversal.
    refused("https://127.0.0.1/a/../b", root, InvalidScanUri, "invalid_scan_uri", allowed_hosts=["127.0.0.1"])


# -- submit_scan ---------------------------------------------------------------------------


def test_submit_scan_stores_the_normalised_uri(backend: TaskBackend, settings: Settings, data_root: Path) -> None:
    (data_root / "scan.mp4").write_bytes(b"video")
    request = ScanRequest(scan_id="scan-1", scan_uri="scan.mp4", metadata={"patient": "p-7"})
    sub = submit_scan(backend, settings, request, resolver=no_dns)

    assert sub.created is True
    task = sub.task
    assert task.state is JobState.queued
    assert task.algorithm == settings.default_algorithm
    assert task.params["scan_uri"] == str((data_root / "scan.mp4").resolve())
    assert task.params["scan_id"] == "scan-1"
    assert task.params["metadata"] == {"patient": "p-7"}
    assert task.output_uri == Enqueuer.from_settings(settings).output_uri(settings.default_algorithm, "scan-1")
    assert task.params["output_uri"] == task.output_uri

    again = submit_scan(backend, settings, request, resolver=no_dns)
    assert again.created is False and again.task.task_id == task.task_id


def test_submit_scan_uses_the_resolver_it_is_given(backend: TaskBackend, settings: Settings) -> None:
    resolver = FixedResolver(PUBLIC_IP)
    sub = submit_scan(backend, settings, ScanRequest(scan_id="scan-2", scan_uri="https://cdn.example.com/s.mp4"),
                      resolver=resolver)
    assert sub.task.params["scan_uri"] == "https://cdn.example.com/s.mp4"
    assert resolver.asked == ["cdn.example.com"]


@pytest.mark.parametrize(
    ("uri", "error", "code"),
    [
        ("https://169.254.169.254/latest/meta-data/", ForbiddenScanUri, "forbidden_scan_uri"),
        ("missing.mp4", ScanMissing, "scan_missing"),
        ("s3://scans-bucket/a/%2e%2e/b", InvalidScanUri, "invalid_scan_uri"),
        ("ftp://93.184.216.34/a.mp4", InvalidScanUri, "invalid_scan_uri"),
    ],
)
def test_submit_scan_refuses_bad_uris_and_enqueues_nothing(
    backend: TaskBackend, settings: Settings, data_root: Path, uri: str, error: type, code: str
) -> None:
    with pytest.raises(ScantideError) as info:
        submit_scan(backend, settings, ScanRequest(scan_id="scan-3", scan_uri=uri), resolver=no_dns)
    assert type(info.value) is error
    assert info.value.code == code
    assert backend.tasks_for_scan("scan-3") == []


def test_submit_scan_honours_allowed_scan_hosts(backend: TaskBackend, settings: Settings) -> None:
    request = ScanRequest(scan_id="scan-4", scan_uri="https://127.0.0.1:9000/s.mp4")
    with pytest.raises(ForbiddenScanUri):
        submit_scan(backend, settings, request, resolver=no_dns)
    allowed = settings.model_copy(update={"allowed_scan_hosts": ["127.0.0.1"]})
    sub = submit_scan(backend, allowed, request, resolver=no_dns)
    assert sub.task.params["scan_uri"] == "https://127.0.0.1:9000/s.mp4"


def test_submit_scan_unknown_algorithm(backend: TaskBackend, settings: Settings) -> None:
    with pytest.raises(UnknownAlgorithm) as info:
        submit_scan(backend, settings, ScanRequest(scan_id="scan-5", scan_uri="s3://scans-bucket/a.mp4",
                                                   algorithm="nope"), resolver=no_dns)
    assert info.value.code == "unknown_algorithm"
    assert backend.tasks_for_scan("scan-5") == []
