"""The one enqueue use case. The HTTP API, the CLI and the Lambda handler all call ``submit_scan``."""

from __future__ import annotations

import logging

from service.backends.base import TaskBackend
from service.domain import ScanRequest, Submission
from service.scan_uri import Resolver, system_resolver, validate_scan_uri
from service.settings import Settings

log = logging.getLogger(__name__)


def output_uri_for(settings: Settings, algorithm: str, scan_id: str) -> str:
    """Where a task's outputs go: ``<output_root>/<algorithm>/<scan_id>``."""
    root = str(settings.output_root)
    if "://" not in root:
        root = str(settings.output_root.resolve())  # type: ignore[union-attr]
    return f"{root.rstrip('/')}/{algorithm}/{scan_id}"


def submit_scan(
    backend: TaskBackend, settings: Settings, request: ScanRequest, *, resolver: Resolver = system_resolver
) -> Submission:
    """Validate a scan request and enqueue its task; a repeat returns the existing task.

    Raises ``InvalidRequest`` subclasses for bad input and ``BackendUnavailable`` when the task
    store cannot be reached.
    """
    algorithm = request.algorithm or settings.default_algorithm
    scan_uri = validate_scan_uri(
        request.scan_uri, data_root=settings.data_root, allowed_hosts=settings.allowed_scan_hosts,  # type: ignore[arg-type]
        resolver=resolver,
    )
    params = {
        "scan_id": request.scan_id,
        "scan_uri": scan_uri,
        "output_uri": output_uri_for(settings, algorithm, request.scan_id),
        "model_version": None,
        "metadata": request.metadata or {},
    }
    submission = backend.submit(algorithm, request.scan_id, params, params["output_uri"])
    log.info("scan_submitted scan_id=%s algorithm=%s task_id=%s created=%s", request.scan_id, algorithm,
             submission.task.task_id, submission.created)
    return submission
