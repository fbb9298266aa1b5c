"""Scan URI validation: where we are willing to fetch a scan from.

Accepted: ``s3://bucket/key``, ``https://host/…`` whose host resolves only to public addresses
(unless listed in ``allowed_scan_hosts``), and local files under the data root (a plain path,
relative to the root or absolute, or ``file://``). Refused: other schemes, ``..`` segments,
anything outside the data root, and hosts on loopback, private, link-local (cloud metadata
such as 169.254.169.254), multicast or reserved addresses, or IPv6 addresses that carry one
(``non_public``), to keep callers from making our workers fetch internal resources.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from service.errors import ForbiddenScanUri, InvalidScanUri, ScanMissing

Resolver = Callable[[str], list[str]]

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def system_resolver(host: str) -> list[str]:
    """Every address ``host`` resolves to; raises ``InvalidScanUri`` if it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidScanUri(f"cannot resolve host {host!r} of scan_uri: {exc}") from exc
    return sorted({info[4][0] for info in infos})


def needs_resolution(uri: str) -> bool:
    """True when validating ``uri`` means a DNS lookup (an http(s) host that is not an IP literal)."""
    parts = urlsplit(uri.strip())
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and not _is_ip(parts.hostname or "")


def validate_scan_uri(
    uri: str,
    *,
    data_root: Path,
    allowed_hosts: list[str] | tuple[str, ...] = (),
    resolver: Resolver = system_resolver,
) -> str:
    """Return the normalised URI (local paths become absolute paths) or raise an ``InvalidRequest``."""
    uri = uri.strip()
    if not uri:
        raise InvalidScanUri("scan_uri is empty")
    if any(ord(ch) < 32 for ch in uri):
        raise InvalidScanUri("scan_uri contains control characters")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "s3":  # the key is everything after the bucket: S3 keys may hold '?' and '#'
        bucket, _, key = uri[len("s3://"):].partition("/")
        return _validate_s3(bucket, key)
    if scheme in ("https", "http"):
        return _validate_http(uri, scheme, parts.hostname, parts.path, allowed_hosts, resolver)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidScanUri(f"file:// URIs must not name a host, got {parts.netloc!r}")
        return _validate_local(unquote(parts.path), data_root)
    if scheme == "":
        return _validate_local(uri, data_root)
    raise InvalidScanUri(f"unsupported scan_uri scheme {scheme!r}: use s3://, https:// or a path under the data root")


def _reject_traversal(path: str) -> None:
    if ".." in PurePosixPath(path.replace("\\", "/")).parts:
        raise InvalidScanUri("scan_uri must not contain '..' path segments")


def _validate_s3(bucket: str, key: str) -> str:
    if not _BUCKET.match(bucket):
        raise InvalidScanUri(f"invalid S3 bucket name {bucket!r} in scan_uri")
    key = key.lstrip("/")
    if not key or key.endswith("/"):
        raise InvalidScanUri("scan_uri must name an S3 object: s3://bucket/key")
    _reject_traversal(unquote(key))
    return f"s3://{bucket}/{key}"


def _validate_http(
    uri: str, scheme: str, host: str | None, path: str, allowed_hosts: list[str] | tuple[str, ...], resolver: Resolver
) -> str:
    if not host:
        raise InvalidScanUri("scan_uri has no host")
    _reject_traversal(unquote(path))
    if host.lower() in {h.lower() for h in allowed_hosts}:
        return uri
    if scheme != "https":
        raise InvalidScanUri("plain http:// scan URIs are refused; use https://")
    addresses = [host] if _is_ip(host) else resolver(host)
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        bad = non_public(ip)
        if bad is not None:
            carried = f" (which carries the IPv4 address {bad})" if bad != ip else ""
            raise ForbiddenScanUri(
                f"scan_uri host {host!r} resolves to {ip}{carried}, a non-public address (loopback, private, "
                "link-local or metadata); add the host to SCANTIDE_ALLOWED_SCAN_HOSTS if this is intended"
            )
    return uri


_IP = ipaddress.IPv4Address | ipaddress.IPv6Address

_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d (:: and ::1 among them)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the well-known prefix, IPv4 in the low 32 bits
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: a site's own translator, never public


def non_public(ip: _IP) -> _IP | None:
    """The address that makes ``ip`` unfit to fetch from (``ip`` itself, or an IPv4 address it carries),
    or None when it is public.

    An IPv6 address that embeds an IPv4 one (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo) can
    deliver to that IPv4 address: through the host's own stack, a NAT64 gateway or a relay. So the
    IPv4 address is judged as if given plainly: ``64:ff9b::a9fe:a9fe`` is 169.254.169.254.
    """
    if not ip.is_global or ip.is_multicast:
        return ip
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL or ip.is_site_local:  # is_global says yes to both in Python 3.11
            return ip
        for carried in _embedded_ipv4(ip):
            if not carried.is_global or carried.is_multicast:
                return carried
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip in _IPV4_COMPATIBLE or ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)  # (server, client): the client's address is kept obfuscated, ipaddress undoes it
    return []


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _validate_local(raw: str, data_root: Path) -> str:
    _reject_traversal(raw)
    # os.path rather than pathlib: this runs on every enqueue. realpath follows symlinks, so a link
    # inside the root that points outside it is caught too.
    root = os.path.realpath(data_root)
    candidate = os.path.realpath(os.path.join(root, raw))  # an absolute raw replaces the root
    if candidate != root and not candidate.startswith(root + os.sep):
        raise ForbiddenScanUri(f"local scan paths must be under the data root {root}; got {raw!r}")
    if not os.path.isfile(candidate):
        raise ScanMissing(f"no scan file at {candidate}")
    return candidate
