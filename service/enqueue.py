"""The one enqueue use case. The HTTP API, the CLI and the Lambda handler all go through here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from service.backends.base import TaskBackend
from service.domain import ScanRequest, Submission, SubmitItem
from service.scan_uri import Resolver, system_resolver, validate_scan_uri
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Enqueuer:
    """Turns scan requests into submit items. Built once per process: roots are resolved here, not
    per request."""

    default_algorithm: str
    data_root: Path  # resolved
    output_root: str  # resolved local path, or a URL prefix such as s3://bucket/outputs
    allowed_hosts: tuple[str, ...] = ()
    resolver: Resolver = system_resolver

    @classmethod
    def from_settings(cls, settings: Settings, resolver: Resolver = system_resolver) -> Enqueuer:
        out = str(settings.output_root)
        if "://" not in out:
            out = str(Path(out).resolve())
        return cls(default_algorithm=settings.default_algorithm, data_root=Path(settings.data_root).resolve(),
                   output_root=out.rstrip("/"), allowed_hosts=tuple(settings.allowed_scan_hosts), resolver=resolver)

    def output_uri(self, algorithm: str, scan_id: str) -> str:
        """Where a task's outputs go: ``<output_root>/<algorithm>/<scan_id>``."""
        return f"{self.output_root}/{algorithm}/{scan_id}"

    def prepare(self, request: ScanRequest) -> SubmitItem:
        """Validate a request; raises ``InvalidRequest`` subclasses for bad input."""
        algorithm = request.algorithm or self.default_algorithm
        scan_uri = validate_scan_uri(request.scan_uri, data_root=self.data_root, allowed_hosts=self.allowed_hosts,
                                     resolver=self.resolver)
        output_uri = self.output_uri(algorithm, request.scan_id)
        params = {
            "scan_id": request.scan_id,
            "scan_uri": scan_uri,
            "output_uri": output_uri,
            "model_version": None,
            "metadata": request.metadata or {},
        }
        return SubmitItem(algorithm=algorithm, scan_id=request.scan_id, params=params, output_uri=output_uri)


def log_submission(submission: Submission) -> None:
    task = submission.task
    log.info("scan_submitted scan_id=%s algorithm=%s task_id=%s created=%s", task.scan_id, task.algorithm,
             task.task_id, submission.created)


def submit_scan(
    backend: TaskBackend, settings: Settings, request: ScanRequest, *, resolver: Resolver = system_resolver
) -> Submission:
    """Validate a scan request and enqueue its task; a repeat returns the existing task.

    Raises ``InvalidRequest`` subclasses for bad input and ``BackendUnavailable`` when the task
    store cannot be reached.
    """
    item = Enqueuer.from_settings(settings, resolver).prepare(request)
    submission = backend.submit(item.algorithm, item.scan_id, item.params, item.output_uri)
    log_submission(submission)
    return submission
