"""Input the service used to accept but should not (issue 13, item 10): numbers JSON has no room
for, headers of any size, IPv6 addresses that carry a private IPv4 one, malformed signature
headers, a scan swapped for a symlink after enqueue, a client that leaves mid-body.

Against real parts: uvicorn on loopback (the ``api`` fixture, and ``scantide api`` as a process),
real files and symlinks, raw sockets where a client must misbehave.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from algorithms.errors import EntryError
from algorithms.task_files import Inputs
from scantide.errors import SignatureError
from scantide.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify_signature
from service.api.server import MAX_HEADER_BYTES
from service.enqueue import parse_scan_request
from service.errors import ForbiddenScanUri
from service.scan_uri import validate_scan_uri
from service.settings import Settings
from service.storage import HttpsSource
from service.supervisor import cli_argv, settings_env
from tests.conftest import TOKEN, ApiServer, wait_for

# -- 1, 2: numbers in the body -------------------------------------------------------------------


def post_raw(api: ApiServer, body: bytes) -> httpx.Response:
    with api.client() as client:
        return client.post("/v1/scans", content=body, headers={"content-type": "application/json"})


def scan_body(extra: str) -> bytes:
    return ('{"scan_id": "scan-1", "scan_uri": "clinic/scan.mp4", ' + extra + "}").encode()


@pytest.mark.parametrize("extra, where", [
    ('"metadata": {"ward": NaN}', "metadata.ward"),
    ('"metadata": {"ward": Infinity}', "metadata.ward"),
    ('"metadata": {"ward": {"beds": [1, -Infinity]}}', "metadata.ward.beds[1]"),
    ('"metadata": {"ward": 1e999}', "metadata.ward"),
    ('"params": {"threshold": NaN}', "params.threshold"),
])
def test_non_finite_numbers_are_refused_at_parse(api: ApiServer, extra: str, where: str) -> None:
    response = post_raw(api, scan_body(extra))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert where in error["message"] and "not a finite number" in error["message"]


def test_finite_numbers_are_still_taken(api: ApiServer, data_root: Path) -> None:
    (data_root / "clinic").mkdir()
    (data_root / "clinic" / "scan.mp4").write_bytes(b"video")
    response = post_raw(api, scan_body('"metadata": {"big": 1e300, "small": -2.5e-300, "n": ' + "9" * 300 + "}"))
    assert response.status_code == 202, response.text
    assert parse_scan_request(scan_body('"metadata": {"n": ' + "9" * 4300 + "}")).metadata == {"n": int("9" * 4300)}


def test_a_number_too_long_is_named_as_such(api: ApiServer) -> None:
    response = post_raw(api, scan_body('"metadata": {"n": ' + "1" * 5000 + "}"))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert "more than 4300 digits" in error["message"] and "column" in error["message"]
    assert post_raw(api, b'{"scan_id": ').json()["error"]["code"] == "malformed_json"  # still itself


# -- 3: request heads of any size ----------------------------------------------------------------


def send_head(port: int, extra_header_bytes: int, *, complete: bool) -> bytes:
    """Send a GET /healthz head padded with one header, and return everything the server answers.

    An incomplete head of exactly MAX_HEADER_BYTES + 1 bytes is read whole before the server
    refuses it, so its answer is not lost to a reset from unread bytes."""
    start = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Pad: "
    head = start + b"a" * (extra_header_bytes - len(start)) + (b"\r\n\r\n" if complete else b"")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def assert_431(answer: bytes) -> None:
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 431"), answer[:200]
    body = rest.partition(b"\r\n\r\n")[2]
    assert httpx.Response(431, content=body).json()["error"]["code"] == "request_header_too_large"


def test_oversized_request_head_answers_431(api: ApiServer) -> None:
    port = int(api.url.rsplit(":", 1)[1])
    assert_431(send_head(port, MAX_HEADER_BYTES + 1, complete=False))
    assert send_head(port, MAX_HEADER_BYTES - 1024, complete=True).startswith(b"HTTP/1.1 200")
    with api.client() as client:  # and the server goes on serving
        assert client.get("/healthz").status_code == 200


def test_scantide_api_bounds_request_heads_too(settings: Settings, tmp_path: Path) -> None:
    """The production start-up (`scantide api`) and the tests' fixture share the limit."""
    log = open(tmp_path / "api.log", "wb")
    proc = subprocess.Popen(cli_argv("api"), env={**os.environ, **settings_env(settings)}, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{settings.api_port}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 30, what="scantide api to serve")
        assert_431(send_head(settings.api_port, MAX_HEADER_BYTES + 1, complete=False))
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# -- 4: IPv6 addresses that carry an IPv4 one ----------------------------------------------------

CARRIERS = [
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::a00:1",  # RFC 8215 local-use NAT64
    "::a9fe:a9fe",  # IPv4-compatible 169.254.169.254
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "::ffff:a9fe:a9fe",  # IPv4-mapped
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "fec0::1",  # deprecated site-local
]


@pytest.mark.parametrize("address", CARRIERS)
def test_ipv6_carrying_a_private_ipv4_is_refused(address: str, tmp_path: Path) -> None:
    with pytest.raises(ForbiddenScanUri):  # as a literal
        validate_scan_uri(f"https://[{address}]/scan.mp4", data_root=tmp_path, resolver=_no_dns)
    with pytest.raises(ForbiddenScanUri):  # and as what a host name resolves to
        validate_scan_uri("https://scans.example.com/scan.mp4", data_root=tmp_path,
                          resolver=lambda host: ["93.184.216.34", address])


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2606:4700::1111"])
def test_ipv6_carrying_a_public_ipv4_is_taken(address: str, tmp_path: Path) -> None:
    uri = f"https://[{address}]/scan.mp4"
    assert validate_scan_uri(uri, data_root=tmp_path, resolver=_no_dns) == uri


def test_refusal_names_the_carried_ipv4(tmp_path: Path) -> None:
    carried = r"64:ff9b::a9fe:a9fe \(which carries the IPv4 address 169.254.169.254\)"
    with pytest.raises(ForbiddenScanUri, match=carried):
        validate_scan_uri("https://[64:ff9b::a9fe:a9fe]/s.mp4", data_root=tmp_path, resolver=_no_dns)


@pytest.mark.parametrize("location, answers", [
    ("https://[64:ff9b::a9fe:a9fe]/latest/meta-data/", {}),
    ("https://cdn.example.com/scan.mp4", {"cdn.example.com": ["2002:a9fe:a9fe::1"]}),
    ("https://cdn.example.com/scan.mp4", {"cdn.example.com": ["::7f00:1"]}),
    ("file:///etc/passwd", {}),
])
def test_redirects_get_the_same_address_check(location: str, answers: dict[str, list[str]], tmp_path: Path) -> None:
    seen: list[str] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.headers["host"] == "scans.example.com":
            return httpx.Response(302, headers={"location": location})
        raise AssertionError(f"followed a redirect to {request.url}")

    resolver = {"scans.example.com": ["93.184.216.34"], **answers}.__getitem__
    source = HttpsSource(resolver=resolver, transport=httpx.MockTransport(serve))
    with pytest.raises(ForbiddenScanUri):
        source.fetch("https://scans.example.com/old.mp4", tmp_path / "s.mp4", max_bytes=100)
    assert seen == ["https://93.184.216.34/old.mp4"]
    assert not (tmp_path / "s.mp4").exists()


def _no_dns(host: str) -> list[str]:
    raise AssertionError(f"no host name should be resolved here, got {host!r}")


# -- 5: malformed signature headers --------------------------------------------------------------


@pytest.mark.parametrize("header, value", [
    (TIMESTAMP_HEADER, "9" * 400), (TIMESTAMP_HEADER, b"9" * 400), (TIMESTAMP_HEADER, "\u0661\u0662"),
    (TIMESTAMP_HEADER, 12345), (SIGNATURE_HEADER, "v1,\u00e9"), (SIGNATURE_HEADER, b"v1,\xff\xfe"),
    (SIGNATURE_HEADER, ["v1", "ab"]), (SIGNATURE_HEADER, "v1,a,b"), (SIGNATURE_HEADER, "v1," + "A" * 100_000)])
def test_every_malformed_signature_header_is_a_signature_error(header: str, value: object) -> None:
    headers = {**sign("s3cret-0123456789", "evt_1", b"{}", timestamp=1), header: value}
    with pytest.raises(SignatureError) as info:
        verify_signature("s3cret-0123456789", headers, b"{}", now=1.0)  # type: ignore[arg-type]
    assert info.value.code == "invalid_signature"


def test_raw_header_bytes_verify() -> None:
    body = b'{"id": "evt_1"}'
    raw = {k.encode(): v.encode() for k, v in sign("s3cret-0123456789", "evt_1", body).items()}
    verify_signature("s3cret-0123456789", raw, body)  # type: ignore[arg-type]


# -- 6: a scan swapped for a symlink after enqueue -----------------------------------------------


def test_a_scan_replaced_by_a_symlink_out_of_the_root_is_refused(settings: Settings, data_root: Path,
                                                                 tmp_path: Path) -> None:
    (data_root / "clinic").mkdir()
    scan = data_root / "clinic" / "scan.mp4"
    scan.write_bytes(b"video")
    uri = validate_scan_uri("clinic/scan.mp4", data_root=data_root)  # what enqueue stored
    secret = tmp_path / "secret.txt"
    secret.write_text("not a scan")
    inputs = Inputs(tmp_path / "work", settings)
    assert inputs.get(uri, "scan", "scan file") == Path(uri)

    scan.unlink()
    scan.symlink_to(secret)
    with pytest.raises(EntryError) as info:
        inputs.get(uri, "scan", "scan file")
    assert info.value.code == "forbidden_scan_uri" and str(secret) in info.value.message

    scan.unlink()  # a folder on the way swapped instead
    (data_root / "clinic").rmdir()
    (data_root / "clinic").symlink_to(tmp_path)
    (tmp_path / "scan.mp4").write_bytes(b"someone else's")
    with pytest.raises(EntryError, match="outside the data root"):
        inputs.get(uri, "scan", "scan file")


def test_symlinks_inside_the_root_and_files_outside_it_still_read(settings: Settings, data_root: Path,
                                                                  tmp_path: Path) -> None:
    (data_root / "real.mp4").write_bytes(b"video")
    (data_root / "alias.mp4").symlink_to(data_root / "real.mp4")
    weights = tmp_path / "weights.bin"  # scantide's own files (models, outputs) need not be under the root
    weights.write_bytes(b"w")
    inputs = Inputs(tmp_path / "work", settings)
    assert inputs.get(str(data_root / "alias.mp4"), "scan", "scan file") == data_root / "alias.mp4"
    assert inputs.get(str(weights), "model", "the model weights") == weights


# -- 7: a client that leaves mid-body ------------------------------------------------------------


def test_a_client_leaving_mid_body_logs_one_calm_line(api: ApiServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    uvicorn_log = logging.getLogger("uvicorn")  # it does not propagate to the root
    uvicorn_log.addHandler(caplog.handler)
    try:
        port = int(api.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(f"POST /v1/scans HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode() + b'{"scan_id"')
        wait_for(lambda: any("client_disconnected" in r.getMessage() for r in caplog.records), 10,
                 what="the disconnect to be logged")
        with api.client() as client:  # one more request through, after the disconnected one's
            assert client.get("/healthz").status_code == 200
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    lines = [r for r in caplog.records if "client_disconnected" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and "path=/v1/scans" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text
