"""ClearML task backend: templates, tasks, queues and workers live on a ClearML server
(production mode, docs/architecture.md#modes). The ``clearml`` SDK does every call
(``clearml_client``); how our objects look there is in ``clearml_tasks``; the agent side, which
lets ``scantide worker`` stand in for a ``clearml-agent``, is ``clearml_agent``.

Submit is idempotent on ``(algorithm, scan_id)`` without a transaction: ClearML has none, and a
task's id is the server's. Tasks tagged ``scan:<scan_id>`` and ``alg:<algorithm>`` are the
candidates. A submit that finds none clones the template (``tasks.clone``, with the scan's
``Args`` and tags), then settles: if no candidate has left ``created`` it enqueues its own clone
(or, having cloned nothing, the oldest candidate: a submit that died between clone and enqueue
leaves one) and lists the candidates again. When two submits raced and both enqueued, the queue
decides: the task taken from the queue already, else the one ahead in it, wins; each submit that
lost deletes its own clone. "Already queued" answers count as success. The first clone ever
enqueued is at the head of the queue among its scan's tasks and in every later listing, so every
submit settles on it: two concurrent submits of one scan end with one task enqueued, and both
return it. This relies on one listing being one snapshot of the scan's tasks, which holds while
they fit in one server page (500 on a default server; more racing submits than that is no real case).
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from dataclasses import replace
from typing import Any

from clearml.backend_api.services.v2_23 import queues, tasks

from service.backends.base import TaskBackend
from service.backends.clearml_agent import ClearMLAgent
from service.backends.clearml_algorithms import ClearMLAlgorithms
from service.backends.clearml_changes import LOOKBACK_S, MAX_SEEN, Window, read_changes
from service.backends.clearml_client import ClearMLClient, ClearMLRefused
from service.backends.clearml_models import ClearMLModels
from service.backends.clearml_store import (
    FAILED_CHANGING_STATUS,
    INVALID_TASK_ID,
    INVALID_TASK_STATUS,
    TASK_ALREADY_QUEUED,
    ClearMLStore,
    refused,
)
from service.backends.clearml_tasks import (
    CANCELLED,
    SCAN_TAG,
    TASK_FIELDS,
    TASK_TYPE,
    TEMPLATE_FIELDS,
    TEMPLATE_PREFIX,
    TEMPLATE_TAG,
    run_history,
    scan_hyperparams,
    scan_tags,
    seconds,
    task_info,
    template_container,
    template_from_doc,
    template_hyperparams,
    template_script,
    with_run,
)
from service.domain import (
    Change,
    ChangePage,
    JobState,
    QueueStats,
    Submission,
    SubmitItem,
    TaskError,
    TaskInfo,
    Template,
    WorkerInfo,
    ended_run,
)
from service.errors import (
    BackendUnavailable,
    ScantideError,
    TaskNotCancellable,
    TaskNotFound,
    TaskNotRetryable,
    UnknownAlgorithm,
)
from service.settings import Settings

log = logging.getLogger(__name__)

# ClearML statuses behind each of our states (completed ones without a result read as failed)
_STATUSES = {
    JobState.queued: ["created", "queued"],
    JobState.running: ["in_progress"],
    JobState.completed: ["completed", "published", "publishing", "closed"],
    JobState.failed: ["failed", "completed", "published", "publishing", "closed"],
    JobState.stopped: ["stopped"],
}


class ClearMLBackend(TaskBackend):
    """``TaskBackend`` over a ClearML server. Safe to share between threads.

    page_size: tasks per ``tasks.get_all`` page (a server whose ``max_page_size`` is lower serves fewer).
    worker_timeout_s: a stand-in worker's registration lapses this long after its last report.
    lookback_s, max_seen: the change feed's lookback window, seconds, and how many changes inside
    it a cursor remembers (``clearml_changes``).
    """

    def __init__(self, client: ClearMLClient, *, project: str = "scantide", max_attempts: int = 2,
                 page_size: int = 500, worker_timeout_s: int = 600, lookback_s: float = LOOKBACK_S,
                 max_seen: int = MAX_SEEN) -> None:
        self.store = ClearMLStore(client, project, page_size=page_size)
        self.lookback_s, self.max_seen = lookback_s, max_seen
        self.agent = ClearMLAgent(self.store, max_attempts=max_attempts, worker_timeout_s=worker_timeout_s)
        self.models = ClearMLModels(self.store)
        self.algorithms = ClearMLAlgorithms(self.store)
        self._idle_since: dict[str, float] = {}  # worker id → when this process first saw it idle
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> ClearMLBackend:
        client = ClearMLClient(timeout_s=settings.clearml_timeout_s, retries=settings.clearml_retries)
        return cls(client, project=settings.clearml_project, max_attempts=settings.max_attempts)

    def close(self) -> None:
        self.store.client.close()

    # -- templates -------------------------------------------------------------------------
    def _template_docs(self, algorithm: str | None = None, **fields: Any) -> list[dict]:
        """Template tasks, oldest first (a racing second registration is ignored)."""
        name = {"name": f"^{re.escape(TEMPLATE_PREFIX + algorithm)}$"} if algorithm else {}
        return self.store.find_tasks(tags=[TEMPLATE_TAG], **name, **fields)

    def register_template(self, template: Template, *, image: str | None = None, repository: str | None = None,
                          commit: str | None = None) -> None:
        """Create or update ``template/<name>`` and make its queue: ``Args``, ``properties`` and the
        ``script`` a stock ``clearml-agent`` runs (``python -m <entry point>``). ``image`` (the
        ``container`` an agent in docker mode runs it in), ``repository`` and ``commit`` (what it
        checks out) are set when given; an update keeps every other script and container field an
        operator set on the task."""
        project = self.store.project_id(create=True)
        self.store.queue_id(template.queue, create=True)
        hyper = template_hyperparams(template)
        existing = self._template_docs(template.name, only_fields=TEMPLATE_FIELDS)
        current = existing[0] if existing else {}
        script = template_script(template, current.get("script"), repository=repository, commit=commit)
        container = template_container(current.get("container"), image=image)
        extra = {"container": container} if container is not None else {}
        if existing:
            self.store.send(tasks.EditRequest(task=current["id"], force=True, hyperparams=hyper, script=script,
                                              **extra))
        else:
            self.store.send(tasks.CreateRequest(name=TEMPLATE_PREFIX + template.name, type=TASK_TYPE, project=project,
                                                tags=[TEMPLATE_TAG], hyperparams=hyper, script=script, **extra))
        log.info("template_registered algorithm=%s queue=%s entry_point=%r image=%s", template.name, template.queue,
                 script["entry_point"], (container or current.get("container") or {}).get("image"))

    def ensure_templates(self, templates: list[Template]) -> None:
        """Register each template that does not exist yet; never overwrites."""
        known = {t.name for t in self.templates()}
        for template in templates:
            if template.name not in known:
                self.register_template(template)

    def _template_doc(self, algorithm: str, version: str | None = None) -> dict:
        """A version's template; without a version, the newest registered version's, else the
        template registered without one (``register_template``)."""
        versioned = self.algorithms.docs(algorithm, version)
        if versioned:
            return versioned[0] if version else versioned[-1]
        found = [] if version else self._template_docs(algorithm)
        if not found:
            known = ", ".join(t.name for t in self.templates()) or "none"
            raise UnknownAlgorithm(f"unknown algorithm {algorithm!r}; registered in ClearML project "
                                   f"{self.store.project!r}: {known} "
                                   "(add one with `scantide clearml register-template`)")
        return found[0]

    def get_template(self, algorithm: str) -> Template:
        return template_from_doc(self._template_doc(algorithm))

    def templates(self) -> list[Template]:
        names = sorted({template_from_doc(doc).name for doc in self._template_docs()})
        return [self.get_template(name) for name in names]

    # -- submit ----------------------------------------------------------------------------
    def submit(self, algorithm: str, scan_id: str, params: dict[str, Any], output_uri: str, *,
               max_attempts: int | None = None, request_id: str | None = None) -> Submission:
        """``max_attempts``: runs before a lost worker fails the task; None: the backend's setting.
        ``request_id``: the request that submitted it, kept for its logs."""
        template_doc = self._template_doc(algorithm, params.get("algorithm_version"))
        queue = template_from_doc(template_doc).queue
        tags = scan_tags(algorithm, scan_id)
        found = self._candidates(tags)
        if found:
            return Submission(task=task_info(self._settle(tags, queue, None, found)), created=False)
        hyperparams = scan_hyperparams(template_doc, scan_id, params, output_uri, max_attempts, request_id)
        mine = self.store.send(tasks.CloneRequest(
            task=template_doc["id"], new_task_name=f"{algorithm}/{scan_id}", new_task_tags=[SCAN_TAG, *tags],
            new_task_hyperparams=hyperparams, new_task_project=self.store.project_id()))["id"]
        winner = self._settle(tags, queue, mine, self._candidates(tags))
        if winner["id"] == mine:
            log.info("task_created task=%s scan_id=%s algorithm=%s", mine, scan_id, algorithm)
        return Submission(task=task_info(winner), created=winner["id"] == mine)

    def submit_many(self, items: list[SubmitItem]) -> list[Submission | ScantideError]:
        out: list[Submission | ScantideError] = []
        for item in items:
            try:
                out.append(self.submit(item.algorithm, item.scan_id, item.params, item.output_uri,
                                       max_attempts=item.max_attempts, request_id=item.request_id))
            except ScantideError as exc:
                out.append(exc)
        return out

    def _candidates(self, tags: list[str]) -> list[dict]:
        """Every task of the scan, oldest first. More than a page of them (only on a server with a
        tiny page cap) is read again until a pass finds nothing new, since a loser deleting its clone
        while we page shifts the later ones back past a page boundary; such a listing is no snapshot,
        so the race is then settled on a best-effort basis."""
        found: dict[str, dict] = {}
        while True:
            listing = list(self.store.task_pages(tags=["__$all", *tags], order_by=["created"]))
            rows = [row for page in listing for row in page]
            new = [r["id"] for r in rows if r["id"] not in found]
            found.update((r["id"], r) for r in rows)
            if len(listing) <= 1 or not new:
                return sorted(found.values(), key=lambda d: (d.get("created", ""), d["id"]))

    def _settle(self, tags: list[str], queue: str, mine: str | None, docs: list[dict]) -> dict:
        """The one task of this scan that stays enqueued; deletes ``mine`` when it is not that one."""
        active = [d for d in docs if d.get("status") != "created"]
        if not active:
            ids = [d["id"] for d in docs]
            target = mine if mine in ids else (ids[0] if ids else None)
            if target is None:
                raise BackendUnavailable("the task just cloned in ClearML is gone; submit again")
            self._enqueue(target, queue)
            docs = self._candidates(tags)
            active = [d for d in docs if d.get("status") != "created"]
            if not active:
                raise BackendUnavailable(f"ClearML did not keep task {target} enqueued; submit again")
        winner = active[0] if len(active) == 1 else self._first_in_line(active, queue)
        if mine is not None and mine != winner["id"]:
            self._discard(mine, docs)
        return winner

    def _enqueue(self, task_id: str, queue: str) -> None:
        try:
            self.store.send(tasks.EnqueueRequest(task=task_id, queue_name=queue, status_reason="scantide submit"))
        except ClearMLRefused as exc:  # enqueued (or deleted) by a racing submit: settled by the caller
            if not refused(exc, TASK_ALREADY_QUEUED, FAILED_CHANGING_STATUS, INVALID_TASK_STATUS, INVALID_TASK_ID):
                raise

    def _first_in_line(self, active: list[dict], queue: str) -> dict:
        """Of several enqueued tasks of one scan: one a worker started already, else the first in the
        queue. A task listed as queued but no longer in the queue ranks last: a worker is taking it
        right now, or (more likely) its submitter lost and deleted it after we listed it."""
        qid = self.store.queue_id(queue)
        entries = self.store.send(queues.GetByIdRequest(queue=qid))["queue"].get("entries", []) if qid else []
        position = {e["task"]: i for i, e in enumerate(entries)}

        def rank(doc: dict) -> tuple:
            if doc.get("status") != "queued":
                return 0, 0, doc.get("created", ""), doc["id"]
            if doc["id"] in position:
                return 1, position[doc["id"]], "", ""
            return 2, 0, doc.get("created", ""), doc["id"]

        return min(active, key=rank)

    def _discard(self, mine: str, docs: list[dict]) -> None:
        status = next((d.get("status") for d in docs if d["id"] == mine), "created")
        if status not in ("created", "queued"):
            log.warning("duplicate_task task=%s status=%s: a worker took it before the race was settled", mine, status)
            return
        try:  # force: a racing submit may have enqueued it since we looked; the winner is ahead of it
            self.store.send(tasks.DeleteRequest(task=mine, force=True))
        except ClearMLRefused as exc:
            log.warning("duplicate_not_deleted task=%s error=%s", mine, exc.message)

    # -- reads -----------------------------------------------------------------------------
    def get_task(self, task_id: str) -> TaskInfo:
        doc = self.store.task_doc(task_id)
        if doc is None:
            raise TaskNotFound(f"no task {task_id!r}")
        return self._with_history(self._agent_failure(task_info(doc)))

    def _agent_failure(self, task: TaskInfo) -> TaskInfo:
        """A task that failed without our entry point's own error (the agent could not start it: its
        environment, a missing module) gets its console log's tail, which says why."""
        if task.state is not JobState.failed or task.error is None or task.error.code != "task_failed" \
                or task.error.log_tail:
            return task
        tail = self.store.log_tail(task.task_id)
        return replace(task, error=TaskError.make("task_failed", task.error.message, tail)) if tail else task

    def _with_history(self, task: TaskInfo) -> TaskInfo:
        """``task`` with its ``scantide-history`` (a configuration item, read only for one task: the
        listings leave the configuration out)."""
        found = self.store.find_tasks(id=[task.task_id], limit=1, only_fields=["id", "configuration"])
        runs = run_history(found[0]) if found else []
        return replace(task, history=runs) if runs else task

    def retry(self, task_id: str) -> TaskInfo:
        """Reset a failed or stopped task and enqueue it again: the ended run goes to its
        ``scantide-history`` first (a reset deletes its log), and the attempt limit counts from here."""
        task = self.get_task(task_id)
        if task.state not in (JobState.failed, JobState.stopped):
            raise TaskNotRetryable(f"task {task_id} is {task.state.value}: only a failed or stopped task runs again")
        found = self.store.find_tasks(id=[task_id], limit=1, only_fields=["id", "configuration"])
        configuration = found[0].get("configuration") if found else None
        self.store.send(tasks.EditRequest(task=task_id, force=True,
                                          configuration=with_run(configuration, ended_run(task))))
        self.store.send(tasks.ResetRequest(task=task_id, force=True, status_reason="retried"))
        self.store.send(tasks.EditRequest(task=task_id, force=True, runtime={
            "attempt": str(task.attempt), "attempt_base": str(task.attempt), "queued_at": str(time.time())}))
        self.store.send(tasks.EnqueueRequest(task=task_id, queue_name=task.queue, status_reason="retried"))
        return self.get_task(task_id)

    def tasks_for_scan(self, scan_id: str) -> list[TaskInfo]:
        return [task_info(d) for d in self.store.find_tasks(tags=[f"scan:{scan_id}"], order_by=["created"])]

    def list_tasks(self, state: JobState | None = None, limit: int = 50) -> list[TaskInfo]:
        statuses = {"status": _STATUSES[state]} if state else {}
        if state not in (JobState.completed, JobState.failed):  # the server's status decides alone
            docs = self.store.find_tasks(limit=limit, order_by=["-created", "-id"], **statuses)
            return [task_info(d) for d in docs]
        matching = (t for t in map(task_info, self.store.iter_tasks(order_by=["-created", "-id"], **statuses))
                    if t.state is state)  # read only as many pages as it takes
        return list(itertools.islice(matching, limit))

    def changes(self, cursor: str | None, limit: int = 500) -> ChangePage:
        """See ``clearml_changes``: a late-stamped change is delivered once, within the lookback."""
        Window.decode(cursor)  # refuse a bad cursor even before the project exists
        pid = self.store.project_id()
        if pid is None:
            return ChangePage(changes=[], cursor=cursor, more=False)

        def fetch(conditions: list[str], page: int, page_size: int) -> list[dict]:
            return self.store.send(tasks.GetAllRequest(
                project=[pid], tags=[SCAN_TAG], status_changed=conditions, order_by=["status_changed", "id"],
                page=page, page_size=page_size, only_fields=TASK_FIELDS))["tasks"]

        found, more = read_changes(fetch, cursor, limit, self.store.page_size, task_info,
                                   lookback_s=self.lookback_s, max_seen=self.max_seen)
        changes = [Change(cursor=after, task_id=info.task_id, state=info.state, attempt=info.attempt,
                          at=seconds(doc["status_changed"]) or 0.0, task=self._agent_failure(info))
                   for doc, info, after in found]
        return ChangePage(changes=changes, cursor=changes[-1].cursor if changes else cursor, more=more)

    def cancel(self, task_id: str) -> TaskInfo:
        """Take a queued task off its queue (``tasks.dequeue``) and mark it stopped. The server never
        refuses a dequeue for the task's status: a worker that pops the task in the instant between
        our read and the dequeue loses it, and its run is stopped as cancelled (the embedded store
        decides in one transaction and has no such window)."""
        task = self.get_task(task_id)
        if task.state is not JobState.queued:
            raise TaskNotCancellable(f"task {task_id} is {task.state.value}: only a queued task can be cancelled")
        try:
            self.store.send(tasks.DequeueRequest(task=task_id, status_reason="cancelled by the submitter"))
            self.store.send(tasks.StoppedRequest(task=task_id, force=True, status_reason=CANCELLED,
                                                 status_message="cancelled by the submitter before a worker took it"))
        except ClearMLRefused as exc:
            if refused(exc, INVALID_TASK_STATUS, FAILED_CHANGING_STATUS):
                state = self.get_task(task_id).state.value
                raise TaskNotCancellable(f"task {task_id} is {state}: only a queued task can be cancelled") from None
            raise
        return self.get_task(task_id)

    # -- queues and workers ----------------------------------------------------------------
    def queue_stats(self, queue: str) -> QueueStats:
        """Pending: the queue's entries; oldest: its first entry's ``added``; running: our tasks in
        progress from it. ``enqueued_total`` is None: only ClearML's Elasticsearch metrics know it."""
        qid = self.store.queue_id(queue)
        if qid is None:
            return QueueStats(queue=queue, pending=0, running=0, oldest_queued_age_s=0.0, enqueued_total=None)
        pending = self.store.send(queues.GetNumEntriesRequest(queue=qid)).get("num", 0)
        head = self.store.send(queues.GetByIdRequest(queue=qid, max_task_entries=1))["queue"].get("entries") or []
        oldest = seconds(head[0].get("added")) if head else None
        running = len(self.store.find_tasks(status=["in_progress"], execution__queue=[qid]))
        return QueueStats(queue=queue, pending=pending, running=running,
                          oldest_queued_age_s=max(0.0, time.time() - oldest) if oldest else 0.0, enqueued_total=None)

    def queues(self) -> list[str]:
        return sorted({t.queue for t in self.templates()})

    def workers(self, queue: str | None = None) -> list[WorkerInfo]:
        """Registered workers (agents and stand-ins). ClearML does not say since when a worker is
        idle: it is the first time this process saw it without a task (an autoscaler restarted
        next to an idle worker waits one idle timeout more before scaling it in)."""
        docs = [d for d in self.store.worker_docs()
                if queue is None or queue in [q.get("name") for q in d.get("queues") or []]]
        drained = self.store.drained(sorted({q["id"] for d in docs for q in d.get("queues") or [] if q.get("id")}))
        now, out = time.time(), []
        with self._lock:
            if queue is None:  # forget workers that are gone
                self._idle_since = {w: t for w, t in self._idle_since.items() if w in {d["id"] for d in docs}}
            for doc in sorted(docs, key=lambda d: d["id"]):
                task_id = (doc.get("task") or {}).get("id")
                idle_since = None if task_id else self._idle_since.setdefault(doc["id"], now)
                if task_id:
                    self._idle_since.pop(doc["id"], None)
                names = [q.get("name") for q in doc.get("queues") or [] if q.get("name")]
                out.append(WorkerInfo(worker_id=doc["id"], queue=queue or (names[0] if names else ""), task_id=task_id,
                                      last_seen=seconds(doc.get("last_activity_time")) or now, idle_since=idle_since,
                                      draining=doc["id"] in drained))
        return out

    def request_drain(self, worker_id: str) -> None:
        for qid in self.store.worker_queue_ids(worker_id):
            self.store.record_drain(qid, worker_id)

    # -- agent side (clearml_agent) --------------------------------------------------------
    def register_worker(self, worker_id: str, queue: str) -> None:
        self.agent.register_worker(worker_id, queue)

    def unregister_worker(self, worker_id: str) -> None:
        self.agent.unregister_worker(worker_id)

    def claim(self, queue: str, worker_id: str, lease_s: float) -> TaskInfo | None:
        return self.agent.claim(queue, worker_id, lease_s)

    def heartbeat(self, worker_id: str, task_id: str | None, lease_s: float, progress: float | None = None) -> bool:
        return self.agent.heartbeat(worker_id, task_id, lease_s, progress)

    def finish(self, task_id: str, worker_id: str, *, result: dict[str, Any] | None = None,
               error: TaskError | None = None) -> TaskInfo:
        return self.agent.finish(task_id, worker_id, result=result, error=error)

    def hand_back(self, task_id: str, worker_id: str, reason: TaskError) -> TaskInfo:
        return self.agent.hand_back(task_id, worker_id, reason)

    def reap_expired(self) -> list[TaskInfo]:
        return self.agent.reap_expired()
