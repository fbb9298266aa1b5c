"""The agent side over ClearML, so ``scantide worker`` can stand in for a ``clearml-agent`` and
the ``TaskBackend`` contract holds for it: workers register and report like agents do, claim by
popping the queue, and record outcomes the way scantide reads them.

- register / heartbeat: ``workers.register`` / ``workers.status_report`` (which also names the
  worker's task, as an agent's report does); the registration lapses ``worker_timeout_s`` after the
  last report, as an agent's does.
- claim: ``queues.peek_task``, then ``queues.get_next_task`` for that task, which pops it only while
  it is still the head (two workers never get the same task; a task that is not scantide's is left
  for a real agent), then runtime properties ``worker``, ``attempt``, ``lease_until``, … and
  ``tasks.started``.
- heartbeat extends ``lease_until`` and records ``progress``; it raises ``LeaseLost`` once the task
  is no longer in progress under this worker.
- finish: the result as output artifact ``scantide-result`` and then ``tasks.completed`` (so a
  completed task always has its result), or the error as runtime property ``error`` and then
  ``tasks.failed`` (``status_reason`` = error code, ``status_message`` = message).
- reap_expired: a task whose worker is lost runs again, as in the embedded mode, until its attempt
  limit (``properties.max_attempts``, else ``max_attempts``); then it fails ``worker_lost``. Lost
  means: a stand-in's lease (``lease_until``) ran out; a real agent's registration lapsed (it was
  silent past its timeout) while the task it last reported is still in progress; or ClearML's
  watchdog stopped the task as non-responsive. Running again is ``tasks.reset`` and ``tasks.enqueue``,
  with ``attempt`` kept; since the reset deletes the run's console log, the log's tail goes into
  the task's ``scantide-history`` first. Best effort: it runs where ``reap_expired`` is called.
- hand_back (a worker leaving for a reason not the task's, a spot interruption): the same reset and
  enqueue, the run kept in ``scantide-history`` as ``stopped`` with the reason, and ``attempt_base``
  one higher, so the attempt limit does not count the run (``requeue_uncounted``; the entry point
  under a stock agent hands its task back the same way).
- drain: ClearML has no drain. A request is recorded in the metadata of the worker's queues
  (``scantide-drain-<hash>``, type ``scantide.drain``); a stand-in worker sees it on its next claim
  or heartbeat, takes no new task and exits. A real ``clearml-agent`` ignores it: the autoscaler
  keeps a draining agent's instance until it reports no task, then terminates it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import Any

from clearml.backend_api.services.v2_23 import queues, tasks, workers

from service.backends.clearml_client import ClearMLRefused
from service.backends.clearml_store import (
    FAILED_CHANGING_STATUS,
    INVALID_QUEUE_ID,
    INVALID_TASK_ID,
    INVALID_TASK_STATUS,
    INVALID_WORKER_ID,
    WORKER_NOT_REGISTERED,
    WORKER_TAG,
    ClearMLStore,
    refused,
)
from service.backends.clearml_tasks import (
    max_attempts_of,
    progress_text,
    result_artifact,
    seconds,
    task_info,
    with_run,
)
from service.domain import TaskError, TaskInfo, iso
from service.errors import LeaseLost

log = logging.getLogger(__name__)

WATCHDOG_STOP = "non-responsive"  # in the status_reason of a task ClearML's watchdog stopped


class ClearMLAgent:
    """The agent-side ``TaskBackend`` methods over a ``ClearMLStore``."""

    def __init__(self, store: ClearMLStore, *, max_attempts: int = 2, worker_timeout_s: int = 600,
                 reap_every_s: float = 5.0) -> None:
        self.store = store
        self.max_attempts = max_attempts
        self.worker_timeout_s = worker_timeout_s
        self.reap_every_s = reap_every_s
        self._queues: dict[str, str] = {}  # worker id → the queue it registered for (this process)
        self._last_reap = 0.0

    # -- workers -----------------------------------------------------------------------------
    def register_worker(self, worker_id: str, queue: str) -> None:
        qid = self.store.queue_id(queue, create=True)
        assert qid is not None
        self.store.send(workers.RegisterRequest(worker=worker_id, timeout=self.worker_timeout_s, queues=[qid],
                                                tags=[WORKER_TAG]))
        self._queues[worker_id] = queue

    def unregister_worker(self, worker_id: str) -> None:
        qids = self._queue_ids(worker_id)
        try:
            self.store.send(workers.UnregisterRequest(worker=worker_id))
        except ClearMLRefused as exc:
            if not refused(exc, WORKER_NOT_REGISTERED):
                raise
        for qid in qids:
            self.store.clear_drain(qid, worker_id)
        self._queues.pop(worker_id, None)

    def _queue_ids(self, worker_id: str) -> list[str]:
        name = self._queues.get(worker_id)
        if name is not None:
            qid = self.store.queue_id(name)
            return [qid] if qid else []
        return self.store.worker_queue_ids(worker_id)  # registered by another process

    def _report(self, worker_id: str, task_id: str | None, qids: list[str], queue: str | None = None) -> None:
        """Report the worker alive (and its task); one never registered, or whose registration lapsed
        or was lost with the server's state, registers (again) for its queue first."""
        try:
            self.store.report_worker(worker_id, task_id, qids)
        except ClearMLRefused as exc:
            queue = self._queues.get(worker_id) or queue
            if not refused(exc, INVALID_WORKER_ID) or queue is None:
                raise
            self.register_worker(worker_id, queue)
            self.store.report_worker(worker_id, task_id, qids or self._queue_ids(worker_id))

    # -- tasks -------------------------------------------------------------------------------
    def claim(self, queue: str, worker_id: str, lease_s: float) -> TaskInfo | None:
        if time.monotonic() - self._last_reap > self.reap_every_s:
            self.reap_expired()
        qid = self.store.queue_id(queue)
        if qid is None or worker_id in self.store.drained([qid]):
            return None
        try:
            head = self.store.send(queues.PeekTaskRequest(queue=qid)).get("task")
        except ClearMLRefused as exc:
            if refused(exc, INVALID_QUEUE_ID):  # the queue was deleted (and maybe made again)
                self.store.forget_queue(queue)
                return None
            raise
        if not head:
            return None
        doc = self.store.task_doc(head)
        if doc is None:  # not a scantide task: it waits for a clearml-agent, a stand-in never drops it
            log.warning("claim_foreign_task queue=%s task=%s", queue, head)
            return None
        # Pop it only if it is still the head: two workers never get the same task.
        entry = self.store.send(queues.GetNextTaskRequest(queue=qid, task=head)).get("entry")
        if not entry:
            return None
        task_id, now = head, time.time()
        runtime = {k: v for k, v in (doc.get("runtime") or {}).items() if k != "error"}
        attempt = int(float(runtime.get("attempt") or 0)) + 1
        runtime.update(worker=worker_id, attempt=str(attempt), lease_until=repr(now + lease_s), heartbeat_at=repr(now),
                       progress=progress_text(0.0), queued_at=repr(seconds(entry.get("added")) or now))
        try:
            self.store.send(tasks.EditRequest(task=task_id, force=True, runtime=runtime))
            self.store.send(tasks.StartedRequest(task=task_id, status_reason="claimed by a scantide worker"))
        except ClearMLRefused as exc:  # stopped or deleted meanwhile
            if refused(exc, INVALID_TASK_ID, INVALID_TASK_STATUS, FAILED_CHANGING_STATUS):
                log.warning("claim_skipped task=%s worker=%s error=%s", task_id, worker_id, exc.message)
                return None
            raise
        self._report(worker_id, task_id, [qid], queue)
        return task_info(self.store.task_doc(task_id) or doc)

    def _held(self, task_id: str, worker_id: str) -> dict:
        doc = self.store.task_doc(task_id)
        if doc is None or doc.get("status") != "in_progress" or (doc.get("runtime") or {}).get("worker") != worker_id:
            raise LeaseLost(f"worker {worker_id} no longer holds task {task_id}")
        return doc

    def heartbeat(self, worker_id: str, task_id: str | None, lease_s: float, progress: float | None = None) -> bool:
        qids, queue = self._queue_ids(worker_id), None
        if task_id is not None:
            doc = self._held(task_id, worker_id)
            now = time.time()
            runtime = {**(doc.get("runtime") or {}), "lease_until": repr(now + lease_s), "heartbeat_at": repr(now)}
            if progress is not None:
                runtime["progress"] = progress_text(progress)
            self.store.send(tasks.EditRequest(task=task_id, force=True, runtime=runtime))
            queue = task_info(doc).queue
        self._report(worker_id, task_id, qids, queue)
        return worker_id in self.store.drained(qids)

    def finish(self, task_id: str, worker_id: str, *, result: dict[str, Any] | None = None,
               error: TaskError | None = None) -> TaskInfo:
        if (result is None) == (error is None):
            raise ValueError("finish() takes exactly one of result or error")
        doc = self._held(task_id, worker_id)
        runtime = dict(doc.get("runtime") or {})
        try:  # the outcome is written before the status changes, so a finished task always shows it
            if result is not None:
                runtime["progress"] = progress_text(1.0)
                self.store.send(tasks.AddOrUpdateArtifactsRequest(task=task_id, artifacts=[
                    result_artifact(result, time.time())], force=True))
                self.store.send(tasks.EditRequest(task=task_id, force=True, runtime=runtime))
                self.store.send(tasks.CompletedRequest(task=task_id, status_reason="completed"))
            else:
                assert error is not None
                runtime["error"] = json.dumps(asdict(error))
                self.store.send(tasks.EditRequest(task=task_id, force=True, runtime=runtime))
                self.store.send(tasks.FailedRequest(task=task_id, status_reason=error.code,
                                                    status_message=error.message))
        except ClearMLRefused as exc:  # the task moved on (stopped, reset, deleted) under us
            if refused(exc, INVALID_TASK_ID, INVALID_TASK_STATUS, FAILED_CHANGING_STATUS):
                raise LeaseLost(f"worker {worker_id} no longer holds task {task_id}; its outcome was not "
                                f"recorded") from exc
            raise
        self._report(worker_id, None, self._queue_ids(worker_id), task_info(doc).queue)
        done = self.store.task_doc(task_id)
        if done is None:
            raise LeaseLost(f"task {task_id} was deleted as it finished")
        return task_info(done)

    def hand_back(self, task_id: str, worker_id: str, reason: TaskError) -> TaskInfo:
        doc = self._held(task_id, worker_id)
        try:
            requeue_uncounted(self.store, doc, reason)
        except ClearMLRefused as exc:  # the task moved on (stopped, reset, deleted) under us
            if refused(exc, INVALID_TASK_ID, INVALID_TASK_STATUS, FAILED_CHANGING_STATUS):
                raise LeaseLost(f"worker {worker_id} no longer holds task {task_id}") from exc
            raise
        qids = self._queue_ids(worker_id)
        for qid in qids:  # the worker is leaving: it takes no new task
            self.store.record_drain(qid, worker_id)
        self._report(worker_id, None, qids, task_info(doc).queue)
        done = self.store.task_doc(task_id)
        if done is None:
            raise LeaseLost(f"task {task_id} was deleted as it was handed back")
        return task_info(done)

    def reap_expired(self) -> list[TaskInfo]:
        """Run again, or fail ``worker_lost``, every task whose worker is lost; the tasks changed."""
        self._last_reap = time.monotonic()
        changed = []
        for doc, why in self._lost():
            try:
                self._expire(doc, why)
            except ClearMLRefused as exc:  # another reaper (or the worker's own finish) got there first
                log.info("reap_skipped task=%s error=%s", doc["id"], exc.message)
                continue
            new = self.store.task_doc(doc["id"])
            if new is not None:
                changed.append(task_info(new))
        return changed

    def _lost(self) -> list[tuple[dict, str]]:
        """Tasks whose worker is lost, and how it was lost."""
        now, lost, agents = time.time(), [], []
        for doc in self.store.find_tasks(status=["in_progress"]):
            runtime = doc.get("runtime") or {}
            if runtime.get("lease_until") not in (None, ""):  # a stand-in's task
                try:
                    if float(runtime["lease_until"]) < now:
                        lost.append((doc, "its lease expired"))
                except (TypeError, ValueError):
                    pass
            elif _reported_this_run(doc):
                agents.append(doc)
        if agents:
            # Workers are read after the tasks and each task again after them: a task still in
            # progress in the same run once its agent is gone was lost, not finished meanwhile.
            live = {w.get("id") for w in self.store.worker_docs()}
            for doc in agents:
                if doc["last_worker"] in live:
                    continue
                again = self.store.task_doc(doc["id"])
                if again is not None and again.get("status") == "in_progress" and all(
                        again.get(k) == doc.get(k) for k in ("started", "last_worker", "last_worker_report")):
                    lost.append((again, f"its agent {doc['last_worker']} stopped reporting"))
        stopped = self.store.find_tasks(status=["stopped"], only_fields=["id", "status_reason"])
        for row in stopped:
            if WATCHDOG_STOP in (row.get("status_reason") or ""):
                doc = self.store.task_doc(row["id"])
                if doc is not None and doc.get("status") == "stopped":
                    lost.append((doc, "ClearML's watchdog stopped it as non-responsive"))
        return lost

    def _expire(self, doc: dict, why: str) -> None:
        info = task_info(doc)
        limit = max_attempts_of(doc) or self.max_attempts
        attempt = max(info.attempt, 1)
        log.warning("worker_lost task=%s worker=%s attempt=%d of=%d why=%r", info.task_id, info.worker_id, attempt,
                    limit, why)
        tail = self.store.log_tail(info.task_id)
        base = int(float((doc.get("runtime") or {}).get("attempt_base") or 0))  # runs before a retry (retry())
        if attempt - base < limit:
            err = TaskError.make("worker_lost", f"the worker running attempt {attempt} was lost ({why}); the task "
                                                f"was queued again", tail)
            keep_run(self.store, info.task_id, attempt, "failed", err)  # first: the reset deletes the run's log
            self.store.send(tasks.ResetRequest(task=info.task_id, force=True, status_reason="worker lost"))
            self.store.send(tasks.EditRequest(task=info.task_id, runtime={"attempt": str(attempt),
                                                                          "attempt_base": str(base)}))
            self.store.send(tasks.EnqueueRequest(task=info.task_id, queue_name=info.queue,
                                                 status_reason=f"re-queued: {why}"))
            return
        err = TaskError.make("worker_lost", f"the worker running this task stopped responding ({why}; attempt "
                                            f"{attempt} of {limit}); the task was not retried again", tail)
        runtime = {**(doc.get("runtime") or {}), "error": json.dumps(asdict(err))}
        runtime.pop("lease_until", None)
        self.store.send(tasks.EditRequest(task=info.task_id, force=True, runtime=runtime))
        self.store.send(tasks.FailedRequest(task=info.task_id, status_reason=err.code, status_message=err.message))


def keep_run(store: ClearMLStore, task_id: str, attempt: int, state: str, error: TaskError) -> None:
    """Add a run that ended (``state``: failed for a lost worker, stopped for a hand-back) to the
    task's ``scantide-history`` (its configuration, which a reset keeps)."""
    found = store.find_tasks(id=[task_id], limit=1, only_fields=["id", "configuration"])
    configuration = found[0].get("configuration") if found else None
    run = {"attempt": attempt, "state": state, "error": asdict(error), "finished_at": iso(time.time())}
    store.send(tasks.EditRequest(task=task_id, force=True, configuration=with_run(configuration, run)))


def requeue_uncounted(store: ClearMLStore, doc: dict, reason: TaskError) -> None:
    """Queue the running task ``doc`` again without counting its run against the attempt limit: the
    run goes to ``scantide-history`` as ``stopped`` with ``reason`` (first: the reset deletes its
    log), then ``tasks.reset``, ``attempt`` kept with ``attempt_base`` one higher, and
    ``tasks.enqueue`` on its queue. A stock clearml-agent running it sees the status change, ends
    the task's process and leaves the status as it is."""
    info = task_info(doc)
    attempt = max(info.attempt, 1)
    base = int(float((doc.get("runtime") or {}).get("attempt_base") or 0))
    log.warning("task_handed_back task=%s worker=%s attempt=%d reason=%s", info.task_id, info.worker_id, attempt,
                reason.code)
    keep_run(store, info.task_id, attempt, "stopped", reason)
    store.send(tasks.ResetRequest(task=info.task_id, force=True, status_reason=reason.code))
    store.send(tasks.EditRequest(task=info.task_id, runtime={"attempt": str(attempt), "attempt_base": str(base + 1)}))
    store.send(tasks.EnqueueRequest(task=info.task_id, queue_name=info.queue,
                                    status_reason=f"re-queued: {reason.code}"))


def _reported_this_run(doc: dict) -> bool:
    """A real agent's task whose agent reported it since it started (a re-queued task keeps the
    previous run's ``last_worker`` until its new agent reports)."""
    started, reported = seconds(doc.get("started")), seconds(doc.get("last_worker_report"))
    return bool(doc.get("last_worker")) and started is not None and reported is not None and reported >= started
