"""S3 (``s3://bucket/key``) through one boto3 client built when the storage is.

Credentials and region come from boto3's own chain (env, profile, instance or Lambda role);
``endpoint_url`` points the client elsewhere (moto in tests, MinIO). Keys are taken verbatim from
the URI, never percent-decoded: S3 keys may hold any character.
"""

from __future__ import annotations

import logging
import mimetypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import S3TransferFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from service.errors import ScantideError
from service.storage.base import (
    ObjectNotFound,
    ObjectTooLarge,
    Storage,
    StorageError,
    StorageUnavailable,
    partial_path,
)

log = logging.getLogger(__name__)

_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
              "InternalError", "ServiceUnavailable", "503", "500"}


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key); the key is kept byte for byte."""
    if not uri.startswith("s3://"):
        raise StorageError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise StorageError(f"no bucket in {uri}")
    return bucket, key


class S3Storage(Storage):
    def __init__(self, endpoint_url: str | None = None, *, client: Any = None) -> None:
        """endpoint_url: S3 endpoint override (None: AWS). client: an S3 client to use instead of
        building one (tests inject faults through it)."""
        if client is None:
            config = Config(
                signature_version="s3v4",
                retries={"mode": "standard", "max_attempts": 5},
                connect_timeout=10,
                read_timeout=60,
                # Custom endpoints rarely serve virtual-hosted buckets (moto, MinIO on an IP).
                s3={"addressing_style": "path"} if endpoint_url else None,
            )
            client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
        self.client = client
        # Multipart above 16 MiB, parts uploaded and downloaded in parallel.
        self.transfer = TransferConfig(multipart_threshold=16 * 1024**2, multipart_chunksize=16 * 1024**2,
                                       max_concurrency=8)

    def fetch(self, uri: str, dest: Path, *, max_bytes: int) -> int:
        bucket, key = parse_s3_uri(uri)
        with _translated(uri):
            head = self.client.head_object(Bucket=bucket, Key=key)
        size = int(head["ContentLength"])
        if size > max_bytes:
            raise ObjectTooLarge(f"{uri} is {size} bytes, over the {max_bytes} byte limit")
        tmp = partial_path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Download the object that was measured: its version where the bucket keeps versions;
            # otherwise an object replaced in between is caught by the size check below.
            extra = {"VersionId": head["VersionId"]} if head.get("VersionId") else {}
            with _translated(uri):
                self.client.download_file(bucket, key, str(tmp), ExtraArgs=extra, Config=self.transfer)
            got = tmp.stat().st_size
            if got > max_bytes:
                raise ObjectTooLarge(f"{uri} grew to {got} bytes while downloading, over the {max_bytes} byte limit")
            if got != size:
                raise StorageUnavailable(f"{uri} changed while downloading ({size} → {got} bytes); retry")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("s3_fetched uri=%s bytes=%d", uri, size)
        return size

    def put_file(self, local: Path, uri: str) -> None:
        bucket, key = parse_s3_uri(uri)
        if not key or key.endswith("/"):
            raise StorageError(f"{uri} does not name an object")
        content_type = mimetypes.guess_type(local.name)[0] or "application/octet-stream"
        with _translated(uri):
            self.client.upload_file(str(local), bucket, key, ExtraArgs={"ContentType": content_type},
                                    Config=self.transfer)

    def exists(self, uri: str) -> bool:
        bucket, key = parse_s3_uri(uri)
        try:
            with _translated(uri):
                self.client.head_object(Bucket=bucket, Key=key)
        except ObjectNotFound:
            return False
        return True

    def link(self, uri: str, ttl_s: int) -> str:
        bucket, key = parse_s3_uri(uri)
        with _translated(uri):
            return self.client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                      ExpiresIn=int(ttl_s))


@contextmanager
def _translated(uri: str) -> Iterator[None]:
    """Re-raise boto3's errors as our own, keeping not-found and transient failures apart."""
    try:
        yield
    except (ClientError, BotoCoreError, S3TransferFailedError) as exc:
        raise _translate(exc, uri) from exc


def _translate(exc: Exception, uri: str) -> ScantideError:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _NOT_FOUND or status == 404:
            return ObjectNotFound(f"no S3 object at {uri}")
        if code in _TRANSIENT or status >= 500 or status == 429:
            return StorageUnavailable(f"S3 unavailable for {uri}: {code} {err.get('Message', '')}".strip())
        return StorageError(f"S3 refused {uri}: {code} {err.get('Message', '')}".strip())
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"no AWS credentials to reach {uri}: {exc}")
    return StorageUnavailable(f"S3 unreachable for {uri}: {exc}")
