"""Scan and output storage: ``storage_for(uri, settings)`` picks the adapter for a URI's scheme.

Adapters: ``LocalStorage`` (paths, ``file://``), ``S3Storage`` (``s3://``; boto3 is imported only
when one is first needed), ``HttpsSource`` (``https://`` scans, read-only). The ``Storage``
interface and its errors live in ``service.storage.base``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from service.errors import ForbiddenScanUri
from service.scan_uri import Resolver, needs_resolution, system_resolver, validate_scan_uri
from service.settings import Settings
from service.storage.base import (
    ObjectNotFound,
    ObjectTooLarge,
    Storage,
    StorageError,
    StorageUnavailable,
    partial_path,
)
from service.storage.local import LocalStorage

if TYPE_CHECKING:
    import httpx

    from service.storage.s3 import S3Storage

__all__ = ["HttpsSource", "LocalStorage", "ObjectNotFound", "ObjectTooLarge", "Storage", "StorageError",
           "StorageUnavailable", "is_remote", "storage_for"]


_s3_lock = threading.Lock()
_s3_by_endpoint: dict[str | None, S3Storage] = {}  # one boto3 client per endpoint, per process


def is_remote(uri: str) -> bool:
    """True for URIs that are not local paths (``s3://``, ``https://`` …); ``file://`` is local."""
    return "://" in uri and not uri.startswith("file://")


def storage_for(uri: str, settings: Settings) -> Storage:
    """The storage that serves ``uri``; S3 storages (and their clients) are built once per endpoint."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("", "file"):
        return LocalStorage()
    if scheme == "s3":
        with _s3_lock:
            storage = _s3_by_endpoint.get(settings.s3_endpoint_url)
            if storage is None:
                from service.storage.s3 import S3Storage

                storage = _s3_by_endpoint[settings.s3_endpoint_url] = S3Storage(settings.s3_endpoint_url)
            return storage
    if scheme in ("https", "http"):
        return HttpsSource(allowed_hosts=tuple(settings.allowed_scan_hosts))
    raise StorageError(f"no storage for {scheme}:// URIs")


class HttpsSource(Storage):
    """Read-only ``https://`` scans, streamed with httpx under a size cap.

    The URI was validated at enqueue, but DNS may answer differently now (rebinding to a private
    or metadata address), so every hop (redirects included) is validated again here and the
    connection is pinned to the address just validated: the host name goes only into the Host
    header and TLS SNI (the certificate is still checked against it).
    """

    MAX_REDIRECTS = 5
    _CHUNK = 1024 * 1024

    def __init__(self, allowed_hosts: tuple[str, ...] = (), *, resolver: Resolver = system_resolver,
                 timeout_s: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        """timeout_s: connect and per-read timeout, seconds. transport: httpx transport (tests)."""
        self.allowed_hosts = allowed_hosts
        self.resolver = resolver
        self.timeout_s = timeout_s
        self.transport = transport

    def fetch(self, uri: str, dest: Path, *, max_bytes: int) -> int:
        tmp = partial_path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        got = 0
        try:
            with self._open("GET", uri) as resp:
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise ObjectTooLarge(f"{uri} is {declared} bytes, over the {max_bytes} byte limit")
                with open(tmp, "wb") as out:
                    for chunk in resp.iter_bytes(self._CHUNK):
                        got += len(chunk)
                        if got > max_bytes:
                            raise ObjectTooLarge(f"{uri} is over the {max_bytes} byte limit")
                        out.write(chunk)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return got

    def exists(self, uri: str) -> bool:
        try:
            with self._open("HEAD", uri):
                return True
        except ObjectNotFound:
            return False

    def put_file(self, local: Path, uri: str) -> None:
        raise StorageError(f"https:// storage is read-only; cannot write {uri}")

    def link(self, uri: str, ttl_s: int) -> str:
        return uri  # already a URL the platform can fetch

    @contextmanager
    def _open(self, method: str, uri: str) -> Iterator[httpx.Response]:
        import httpx

        # trust_env=False: a proxy would resolve the host itself and undo the pinning.
        with httpx.Client(timeout=self.timeout_s, trust_env=False, follow_redirects=False,
                          transport=self.transport) as client:
            for _ in range(self.MAX_REDIRECTS + 1):
                request = self._pinned_request(client, method, uri)
                try:
                    resp = client.send(request, stream=True)
                except httpx.TransportError as exc:
                    raise StorageUnavailable(f"cannot fetch {uri}: {type(exc).__name__}: {exc}") from exc
                try:
                    if resp.is_redirect:
                        uri = urljoin(uri, resp.headers["location"])
                        continue
                    _check_status(resp, uri)
                    yield resp
                    return
                finally:
                    resp.close()
        raise StorageError(f"more than {self.MAX_REDIRECTS} redirects fetching {uri}")

    def _pinned_request(self, client: httpx.Client, method: str, uri: str) -> httpx.Request:
        parts = urlsplit(uri)
        if parts.scheme.lower() not in ("https", "http"):  # validate_scan_uri would judge file:// as a local path
            raise ForbiddenScanUri(f"a redirect led to {uri}, which is not an https:// URL")
        host = parts.hostname or ""
        addresses = self.resolver(host) if needs_resolution(uri) else [host]
        # Raises ForbiddenScanUri when any address is not public (unless the host is allowed), an IPv4
        # address carried in an IPv6 one (NAT64, 6to4 …) included: the same check as at enqueue.
        validate_scan_uri(uri, data_root=Path(os.sep), allowed_hosts=self.allowed_hosts,
                          resolver=lambda _host: addresses)
        ip = addresses[0]
        netloc = f"[{ip}]" if ":" in ip else ip
        host_header = host if parts.port is None else f"{host}:{parts.port}"
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
        url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        return client.build_request(method, url, headers={"Host": host_header},
                                    extensions={"sni_hostname": host})


def _check_status(resp: Any, uri: str) -> None:
    if resp.status_code in (404, 410):
        raise ObjectNotFound(f"no scan at {uri} (HTTP {resp.status_code})")
    if resp.status_code == 429 or resp.status_code >= 500:
        raise StorageUnavailable(f"{uri} answered HTTP {resp.status_code}; retry later")
    if not 200 <= resp.status_code < 300:
        raise StorageError(f"{uri} answered HTTP {resp.status_code}")
