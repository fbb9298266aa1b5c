"""AWS Lambda entry point: S3 uploads, API Gateway requests and SQS messages become enqueued scans.

``handler(event, context)`` accepts:

- **S3 ``ObjectCreated:*`` notifications** (direct invocation; any number of records). Each object
  becomes a ``ScanRequest`` for ``s3://<bucket>/<key>`` (keys arrive URL-encoded and are decoded
  with ``unquote_plus``) whose ``scan_id`` is derived from the key (``scan_id_for_key``) and whose
  metadata names the object. Other event names, folder markers and ``s3:TestEvent`` are ignored;
  bad input is rejected (see below). A transient failure (task store unreachable) is raised after
  the other records are done, so Lambda retries the event.
  A key under a prefix of ``SCANTIDE_PIPELINE_PREFIXES`` starts a run of that pipeline instead
  (the longest matching prefix wins), through the control plane's API when
  ``SCANTIDE_CONTROL_PLANE_URL`` is set.
- **API Gateway proxy events**, REST (v1) and HTTP (v2 payload): the body is a ``ScanRequest``
  JSON; the answer is the HTTP API's (202 created / 200 existing) or its error shape
  ``{"error": {"code", "message"}}`` with the matching status. Authentication is API Gateway's
  (IAM or an authorizer), not ours.
- **SQS batches**: each body is an S3 notification (also wrapped in an SNS envelope) or a
  ``ScanRequest`` JSON. Messages that failed transiently are returned as
  ``{"batchItemFailures": [...]}`` (enable ``ReportBatchItemFailures`` on the event source
  mapping), so only they are redelivered and, past ``maxReceiveCount``, land in the dead-letter
  queue. On a FIFO queue every message after the first such failure is returned too, to keep the
  order.

Bad input (``is_bad_input``: a 4xx error such as malformed JSON, an invalid scan_id or scan_uri,
an unknown algorithm, a scan_id reused for something else) is consumed once from either source and
never retried, since a retry would be refused the same way: it is logged as ``s3_record_rejected``
or ``sqs_record_rejected`` with its ``code`` and ``message``, and counted. Every other failure
(``BackendUnavailable``, previous_scan_not_completed, an unexpected error) is retried: the S3 event
is raised, the SQS message returned.

Every effect is idempotent on ``(algorithm, scan_id)``: a Lambda retry or a redelivered message
returns the existing task and never creates a second one. The settings (``SCANTIDE_*``), the task
backend and the ``Enqueuer`` are built on the first invocation and kept for the life of the
container; importing this module reads no environment and imports neither torch nor OpenCV.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple
from urllib.parse import unquote_plus

from service import logs
from service.backends import open_backend
from service.backends.base import TaskBackend
from service.domain import SCAN_ID_PATTERN, ScanRequest
from service.enqueue import (
    Enqueuer,
    parse_scan_request,
    scan_request_from,
    submission_body,
    submit_item,
)
from service.errors import (
    BackendUnavailable,
    InvalidRequest,
    MalformedJson,
    PayloadTooLarge,
    PreviousScanNotCompleted,
    RateLimited,
    ScantideError,
)
from service.settings import Settings, load_settings, reveal

log = logging.getLogger(__name__)

JSON_HEADERS = {"Content-Type": "application/json"}


# -- clients, built once per container ------------------------------------------------------
@dataclass(frozen=True)
class Runtime:
    settings: Settings
    backend: TaskBackend
    enqueuer: Enqueuer

    def submit(self, request: ScanRequest) -> tuple[dict[str, Any], bool]:
        """Validate and enqueue one request (the one enqueue path, as the HTTP API runs it): the
        answer's body and whether it made something new. A request naming a pipeline starts a run."""
        if request.pipeline is not None:
            return self.start_run(request)
        submission = submit_item(self.backend, self.enqueuer.prepare(request))
        return submission_body(submission), submission.created

    def start_run(self, request: ScanRequest) -> tuple[dict[str, Any], bool]:
        """Start ``request.pipeline`` on the scan. Runs live with the control plane: through its API
        when ``control_plane_url`` is set, else in this state dir's store."""
        if self.settings.control_plane_url:
            return _forward(self.settings, request)
        from service.api.pipelines import run_submission_body
        from service.pipelines.runs import start_run
        from service.pipelines.store import PipelineStore
        from service.pipelines.targets import targets_for

        store = PipelineStore(self.settings.pipelines_db)
        try:
            run, created = start_run(store, targets_for(self.settings, self.backend), request)
        finally:
            store.close()
        return run_submission_body(run, created), created


def _forward(settings: Settings, request: ScanRequest) -> tuple[dict[str, Any], bool]:
    import httpx

    url = f"{str(settings.control_plane_url).rstrip('/')}/v1/scans"
    try:
        reply = httpx.post(url, content=request.model_dump_json(exclude_none=True), timeout=10.0,
                           headers={"Authorization": f"Bearer {reveal(settings.control_plane_token)}",
                                    "Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        raise BackendUnavailable(f"cannot reach the control plane at {url}: {exc}") from None
    if reply.status_code in (200, 202):
        return reply.json(), reply.status_code == 202
    try:
        error = reply.json()["error"]
    except (ValueError, KeyError, TypeError):
        error = {"code": "control_plane_error", "message": reply.text[:300]}
    # Our configuration (token, URL) or a passing outage: retried, and the Lambda's errors alarm. The
    # request itself refused: dropped with the reason, as a retry would be refused again.
    if 400 <= reply.status_code < 500 and reply.status_code not in (401, 403, 404, 408, 429):
        raise InvalidRequest(f"the control plane refused the run: {error.get('message')}",
                             code=str(error.get("code") or "invalid_request"))
    raise BackendUnavailable(f"the control plane answered {reply.status_code}: {error.get('message')}")


def pipeline_for_key(key: str, prefixes: dict[str, str]) -> str | None:
    """The pipeline an uploaded key is routed to: the one of the longest matching prefix, or None."""
    matching = [p for p in prefixes if key.startswith(p)]
    return prefixes[max(matching, key=len)] if matching else None


@cache
def runtime() -> Runtime:
    """Settings, backend and enqueuer: built on the first invocation, then reused by every warm one."""
    settings = load_settings()
    return Runtime(settings, open_backend(settings), Enqueuer.from_settings(settings))


# Refusals of the request that pass with time: retried, never taken for bad input.
_PASSING = (PreviousScanNotCompleted, RateLimited)


def is_bad_input(exc: ScantideError) -> bool:
    """Whether ``exc`` refuses the input itself (a 4xx that every retry would meet again), so the
    record is consumed; anything else is transient, or ours to fix, and retried."""
    return 400 <= exc.status < 500 and not isinstance(exc, _PASSING)


# -- dispatch ---------------------------------------------------------------------------------
def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Lambda entry point; see the module docstring for the events and answers. In Lambda (a
    ``context``) it logs JSON lines at ``SCANTIDE_LOG_LEVEL``; every line of an invocation, and every
    task it submits, carries its request id (``invocation_request_id``)."""
    if context is not None:
        configure_logging()
    with logs.bind(request_id=invocation_request_id(event, context)):
        return dispatch(event)


@cache
def configure_logging() -> None:
    logs.configure_lambda(runtime().settings.log_level)


def invocation_request_id(event: Any, context: Any) -> str:
    """An API Gateway request's ``X-Request-ID`` if sane, else the invocation's ``aws_request_id``."""
    headers = event.get("headers") if isinstance(event, dict) else None
    sent = next((v for k, v in headers.items() if str(k).lower() == "x-request-id" and isinstance(v, str)),
                None) if isinstance(headers, dict) else None
    return logs.request_id_from(sent, getattr(context, "aws_request_id", None))


def dispatch(event: dict[str, Any]) -> dict[str, Any]:
    records = event.get("Records") if isinstance(event, dict) else None
    if isinstance(records, list) and records and isinstance(records[0], dict):
        source = records[0].get("eventSource")
        if source == "aws:sqs":
            return handle_sqs(records)
        if source == "aws:s3":
            return handle_s3(records)
    if isinstance(event, dict) and "requestContext" in event and ("httpMethod" in event or "routeKey" in event):
        return handle_http(event)
    if isinstance(event, dict) and event.get("Event") == "s3:TestEvent":
        log.info("s3_test_event_ignored")
        return {"submitted": 0, "existing": 0, "rejected": 0, "ignored": 1}
    raise InvalidRequest("unrecognised event: expected S3 ObjectCreated, API Gateway or SQS")


# -- S3 -------------------------------------------------------------------------------------------
_SCAN_ID = re.compile(SCAN_ID_PATTERN)
_CLEAN_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]+")
_HASH_CHARS = 12


def scan_id_for_key(key: str) -> str:
    """The scan_id of an uploaded object: its (decoded) key without the file extension, with ``/``
    written as ``:``. ``scans/abc123.mp4`` → ``scans:abc123``.

    Keys with other characters (spaces, ``:``, non-ASCII …) or too long for a scan_id are
    sanitised (runs of disallowed characters become ``-``, cut to 115 characters) and get ``-`` and
    12 hex digits of the SHA-256 of the extension-less key appended, so distinct keys keep distinct
    ids: ``uploads/patient 7/scan (1).mp4`` → ``uploads:patient-7:scan-1-<12 hex>``. The id is a
    pure function of the key, which makes a retried event idempotent. The same key uploaded again
    with other content (another ETag or size; or ``a.mp4`` beside ``a.mov``) maps to the same scan,
    whose task asked for the first: it is refused as ``scan_conflict`` and logged, not analysed
    (upload a changed scan under a new key, or retry the scan with ``POST /v1/scans/{id}/retry``).
    """
    head, _, name = key.rpartition("/")
    if "." in name.lstrip("."):
        name = name.rsplit(".", 1)[0]
    base = f"{head}/{name}" if head else name
    readable = base.replace("/", ":")
    if _CLEAN_KEY.match(base) and _SCAN_ID.match(readable):
        return readable
    digest = hashlib.sha256(base.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    cleaned = _UNSAFE.sub("-", readable).strip("-._:")[:115].rstrip("-._:")
    return f"{cleaned}-{digest}" if cleaned else digest


def scan_request_from_s3(record: dict[str, Any]) -> ScanRequest | None:
    """The request an S3 notification record stands for; None for records that are not uploads."""
    if not isinstance(record, dict):
        raise InvalidRequest(f"malformed S3 record: expected an object, got {type(record).__name__}")
    if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
        return None
    try:
        bucket = record["s3"]["bucket"]["name"]
        obj = record["s3"]["object"]
        key = unquote_plus(obj["key"])
    except (KeyError, TypeError) as exc:
        raise InvalidRequest(f"malformed S3 record: missing {exc}") from None
    if key.endswith("/"):
        return None  # a "folder" placeholder, not a scan
    if "?" in key or "#" in key:
        # An s3:// URI is parsed as a URL on the way to the worker; these would cut the key short.
        raise InvalidRequest(f"S3 keys with '?' or '#' are not supported: {key!r}", code="invalid_scan_uri")
    metadata = {"source": "s3", "bucket": bucket, "key": key, "size": obj.get("size"), "etag": obj.get("eTag")}
    return scan_request_from({"scan_id": scan_id_for_key(key), "scan_uri": f"s3://{bucket}/{key}", "metadata": metadata})


class Refused(NamedTuple):
    """Bad input, consumed: what it was (``ref``, stable across redeliveries) and why."""

    ref: str
    error: ScantideError
    scan_id: str | None = None
    scan_uri: str | None = None


def handle_s3(records: list[dict[str, Any]]) -> dict[str, Any]:
    counts, rejected, retry = submit_s3_records(records)
    for refused in rejected:
        log.warning("s3_record_rejected code=%s message=%s ref=%s", refused.error.code, refused.error.message,
                    refused.ref)
    report_rejections("s3", rejected)
    if retry is not None:
        raise retry
    return counts


def s3_refused(record: Any, error: ScantideError) -> Refused:
    """An S3 record as refused input: its object (and version: another upload of the key is another
    rejection), and the scan it would have been."""
    try:
        bucket, obj = record["s3"]["bucket"]["name"], record["s3"]["object"]
        key = unquote_plus(obj["key"])
    except (KeyError, TypeError):
        return Refused(f"s3-record:{hashlib.sha256(repr(record).encode()).hexdigest()[:24]}", error)
    version = obj.get("eTag") or obj.get("sequencer") or obj.get("size") or ""
    return Refused(f"s3://{bucket}/{key}@{version}", error, scan_id_for_key(key), f"s3://{bucket}/{key}")


def report_rejections(source: str, rejected: list[Refused]) -> None:
    """Tell the control plane (where configured) what was refused, for its ``scan.rejected`` events.
    Best effort: the record is consumed whatever happens, and the log line above stays the record."""
    settings = runtime().settings if rejected else None
    if settings is None or not settings.control_plane_url:
        return
    import httpx

    url = f"{settings.control_plane_url.rstrip('/')}/v1/rejections"
    for refused in rejected:
        body = {"ref": refused.ref[:1200], "source": source, "code": refused.error.code,
                "message": refused.error.message[:2000], "scan_id": refused.scan_id, "scan_uri": refused.scan_uri}
        try:
            reply = httpx.post(url, json=body, timeout=5.0,
                               headers={"Authorization": f"Bearer {reveal(settings.control_plane_token)}"})
            if reply.status_code not in (200, 202):
                log.warning("rejection_not_reported ref=%s status=%d", refused.ref, reply.status_code)
        except httpx.HTTPError as exc:
            log.warning("rejection_not_reported ref=%s error=%s", refused.ref, exc)


def submit_s3_records(records: list[Any]) -> tuple[dict[str, int], list[Refused], Exception | None]:
    """Each S3 record on its own, whether it came directly or in an SQS message: the counts
    (submitted, existing, rejected, ignored), the bad input rejected, and the first transient failure,
    which the caller raises once the other records are done (their redelivery is a no-op)."""
    counts = {"submitted": 0, "existing": 0, "rejected": 0, "ignored": 0}
    rejected: list[Refused] = []
    retry: Exception | None = None
    for record in records:
        try:
            outcome = submit_s3_record(record)
        except Exception as exc:  # noqa: BLE001 - finish the other records, then let Lambda retry
            if isinstance(exc, ScantideError) and is_bad_input(exc):
                counts["rejected"] += 1
                rejected.append(s3_refused(record, exc))
            else:
                log.exception("s3_record_failed")
                retry = retry or exc
            continue
        counts[outcome] += 1
    return counts, rejected, retry


def submit_s3_record(record: dict[str, Any]) -> str:
    """One S3 record: "submitted", "existing" or "ignored"."""
    request = scan_request_from_s3(record)
    if request is None:
        return "ignored"
    rt = runtime()
    pipeline = pipeline_for_key(str((request.metadata or {}).get("key", "")), rt.settings.pipeline_prefixes)
    _, created = rt.submit(request.model_copy(update={"pipeline": pipeline}))
    return "submitted" if created else "existing"


# -- API Gateway --------------------------------------------------------------------------------
def handle_http(event: dict[str, Any]) -> dict[str, Any]:
    method = event.get("httpMethod") or (event.get("requestContext") or {}).get("http", {}).get("method", "")
    if method.upper() != "POST":
        return http_response(405, {"error": {"code": "method_not_allowed", "message": f"{method} is not allowed; "
                                             "POST a scan request"}})
    try:
        rt = runtime()
        body, created = rt.submit(parse_scan_request(http_body(event, rt.settings.max_body_bytes)))
    except ScantideError as exc:
        if exc.status >= 500:
            log.warning("request_failed code=%s message=%s", exc.code, exc.message)
        return http_response(exc.status, {"error": exc.to_dict()})
    except Exception:  # noqa: BLE001 - the caller gets our error shape, the log gets the traceback
        log.exception("unhandled_error")
        return http_response(500, {"error": {"code": "internal_error",
                                             "message": "internal error; the function log has the details"}})
    return http_response(202 if created else 200, body)


def http_body(event: dict[str, Any], max_bytes: int) -> bytes:
    raw = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedJson("request body is not valid base64") from None
    else:
        data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"request body is over {max_bytes} bytes")
    return data


def http_response(status: int, body: dict[str, Any]) -> dict[str, Any]:
    request_id = logs.current("request_id")
    headers = {**JSON_HEADERS, "X-Request-ID": request_id} if request_id else JSON_HEADERS
    return {"statusCode": status, "headers": headers, "body": json.dumps(body), "isBase64Encoded": False}


# -- SQS ------------------------------------------------------------------------------------------
def handle_sqs(records: list[dict[str, Any]]) -> dict[str, Any]:
    failures: list[dict[str, str]] = []
    rejected = 0
    for record in records:
        message_id = str(record.get("messageId", ""))
        if failures and str(record.get("eventSourceARN", "")).endswith(".fifo"):
            failures.append({"itemIdentifier": message_id})  # keep FIFO order: nothing after a failure
            continue
        try:
            bad = handle_sqs_message(record.get("body") or "")
        except ScantideError as exc:  # transient (bad input is returned, not raised): redelivered
            log.warning("sqs_message_failed message_id=%s code=%s message=%s", message_id, exc.code, exc.message)
            failures.append({"itemIdentifier": message_id})
            continue
        except Exception:  # noqa: BLE001 - one message must not fail the batch; ours to fix, so redelivered
            log.exception("sqs_message_failed message_id=%s", message_id)
            failures.append({"itemIdentifier": message_id})
            continue
        # Consumed: a redelivery would be refused the same way, and would only end in the DLQ.
        bad = [r._replace(ref=r.ref or f"sqs:{message_id}") for r in bad]
        for refused in bad:
            log.warning("sqs_record_rejected message_id=%s code=%s message=%s ref=%s", message_id, refused.error.code,
                        refused.error.message, refused.ref)
        report_rejections("sqs", bad)
        rejected += len(bad)
    log.info("sqs_batch_done messages=%d rejected=%d failed=%d", len(records), rejected, len(failures))
    return {"batchItemFailures": failures}


def handle_sqs_message(body: str) -> list[Refused]:
    """One SQS message: an S3 notification (possibly inside an SNS envelope) or a ScanRequest. Returns
    the bad input it held (the whole message, its ``ref`` left empty for the caller's message id, or
    each refused S3 record: the others are submitted); raises on a transient failure, after the
    message's other S3 records are done."""
    try:
        payload = json.loads(body)
    except ValueError:
        return [Refused("", MalformedJson("message body is not valid JSON"))]
    if isinstance(payload, dict) and payload.get("Type") == "Notification" and isinstance(payload.get("Message"), str):
        return handle_sqs_message(payload["Message"])  # S3 → SNS → SQS
    if isinstance(payload, dict) and payload.get("Event") == "s3:TestEvent":
        return []
    if isinstance(payload, dict) and isinstance(payload.get("Records"), list):
        _, rejected, retry = submit_s3_records(payload["Records"])
        if retry is not None:
            raise retry
        return rejected
    try:
        runtime().submit(scan_request_from(payload))
    except ScantideError as exc:
        if is_bad_input(exc):
            scan = payload if isinstance(payload, dict) else {}
            return [Refused("", exc, _text(scan.get("scan_id")), _text(scan.get("scan_uri")))]
        raise
    return []


def _text(value: Any) -> str | None:
    return value[:1000] if isinstance(value, str) else None
