"""The scantide HTTP client: submit scans, follow tasks, register algorithms, upload inputs.

Transient failures (no connection, a timeout, 429, 502/503/504) are retried with capped, jittered
exponential backoff, honouring ``Retry-After``. Retrying every call is safe because every call is
idempotent on the server: enqueue on (algorithm, scan_id), registration on content, uploads are
content-addressed, reads are reads. Any other error raises its typed ``ScantideError`` at once.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from scantide.bundle import pack_folder
from scantide.errors import Conflict, ScantideError, Unavailable, error_from_response

logger = logging.getLogger(__name__)

TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
MAX_BACKOFF_S = 10.0
MAX_RETRY_AFTER_S = 30.0  # a server asking for longer is treated as down: the caller decides


class TaskState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


TERMINAL_STATES = frozenset(s.value for s in (TaskState.COMPLETED, TaskState.FAILED, TaskState.STOPPED))


class Task:
    """A task as the server last described it; ``refresh()`` re-reads it, ``data`` is the raw body."""

    def __init__(self, client: Client, data: dict[str, Any]) -> None:
        self._client = client
        self._update(data)

    def _update(self, data: dict[str, Any]) -> None:
        self.data = data
        self.task_id: str = data["task_id"]
        self.scan_id: str | None = data.get("scan_id")
        self.algorithm: str | None = data.get("algorithm")
        self.state: str = str(data.get("state", ""))
        self.result: dict[str, Any] | None = data.get("result")
        self.error: dict[str, Any] | None = data.get("error")
        self.progress: float | None = data.get("progress")

    @property
    def done(self) -> bool:
        """Whether the task has ended: completed, failed or stopped."""
        return self.state in TERMINAL_STATES

    def refresh(self) -> Task:
        self._update(self._client._get(f"/v1/tasks/{quote(self.task_id, safe='')}"))
        return self

    def wait(self, timeout: float | None = None) -> Task:
        """Poll every ``poll_s`` until the task ends; ``timeout``: seconds, then ``TimeoutError``.
        A failed task is returned, not raised: look at ``state`` and ``error``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {self.task_id} still {self.state} after {timeout} s")
            pause = self._client.poll_s if deadline is None else min(self._client.poll_s,
                                                                      max(deadline - time.monotonic(), 0.0))
            self._client._sleep(pause)
            self.refresh()
        return self

    def outputs(self) -> dict[str, str]:
        """``{relative file name: download link or local path}`` of the task's output files."""
        return dict(self._client._get(f"/v1/tasks/{quote(self.task_id, safe='')}/outputs")["outputs"])

    def __repr__(self) -> str:
        progress = "" if self.progress is None else f" progress={self.progress:.0%}"
        return f"<Task {self.task_id} {self.algorithm}/{self.scan_id} {self.state}{progress}>"


class Client:
    """One connection pool to a scantide server; a context manager, or call ``close()``.

    ``timeout_s``: seconds per HTTP request; ``retries``: extra attempts for a transient failure;
    ``backoff_s``: the first retry's pause in seconds, doubling up to ``MAX_BACKOFF_S``;
    ``poll_s``: seconds between polls of a task (``Task.wait`` and the futures of ``map``);
    ``sleep``: the pause function, a seam for tests.
    """

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 30.0, retries: int = 5,
                 backoff_s: float = 0.2, poll_s: float = 0.2, sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff_s, self.poll_s = max(0, retries), backoff_s, poll_s
        self._sleep = sleep
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s,
                                  headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
        from scantide.futures import (
            Poller,  # here, not at the top: scantide.futures imports this module
        )

        self._poller = Poller(self)  # its thread starts with the first future and ends with the last

    # -- tasks ---------------------------------------------------------------------------------------
    def submit(self, scan_id: str, scan_uri: str, algorithm: str = "video_summary",
               params: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None, *,
               algorithm_version: str | None = None) -> Task:
        """Enqueue ``algorithm`` on one scan; a repeat of (algorithm, scan_id) returns the same task."""
        body: dict[str, Any] = {"scan_id": scan_id, "scan_uri": scan_uri, "algorithm": algorithm}
        for key, value in (("algorithm_version", algorithm_version), ("params", params), ("metadata", metadata)):
            if value is not None:
                body[key] = value
        return Task(self, self._request("POST", "/v1/scans", json=body))

    def task(self, task_id: str) -> Task:
        return Task(self, self._get(f"/v1/tasks/{quote(task_id, safe='')}"))

    def cancel(self, task_id: str) -> bool:
        """Stop a queued task: True when it is stopped as cancelled (by this call or an earlier one),
        False when it already runs or ended otherwise."""
        try:
            self._request("POST", f"/v1/tasks/{quote(task_id, safe='')}/cancel")
        except Conflict as exc:
            if exc.code != "task_not_cancellable":
                raise
            # A retried call whose first try stopped the task is answered 409 too: look.
            task = self.task(task_id)
            return task.state == "stopped" and (task.error or {}).get("code") == "cancelled"
        return True

    def map(self, algorithm: str, scan_uris: Iterable[str], params: dict[str, Any] | None = None, *,
            scan_ids: Iterable[str] | None = None) -> list[Future]:
        """Submit one task per uri; each future's ``result()`` is the task's result dict, or raises
        ``TaskFailed``. Scan ids default to ``map-<8 hex>-<index>``."""
        uris = list(scan_uris)
        if scan_ids is None:
            prefix = f"map-{secrets.token_hex(4)}"
            ids = [f"{prefix}-{i}" for i in range(len(uris))]
        else:
            ids = list(scan_ids)
            if len(ids) != len(uris):
                raise ValueError(f"scan_ids has {len(ids)} ids for {len(uris)} scan_uris: give one id per uri")
        return [self._track(self.submit(sid, uri, algorithm, params), _result_dict) for sid, uri in zip(ids, uris)]

    def _track(self, task: Task, decode: Callable[[dict[str, Any]], Any]) -> Future:
        """A future resolved by this client's poller when ``task`` ends (``decode`` the task body)."""
        return self._poller.track(task.task_id, decode)

    # -- algorithms and inputs -----------------------------------------------------------------------
    def algorithms(self) -> list[dict[str, Any]]:
        return list(self._get("/v1/algorithms")["algorithms"])

    def algorithm(self, name: str) -> dict[str, Any]:
        return self._get(f"/v1/algorithms/{quote(name, safe='')}")

    def register_algorithm(self, folder: str | Path) -> dict[str, Any]:
        """Register the algorithm in ``folder`` (its descriptor at the top): packed as a canonical
        tar.gz, without dot-files, ``__pycache__`` or symbolic links."""
        return self.register_bundle(pack_folder(Path(folder)))

    def register_bundle(self, data: bytes) -> dict[str, Any]:
        """Register an algorithm bundle (tar.gz bytes); the same content again is not an error."""
        return self._request("POST", "/v1/algorithms", files={"bundle": ("bundle.tar.gz", data, "application/gzip")})

    def upload(self, data: bytes) -> str:
        """Store ``data`` on the server; the uri returned can be a ``scan_uri``."""
        return str(self._request("POST", "/v1/blobs", content=data,
                                 headers={"Content-Type": "application/octet-stream"})["uri"])

    # -- plumbing ------------------------------------------------------------------------------------
    def close(self) -> None:
        self._poller.close()
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str) -> dict[str, Any]:
        return self._request("GET", path)

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One call, retried while it fails transiently; the decoded JSON body."""
        for attempt in range(self.retries + 1):
            retry_after = None
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TimeoutException as exc:
                error: ScantideError = Unavailable(f"{method} {path} timed out: {exc}", code="timeout", status=None)
            except httpx.TransportError as exc:
                error = Unavailable(f"cannot reach {self.base_url}: {exc}", code="connection_failed", status=None)
            else:
                if response.status_code < 400:
                    return _json_body(response, method, path)
                error = error_from_response(response.status_code, _json_or_none(response), response.text)
                if response.status_code not in TRANSIENT_STATUSES:
                    raise error
                retry_after = _retry_after_s(response)
            if attempt == self.retries:
                break
            pause = self._backoff_s(attempt, retry_after)
            logger.info("retry method=%s path=%s attempt=%d code=%s pause_s=%.2f", method, path, attempt + 1,
                        error.code, pause)
            self._sleep(pause)
        raise Unavailable(f"{method} {path} failed after {self.retries + 1} attempts: {error.message}",
                          code=error.code, status=error.status)

    def _backoff_s(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_S)
        ceiling = min(self.backoff_s * 2 ** attempt, MAX_BACKOFF_S)
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # jitter: clients that failed together spread out


def _result_dict(data: dict[str, Any]) -> dict[str, Any]:
    return dict(data.get("result") or {})


def _json_body(response: httpx.Response, method: str, path: str) -> dict[str, Any]:
    body = _json_or_none(response) if response.content else {}
    if not isinstance(body, dict):  # a proxy's page, or not a scantide server at all
        raise ScantideError(f"{method} {path}: HTTP {response.status_code} without a JSON object: "
                            f"{response.text[:200]!r}", code="invalid_response", status=response.status_code)
    return body


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _retry_after_s(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds; the HTTP-date form is rare enough to fall back on backoff."""
    try:
        value = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value if value >= 0 else None
