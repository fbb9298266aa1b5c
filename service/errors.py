"""One error tree. Every error carries a stable ``code`` that the API and webhooks expose.

Connection failures (``BackendUnavailable``) stay apart from not-found and bad-input errors so
callers can retry the first and never the others.
"""

from __future__ import annotations


class ScantideError(Exception):
    """Root of every error scantide raises on purpose.

    ``code`` is stable (clients branch on it); ``message`` is for a person and says what to do.
    ``status`` is the HTTP status the API answers with.
    """

    code = "internal_error"
    status = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InvalidRequest(ScantideError):
    """The caller sent something we will never accept as it is."""

    code = "invalid_request"
    status = 422


class MalformedRequest(InvalidRequest):
    """A body that cannot be read as its content type says (FastAPI's and Starlette's parsers refused it)."""

    code = "malformed_request"
    status = 400


class MalformedJson(MalformedRequest):
    code = "malformed_json"


class InvalidScanUri(InvalidRequest):
    code = "invalid_scan_uri"


class ScanMissing(InvalidScanUri):
    """A local scan path under the data root with no file there."""

    code = "scan_missing"


class ForbiddenScanUri(InvalidRequest):
    """A URI that points at a place we refuse to fetch from (loopback, private, metadata)."""

    code = "forbidden_scan_uri"


class UnknownAlgorithm(InvalidRequest):
    code = "unknown_algorithm"


class NotFound(ScantideError):
    code = "not_found"
    status = 404


class TaskNotFound(NotFound):
    code = "task_not_found"


class ScanNotFound(NotFound):
    code = "scan_not_found"


class AuthError(ScantideError):
    code = "unauthorized"
    status = 401


class InvalidToken(AuthError):
    code = "invalid_token"


class Forbidden(AuthError):
    code = "forbidden"
    status = 403


class PayloadTooLarge(InvalidRequest):
    code = "payload_too_large"
    status = 413


class RequestHeaderTooLarge(InvalidRequest):
    """A request line and headers over the server's limit (answered by the HTTP protocol, before routing)."""

    code = "request_header_too_large"
    status = 431


class Conflict(ScantideError):
    code = "conflict"
    status = 409


class LeaseLost(Conflict):
    """The worker no longer holds the task: its lease expired and the task moved on."""

    code = "lease_lost"


class BackendUnavailable(ScantideError):
    """The task store cannot be reached right now; retry later."""

    code = "backend_unavailable"
    status = 503


class ConfigError(ScantideError):
    code = "config_error"
    status = 500


class NotSupported(ScantideError):
    """The configured task store cannot do this."""

    code = "not_supported"
    status = 500


class ClearMLRefused(ScantideError):
    """The ClearML server refused a call (a 4xx answer other than "not authorized")."""

    code = "clearml_refused"
    status = 502

    def __init__(self, endpoint: str, result_code: int, subcode: int, message: str) -> None:
        super().__init__(f"ClearML refused {endpoint}: {result_code}/{subcode} {message}")
        self.endpoint, self.result_code, self.subcode = endpoint, result_code, subcode


class MetadataUnavailable(ScantideError):
    """The EC2 instance metadata service did not answer, or answered something unreadable."""

    code = "metadata_unavailable"
    status = 503


def invalid_input(errors: list[dict]) -> InvalidRequest:
    """The error for input that failed pydantic validation (``ValidationError.errors()``):
    ``MalformedJson`` when it was not JSON at all, else ``InvalidRequest`` naming up to five fields
    (the ``body`` prefix FastAPI adds is dropped)."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return MalformedJson("request body is not valid JSON")
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    return InvalidRequest(f"invalid request: {'; '.join(parts)}")


# -- model registry and treatment tracking ---------------------------------------------------------
class ModelVersionNotFound(NotFound):
    code = "model_version_not_found"


class ModelVersionExists(Conflict):
    """A registered version names one file forever; other content needs a new version."""

    code = "model_version_exists"


class NothingToRollBack(Conflict):
    code = "nothing_to_roll_back"


class InvalidModelFile(InvalidRequest):
    """A model file that is missing or does not load: refused at registration, not at job time."""

    code = "invalid_model"


class PreviousScanNotFound(InvalidRequest):
    code = "previous_scan_not_found"


class PreviousScanNotCompleted(Conflict):
    """The earlier scan has no result to compare with yet; submit again once it has completed."""

    code = "previous_scan_not_completed"


# -- algorithm registry (bring your own algorithm) ---------------------------------------------------
class InvalidDescriptor(InvalidRequest):
    """An algorithm descriptor that cannot be registered; ``errors`` names each problem by field path."""

    code = "invalid_descriptor"
    what = "algorithm descriptor"

    def __init__(self, errors: list[str], source: str = "") -> None:
        self.errors = list(errors)
        where = f" {source}" if source else ""
        super().__init__(f"invalid {self.what}{where}: " + "; ".join(self.errors))


class InvalidPipeline(InvalidDescriptor):
    """A pipeline descriptor that cannot be registered; ``errors`` names each problem by field path."""

    code = "invalid_pipeline"
    what = "pipeline descriptor"


class InvalidParams(InvalidRequest):
    """Task parameters the algorithm's descriptor refuses (the message names the field path)."""

    code = "invalid_params"


class InvalidBundle(InvalidRequest):
    """An uploaded algorithm folder that is not a readable tar.gz holding one descriptor."""

    code = "invalid_bundle"


class AlgorithmNotFound(NotFound):
    code = "algorithm_not_found"


class AlgorithmVersionExists(Conflict):
    """A registered algorithm version names one content forever; other content needs a new version."""

    code = "algorithm_version_exists"


class RunnerUnavailable(InvalidRequest):
    """The deployment cannot run this kind of algorithm (a container one without docker or podman)."""

    code = "runner_unavailable"


class TaskNotCancellable(Conflict):
    """Only a queued task can be cancelled; a running or finished one is left as it is."""

    code = "task_not_cancellable"


class UnknownPipeline(InvalidRequest):
    code = "unknown_pipeline"


class PipelineNotFound(NotFound):
    code = "pipeline_not_found"


class PipelineVersionExists(Conflict):
    """The same name and version registered with another descriptor: versions are immutable."""

    code = "pipeline_version_exists"


class RunNotFound(NotFound):
    code = "run_not_found"


class RunNotRetryable(Conflict):
    """Only a failed run can be retried."""

    code = "run_not_retryable"


class UnsupportedMediaType(InvalidRequest):
    status = 415
    code = "unsupported_media_type"


class StateDirLocked(Conflict):
    """Another ``scantide up`` runs on this state dir."""

    code = "state_dir_locked"


class TaskNotRetryable(Conflict):
    """Only a failed or stopped task can be run again."""

    code = "task_not_retryable"


class ScanNotRetryable(Conflict):
    """A retry of a scan none of whose tasks failed."""

    code = "scan_not_retryable"


class ScanConflict(Conflict):
    """A repeat of a scan_id whose scan_uri, params or metadata differ from what was submitted."""

    code = "scan_conflict"


class RateLimited(ScantideError):
    """The token sent more requests than ``api_rate_limit_per_s`` allows; the answer's ``Retry-After``
    says when to try again. Transient: clients retry it."""

    code = "rate_limited"
    status = 429
