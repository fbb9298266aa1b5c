"""Typed access to the ClearML objects scantide uses (its project, queues, scan tasks, workers),
shared by the platform side (``clearml``) and the agent side (``clearml_agent``).

Every list is read page by page (``pages``). The server caps a page at its ``max_page_size``
(``services._mongo.max_page_size``, 500 by default, configurable) and the SDK's ``Task.get_tasks``
silently stops there; a server capped below the ``page_size`` asked for answers a short page that
is not the last, so a short page ends a listing only when the next one is empty (or when it is
shorter than an earlier page of the listing, which proves the cap is larger).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from clearml.backend_api.services.v2_23 import events, projects, queues, tasks, workers

from service.backends.clearml_client import ClearMLClient, ClearMLRefused
from service.backends.clearml_tasks import SCAN_TAG, TASK_FIELDS

DRAIN_TYPE = "scantide.drain"
WORKER_TAG = "scantide-worker"
# Server result subcodes (clearml-server apiserver/apierrors/errors.conf)
INVALID_TASK_ID, INVALID_TASK_STATUS, FAILED_CHANGING_STATUS = 101, 110, 121
INVALID_QUEUE_ID, TASK_ALREADY_QUEUED, EXPECTED_UNIQUE = 701, 706, 801
INVALID_WORKER_ID, WORKER_NOT_REGISTERED = 1001, 1004

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 200  # console log events read for a run's tail (cut to TaskError.LOG_TAIL_BYTES)


def refused(exc: Exception, *subcodes: int) -> bool:
    return isinstance(exc, ClearMLRefused) and exc.subcode in subcodes


class ClearMLStore:
    def __init__(self, client: ClearMLClient, project: str, *, page_size: int = 500,
                 project_id: str | None = None) -> None:
        self.client = client
        self.project = project
        self.page_size = page_size
        self._project_id: str | None = project_id  # known already (a task's own project), or looked up by name
        self._queue_ids: dict[str, str] = {}
        self._lock = threading.Lock()

    def send(self, request: Any) -> dict[str, Any]:
        return self.client.send(request)

    # -- project and queues ------------------------------------------------------------------
    def project_id(self, create: bool = False) -> str | None:
        """Our project's id (created on request), or None when it does not exist yet."""
        if self._project_id is None:
            found = self.send(projects.GetAllRequest(name=_exactly(self.project), only_fields=["id", "name"]))
            ids = [p["id"] for p in found.get("projects", []) if p.get("name") == self.project]
            if not ids and create:
                try:
                    ids = [self.send(projects.CreateRequest(name=self.project, description="scantide"))["id"]]
                except ClearMLRefused as exc:  # created by someone else meanwhile
                    if not refused(exc, EXPECTED_UNIQUE):
                        raise
                    return self.project_id()
            self._project_id = ids[0] if ids else None
        return self._project_id

    def queue_id(self, name: str, create: bool = False) -> str | None:
        with self._lock:
            if name in self._queue_ids:
                return self._queue_ids[name]
        found = self.send(queues.GetAllRequest(name=_exactly(name), only_fields=["id", "name"]))
        ids = [q["id"] for q in found.get("queues", []) if q.get("name") == name]
        if not ids and create:
            try:
                ids = [self.send(queues.CreateRequest(name=name))["id"]]
            except ClearMLRefused as exc:
                if not refused(exc, EXPECTED_UNIQUE):
                    raise
                return self.queue_id(name)
        if not ids:
            return None
        with self._lock:
            self._queue_ids[name] = ids[0]
        return ids[0]

    def forget_queue(self, name: str) -> None:
        """Drop a cached id the server no longer knows (the queue was deleted and made again)."""
        with self._lock:
            self._queue_ids.pop(name, None)

    # -- tasks -------------------------------------------------------------------------------
    def iter_tasks(self, **options: Any) -> Iterator[dict]:
        """The rows of ``task_pages``, read lazily."""
        for rows in self.task_pages(**options):
            yield from rows

    def task_pages(self, *, order_by: list[str] | None = None, page_size: int | None = None,
                   only_fields: list[str] | None = None, **filters: Any) -> Iterator[list[dict]]:
        """Scan tasks of our project matching ``filters`` (``tasks.get_all`` fields; ``a__b`` for
        ``a.b``), page after page (``pages``). only_fields: default ``TASK_FIELDS``."""
        pid = self.project_id()
        if pid is None:
            return
        size = min(page_size or self.page_size, self.page_size)  # one size throughout: pages are offsets
        extra = {k.replace("__", "."): v for k, v in filters.items() if "__" in k}  # e.g. execution__queue
        plain = {k: v for k, v in filters.items() if "__" not in k}
        plain.setdefault("tags", [SCAN_TAG])

        def fetch(page: int, page_size: int) -> list[dict]:
            return self.send(tasks.GetAllRequest(
                project=[pid], only_fields=only_fields or TASK_FIELDS, order_by=order_by or ["created"], page=page,
                page_size=page_size, _allow_extra_fields_=bool(extra), **plain, **extra))["tasks"]

        yield from pages(fetch, size)

    def find_tasks(self, *, limit: int | None = None, **filters: Any) -> list[dict]:
        return list(itertools.islice(self.iter_tasks(page_size=limit, **filters), limit))

    def task_doc(self, task_id: str) -> dict | None:
        found = self.find_tasks(id=[task_id], limit=1)
        return found[0] if found else None

    def log_tail(self, task_id: str) -> str:
        """The end of the task's console log (``log`` events, as an agent reports its output); empty
        when it cannot be read (no log is no reason to leave a task as it is)."""
        try:
            found = self.send(events.GetTaskLogRequest(task=task_id, batch_size=LOG_TAIL_LINES,
                                                       navigate_earlier=True, order="asc"))
        except ClearMLRefused as exc:
            log.warning("log_tail_unread task=%s error=%s", task_id, exc.message)
            return ""
        return "\n".join(str(e.get("msg") or "").rstrip("\n") for e in found.get("events") or [])

    # -- workers and drain requests -----------------------------------------------------------
    def worker_docs(self) -> list[dict]:
        # last_seen=0: every registered worker; the server drops one silent past its timeout
        return self.send(workers.GetAllRequest(last_seen=0)).get("workers", [])

    def worker_queue_ids(self, worker_id: str) -> list[str]:
        """The ids of the queues a registered worker serves; [] for one not registered."""
        for doc in self.worker_docs():
            if doc.get("id") == worker_id:
                return [q["id"] for q in doc.get("queues") or [] if q.get("id")]
        return []

    def report_worker(self, worker_id: str, task_id: str | None, queue_ids: list[str]) -> None:
        """``workers.status_report``: keeps the worker registered and names its task."""
        self.send(workers.StatusReportRequest(worker=worker_id, timestamp=int(time.time() * 1000), task=task_id,
                                              queue=queue_ids[0] if task_id and queue_ids else None,
                                              queues=queue_ids or None))

    def drained(self, queue_ids: list[str]) -> set[str]:
        """Workers asked to drain, recorded in the metadata of these queues."""
        if not queue_ids:
            return set()
        found = self.send(queues.GetAllRequest(id=queue_ids, only_fields=["id", "metadata"])).get("queues", [])
        return {m.get("value") for q in found for m in (q.get("metadata") or {}).values()
                if m.get("type") == DRAIN_TYPE}

    def record_drain(self, queue_id: str, worker_id: str) -> None:
        item = {"key": drain_key(worker_id), "type": DRAIN_TYPE, "value": worker_id}
        self.send(queues.AddOrUpdateMetadataRequest(queue=queue_id, metadata=[item]))

    def clear_drain(self, queue_id: str, worker_id: str) -> None:
        self.send(queues.DeleteMetadataRequest(queue=queue_id, keys=[drain_key(worker_id)]))


def pages(fetch: Callable[[int, int], list[dict]], size: int) -> Iterator[list[dict]]:
    """The non-empty pages of an offset-paged listing, ``fetch(page, page_size)``, in order.

    The server serves ``min(page_size, max_page_size)`` rows from offset ``page`` times that, and
    its cap is unknown here: a page shorter than ``size`` may be the last or a capped one. It is the
    last when a page before it was longer (the cap is larger than it); otherwise the next page tells,
    and an empty one ends the listing."""
    longest = 0
    for page in itertools.count():
        rows = fetch(page, size)
        if not rows:
            return
        yield rows
        if len(rows) < size and len(rows) < longest:
            return
        longest = max(longest, len(rows))


def drain_key(worker_id: str) -> str:
    """A metadata key for a worker: worker ids hold dots (host names), which keys must not."""
    return "scantide-drain-" + hashlib.sha256(worker_id.encode()).hexdigest()[:16]


def _exactly(name: str) -> str:
    """Names are regular expressions on the server: this one matches ``name`` only."""
    return f"^{re.escape(name)}$"
