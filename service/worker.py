"""``scantide worker``: the embedded agent. Claims tasks from one queue and runs them, ``slots`` at once.

Each slot is a thread with its own worker registration (the worker id, or ``<id>:<k>`` for slot
k when there are several) and, for ``python`` and ``python-function`` algorithms, its own warm
executor (``algorithms.runners.warm``): one long-lived process, with the algorithm's imports and
model loaded, serving task after task of one version. The slot fetches the inputs, stages them and
stores the outputs itself (``algorithms.entry.run_task``); only the algorithm runs in the
executor, with none of the worker's credentials. Other algorithms (commands, containers) and
tasks of templates with an entry point of their own run as ``python -m <entry point> --spec
<file>``, a process per task, as before (and every task does with ``SCANTIDE_WORKER_WARM=false``).

Every run has a hard timeout, while the slot renews the task's lease. An idle slot waits for the
store's ``queue`` doorbell (``service.doorbell``), or its poll interval. SIGTERM (or SIGINT)
drains: running tasks finish and no new one is taken. A second signal aborts them; their leases
then run out and the backend re-queues them.

On a spot instance (``SCANTIDE_SPOT_NOTICE_URL`` set: ``service.spot``) the worker polls the
instance's interruption notice. On a notice it drains and stops its running tasks at once, and
hands each back to its queue (``TaskBackend.hand_back``, reason ``spot_interruption``) without
counting the run as an attempt: the instance goes in two minutes, through no fault of the task.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from algorithms.entry import run_task
from algorithms.errors import EntryError
from algorithms.runners import PACKAGE_ROOT
from algorithms.runners.warm import TaskExecutor, WarmExecutor
from algorithms.task_files import Inputs
from service import logs
from service.algorithms import ENTRY_POINT, pin_unversioned, unregistered
from service.backends.base import TaskBackend
from service.domain import TaskError, TaskInfo
from service.doorbell import QUEUE, Listener
from service.errors import BackendUnavailable, LeaseLost, ScantideError
from service.processes import SUPERVISOR_ENV, die_with_parent, stop_session, supervisor_alive
from service.settings import ENV_PREFIX, METRICS_DIR_ENV, SECRET_FIELDS, Settings
from service.spot import INTERRUPTION_CODE, Notice, watch
from service.worker_metrics import SLOTS, SLOTS_BUSY, WORKER_TASKS

log = logging.getLogger(__name__)

TICK_S = 0.2  # how often a running task's watch checks its time, the stop and the heartbeat, seconds
KILL_GRACE_S = 5.0  # a stopped task's time to stop its algorithm (and container) itself
WARM_RUNNERS = frozenset({"python", "python-function"})
# What the task process has no use for: every secret (the API's tokens, the webhook's, the control
# plane's) and the webhook URL (which without its secret would not even load as settings).
WITHHELD_ENV = frozenset({*(f"{ENV_PREFIX}{name.upper()}" for name in SECRET_FIELDS), f"{ENV_PREFIX}WEBHOOK_URL"})
WITHHELD_ENV |= {METRICS_DIR_ENV}  # nor our metrics directory: series it wrote there would be served as ours


@dataclass
class Outcome:
    result: dict[str, Any] | None = None
    error: TaskError | None = None
    lost: bool = False  # the lease moved on: record nothing
    handed_back: TaskError | None = None  # stopped for a reason not the task's: queue it again, uncounted


@dataclass
class Slot:
    """One task at a time: its registration, its idle wait and its warm executor."""

    worker_id: str
    listener: Listener
    executor: WarmExecutor


class Worker:
    def __init__(self, backend: TaskBackend, settings: Settings, queue: str, worker_id: str | None = None,
                 slots: int | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.queue = queue
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.slots = slots or settings.worker_slots
        self.draining = False
        self.interruption: Notice | None = None  # the spot interruption notice, once read
        self._aborted = False
        self.log_dir = settings.state_dir / "logs"
        self._slots: list[Slot] = []
        self._tickets: int | None = None  # tasks still to take, with max_tasks
        self._lock = threading.Lock()
        self.done = 0

    def slot_ids(self) -> list[str]:
        """The registrations: the worker id itself with one slot, ``<id>:<k>`` with several."""
        return [self.worker_id] if self.slots == 1 else [f"{self.worker_id}:{k}" for k in range(self.slots)]

    # -- signals ---------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.draining:
            log.warning("worker_abort worker=%s signal=%s", self.worker_id, signum)
            self._aborted = True
        else:
            log.info("worker_drain worker=%s signal=%s", self.worker_id, signum)
            self.drain()

    def drain(self) -> None:
        self.draining = True
        for slot in self._slots:
            slot.listener.wake()

    def _on_interruption(self, notice: Notice) -> None:
        """From the spot watch's thread: drain, and make every running task's watch stop it."""
        log.warning("worker_interrupted worker=%s action=%s at=%s", self.worker_id, notice.action, notice.time)
        self.interruption = notice
        self.drain()

    # -- main loop -------------------------------------------------------------------------
    def run(self, max_tasks: int | None = None) -> int:
        """Claim and run tasks until drained (or ``max_tasks`` done). Returns the exit status."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._tickets = max_tasks
        for worker_id in self.slot_ids():
            self.backend.register_worker(worker_id, self.queue)
            self._slots.append(Slot(worker_id, self.backend.listener(QUEUE), WarmExecutor(
                PACKAGE_ROOT, max_tasks=self.settings.executor_max_tasks,
                max_rss_bytes=self.settings.executor_max_rss_mib * 2**20)))
        log.info("worker_started worker=%s queue=%s slots=%d warm=%s", self.worker_id, self.queue, self.slots,
                 self.settings.worker_warm)
        SLOTS.set(self.slots)
        threads = [threading.Thread(target=self._serve, args=(slot,), name=f"slot-{k}", daemon=True)
                   for k, slot in enumerate(self._slots)]
        spot = watch(self.settings.spot_notice_url, self.settings.spot_notice_poll_s, self._on_interruption)
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():  # short joins: signals reach this (main) thread in between
                thread.join(timeout=0.5)
        if spot is not None:
            spot.stop()
        log.info("worker_stopped worker=%s tasks=%d", self.worker_id, self.done)
        return 0

    def _serve(self, slot: Slot) -> None:
        """One slot's loop. Its executors are started from this thread, which lives as long as the
        slot: their death signal is tied to the thread that started them."""
        try:
            self._prewarm(slot)
            while not self.draining and self._take_ticket():
                if not supervisor_alive(os.environ.get(SUPERVISOR_ENV)):
                    log.warning("worker_orphaned worker=%s: the scantide up it ran under is gone; stopping",
                                self.worker_id)
                    self.drain()
                    break
                try:
                    task = self.backend.claim(self.queue, slot.worker_id, self.settings.lease_s)
                    if task is None and self.backend.heartbeat(slot.worker_id, None, self.settings.lease_s):
                        self.drain()
                except BackendUnavailable as exc:
                    self._return_ticket()
                    log.warning("claim_failed worker=%s error=%s", slot.worker_id, exc.message)
                    slot.listener.wait(min(5.0, self.settings.worker_poll_s * 4))
                    continue
                if task is None:
                    self._return_ticket()
                    slot.listener.wait(self.settings.worker_poll_s)
                    continue
                with SLOTS_BUSY.track_inprogress():
                    self.execute(task, slot)
                with self._lock:
                    self.done += 1
        finally:
            slot.executor.close()
            slot.listener.close()
            try:
                self.backend.unregister_worker(slot.worker_id)
            except ScantideError as exc:
                log.warning("unregister_failed worker=%s error=%s", slot.worker_id, exc.message)

    def _prewarm(self, slot: Slot) -> None:
        """Start the slot's executor for the newest version of the default algorithm before any task
        comes (torch imports while the worker is idle anyway). Best effort: a task that finds no
        executor for its version starts one."""
        if not self.settings.worker_warm:
            return
        try:
            version = self.backend.latest_algorithm(self.settings.default_algorithm)
            if version is None or version.spec.runner not in WARM_RUNNERS:
                return
            with tempfile.TemporaryDirectory(prefix="scantide-prewarm-") as tmp:
                here = Inputs(Path(tmp), self.settings).bundle(version.uri, version.sha256,
                                                               self.settings.state_dir / "bundles")
                slot.executor.prepare(version.spec, here)
        except Exception as exc:  # noqa: BLE001 - the first task does it instead
            log.warning("prewarm_skipped worker=%s error=%s", slot.worker_id, exc)

    def _take_ticket(self) -> bool:
        with self._lock:
            if self._tickets is None:
                return True
            if self._tickets <= 0:
                return False
            self._tickets -= 1
            return True

    def _return_ticket(self) -> None:
        with self._lock:
            if self._tickets is not None:
                self._tickets += 1

    def execute(self, task: TaskInfo, slot: Slot) -> None:
        """Run one claimed task to its end and record the outcome; every line logged meanwhile carries
        the task's ids and the id of the request that submitted it."""
        with logs.bind(task_id=task.task_id, scan_id=task.scan_id, request_id=task.request_id):
            self._execute(task, slot)

    def _execute(self, task: TaskInfo, slot: Slot) -> None:
        log.info("task_started worker=%s task=%s scan=%s attempt=%d", slot.worker_id, task.task_id, task.scan_id,
                 task.attempt)
        outcome = self._run(task, slot)
        if outcome.lost:
            log.warning("task_lease_lost worker=%s task=%s", slot.worker_id, task.task_id)
            WORKER_TASKS.labels(task.algorithm, "lost").inc()
            return
        if outcome.handed_back is not None:
            reason = outcome.handed_back
            if self._record(task, slot, lambda: self.backend.hand_back(task.task_id, slot.worker_id, reason)):
                log.warning("task_handed_back worker=%s task=%s reason=%s", slot.worker_id, task.task_id, reason.code)
            return
        finished = self._record(task, slot, lambda: self.backend.finish(task.task_id, slot.worker_id,
                                                                        result=outcome.result, error=outcome.error))
        if finished is not None:
            WORKER_TASKS.labels(task.algorithm, finished.state.value).inc()
            log.info("task_finished worker=%s task=%s state=%s%s", slot.worker_id, task.task_id,
                     finished.state.value, f" code={outcome.error.code}" if outcome.error else "")

    def _record(self, task: TaskInfo, slot: Slot, call: Callable[[], TaskInfo]) -> TaskInfo | None:
        """``call()`` (finish or hand back), retried while the store is unreachable: the outcome is worth
        it, and until the lease would run out an outage only delays it. None when it was not recorded."""
        deadline = time.monotonic() + self.settings.lease_s
        while True:
            try:
                return call()
            except LeaseLost:
                log.warning("task_lease_lost worker=%s task=%s", slot.worker_id, task.task_id)
                return None
            except BackendUnavailable as exc:
                if time.monotonic() > deadline:
                    log.error("record_failed worker=%s task=%s error=%s", slot.worker_id, task.task_id, exc.message)
                    return None
                log.warning("record_retry worker=%s task=%s error=%s", slot.worker_id, task.task_id, exc.message)
                time.sleep(1.0)

    # -- one task --------------------------------------------------------------------------
    def _run(self, task: TaskInfo, slot: Slot) -> Outcome:
        template = self.backend.get_template(task.algorithm)
        max_runtime_s = template.max_runtime_s
        warm = False
        if template.entry_point == ENTRY_POINT:  # it runs registered bundles: only the registered one
            task = pin_unversioned(self.backend.algorithms, task)
            refusal = unregistered(self.backend.algorithms, task)
            if refusal:
                return Outcome(error=TaskError.make("unregistered_algorithm", refusal))
            version = self.backend.algorithm_version(task.algorithm, str(task.params["algorithm_version"]))
            max_runtime_s = version.spec.resources.timeout_s if version else max_runtime_s
            warm = bool(version and version.spec.runner in WARM_RUNNERS and self.settings.worker_warm)
        work = self.log_dir / f"{task.task_id}-{task.attempt}"
        work.mkdir(parents=True, exist_ok=True)
        result_path, progress_path, log_path = work / "result.json", work / "progress", work / "task.log"
        spec = {"task_id": task.task_id, "algorithm": task.algorithm, "params": task.params,
                "output_uri": task.output_uri, "result_path": str(result_path), "progress_path": str(progress_path),
                "bundle_cache": str(self.settings.state_dir / "bundles"),
                "input_cache": str(self.settings.input_cache_dir)}
        timeout_s = min(max_runtime_s, self.settings.task_timeout_s)
        if warm:
            run, stop, progress = self._in_slot(spec, TaskExecutor(slot.executor, log_path))
        else:
            run, stop, progress = self._in_process(template.entry_point, spec, work / "spec.json", log_path)
        outcome, verdict = self._watch(task, slot, timeout_s, run, stop, progress)
        if verdict == "lost":
            return Outcome(lost=True)
        if verdict == "timeout":
            return Outcome(error=TaskError.make("timeout", f"the algorithm ran past its {timeout_s:.0f} s limit",
                                                _tail(log_path)))
        if verdict == "interrupted":
            assert self.interruption is not None
            return Outcome(handed_back=TaskError.make(
                INTERRUPTION_CODE, f"{self.interruption.describe()}: the run was stopped and the task queued again, "
                                   "not counted as an attempt", _tail(log_path)))
        if verdict == "aborted":
            return Outcome(error=TaskError.make("aborted", "the worker was stopped while the task ran",
                                                _tail(log_path)))
        return outcome

    def _in_slot(self, spec: dict[str, Any], executor: TaskExecutor) -> tuple[
            Callable[[], Outcome], Callable[[], None], Callable[[], float | None]]:
        """The task run by this thread, its algorithm in the slot's warm executor."""
        latest: list[float] = []

        def run() -> Outcome:
            try:
                result = run_task(spec, self.settings, lambda fraction: latest.append(fraction), executor)
            except EntryError as exc:
                return Outcome(error=TaskError.make(exc.code, exc.message, exc.log_tail))
            except Exception as exc:  # noqa: BLE001 - a bug of ours must fail the task, not the slot
                log.exception("task_crashed task=%s", spec["task_id"])
                return Outcome(error=TaskError.make("algorithm_crashed", f"{type(exc).__name__}: {exc}",
                                                    traceback.format_exc()))
            return Outcome(result=result)

        return run, executor.cancel, lambda: latest[-1] if latest else None

    def _in_process(self, entry_point: str, spec: dict[str, Any], spec_path: Path, log_path: Path) -> tuple[
            Callable[[], Outcome], Callable[[], None], Callable[[], float | None]]:
        """The task run as ``python -m <entry point> --spec <file>`` in a session of its own."""
        spec_path.write_text(json.dumps(spec))
        result_path, progress_path = Path(spec["result_path"]), Path(spec["progress_path"])
        started: list[subprocess.Popen] = []
        stopping = threading.Event()

        def run() -> Outcome:
            with open(log_path, "wb") as log_file:
                child = subprocess.Popen(
                    [sys.executable, "-m", entry_point, "--spec", str(spec_path)],
                    stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=task_env(),
                    start_new_session=True,  # a Ctrl-C to the worker's group must not kill the task: we drain
                    preexec_fn=die_with_parent(),  # …but a worker killed outright must not leave it running
                )
                started.append(child)
                if stopping.is_set():  # stopped while it started
                    stop_session(child, KILL_GRACE_S)
                child.wait()
            return _read_outcome(result_path, child.returncode, _tail(log_path))

        def stop() -> None:
            stopping.set()
            if started:
                stop_session(started[0], KILL_GRACE_S)

        return run, stop, lambda: _read_progress(progress_path)

    def _watch(self, task: TaskInfo, slot: Slot, timeout_s: float, run: Callable[[], Outcome],
               stop: Callable[[], None], progress: Callable[[], float | None]) -> tuple[Outcome, str | None]:
        """``run()`` in this thread while a watch renews the lease and enforces the timeout, the spot
        interruption and the stop; ``(outcome, verdict)``, the verdict 'timeout', 'interrupted', 'lost'
        or 'aborted' when the watch stopped the run, else None."""
        verdict: list[str] = []
        finished = threading.Event()

        def watch() -> None:
            started = time.monotonic()
            next_beat = started + self.settings.heartbeat_s
            while not finished.wait(TICK_S):
                now = time.monotonic()
                if now - started > timeout_s:
                    verdict.append("timeout")
                elif self.interruption is not None:
                    verdict.append("interrupted")
                elif self._aborted:
                    verdict.append("aborted")
                elif now >= next_beat:
                    next_beat = now + self.settings.heartbeat_s
                    try:
                        if self.backend.heartbeat(slot.worker_id, task.task_id, self.settings.lease_s,
                                                  progress=progress()):
                            self.drain()
                    except LeaseLost:
                        verdict.append("lost")
                    except BackendUnavailable as exc:
                        # Keep working: the lease is longer than a few missed beats.
                        log.warning("heartbeat_failed worker=%s task=%s error=%s", slot.worker_id, task.task_id,
                                    exc.message)
                if verdict:
                    stop()
                    return

        watcher = threading.Thread(target=contextvars.copy_context().run, args=(watch,),  # the task's log ids
                                   name=f"watch-{task.task_id[:8]}", daemon=True)
        watcher.start()
        try:
            outcome = run()
        finally:
            finished.set()
            watcher.join()
        return outcome, (verdict[0] if verdict else None)


def task_env() -> dict[str, str]:
    """The task process's environment: ours without what it has no use for (``WITHHELD_ENV``: the
    secrets, the webhook), since it runs code and parses files from outside."""
    return {k: v for k, v in os.environ.items() if k not in WITHHELD_ENV}


def _read_outcome(result_path: Path, returncode: int, log_text: str) -> Outcome:
    try:
        payload = json.loads(result_path.read_text())
    except (OSError, ValueError):
        payload = None
    if returncode == 0 and payload and "result" in payload:
        return Outcome(result=payload["result"])
    if payload and "error" in payload:
        err = payload["error"]
        # The algorithm's own output when it ran as a process of its own, else the whole task log.
        return Outcome(error=TaskError.make(str(err.get("code", "algorithm_failed")), str(err.get("message", "")),
                                            str(err.get("log_tail") or log_text)))
    how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with status {returncode}"
    return Outcome(error=TaskError.make("algorithm_crashed", f"the algorithm process {how} without a result",
                                        log_text))


def _read_progress(path: Path) -> float | None:
    try:
        return max(0.0, min(1.0, float(path.read_text())))
    except (OSError, ValueError):
        return None


def _tail(path: Path, limit: int = TaskError.LOG_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
