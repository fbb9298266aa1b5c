"""``scantide worker``: the embedded agent. Claims tasks from one queue and runs each in a subprocess.

The algorithm runs as ``python -m <template entry point> --spec <file>`` in its own process
session, under a hard timeout, while this process renews the task's lease. SIGTERM (or SIGINT)
drains: the running task finishes and no new one is taken. A second signal aborts the task; its
lease then runs out and the backend re-queues it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.algorithms import ENTRY_POINT, pin_unversioned, unregistered
from service.backends.base import TaskBackend
from service.domain import TaskError, TaskInfo
from service.errors import BackendUnavailable, LeaseLost, ScantideError
from service.processes import SUPERVISOR_ENV, die_with_parent, stop_session, supervisor_alive
from service.settings import ENV_PREFIX, Settings

log = logging.getLogger(__name__)

TICK_S = 0.2  # how often the worker checks its child, seconds
KILL_GRACE_S = 5.0  # a stopped task's time to stop its algorithm (and container) itself
# What the task process has no use for: the API's tokens and the webhook (whose secret it must not
# see, and whose URL without the secret would not even load as settings).
WITHHELD_ENV = frozenset({f"{ENV_PREFIX}API_TOKENS", f"{ENV_PREFIX}WEBHOOK_SECRET", f"{ENV_PREFIX}WEBHOOK_URL"})


@dataclass
class Outcome:
    result: dict[str, Any] | None = None
    error: TaskError | None = None
    lost: bool = False  # the lease moved on: record nothing


class Worker:
    def __init__(self, backend: TaskBackend, settings: Settings, queue: str, worker_id: str | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.queue = queue
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.draining = False
        self._aborted = False
        self.log_dir = settings.state_dir / "logs"

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
            self.draining = True

    # -- main loop -------------------------------------------------------------------------
    def run(self, max_tasks: int | None = None) -> int:
        """Claim and run tasks until drained (or ``max_tasks`` done). Returns the exit status."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.backend.register_worker(self.worker_id, self.queue)
        log.info("worker_started worker=%s queue=%s", self.worker_id, self.queue)
        done = 0
        try:
            while not self.draining and (max_tasks is None or done < max_tasks):
                if not supervisor_alive(os.environ.get(SUPERVISOR_ENV)):
                    log.warning("worker_orphaned worker=%s: the scantide up it ran under is gone; stopping",
                                self.worker_id)
                    break
                try:
                    task = self.backend.claim(self.queue, self.worker_id, self.settings.lease_s)
                    if task is None and self.backend.heartbeat(self.worker_id, None, self.settings.lease_s):
                        self.draining = True
                except BackendUnavailable as exc:
                    log.warning("claim_failed worker=%s error=%s", self.worker_id, exc.message)
                    time.sleep(min(5.0, self.settings.worker_poll_s * 4))
                    continue
                if task is None:
                    time.sleep(self.settings.worker_poll_s)
                    continue
                self.execute(task)
                done += 1
        finally:
            try:
                self.backend.unregister_worker(self.worker_id)
            except ScantideError as exc:
                log.warning("unregister_failed worker=%s error=%s", self.worker_id, exc.message)
        log.info("worker_stopped worker=%s tasks=%d", self.worker_id, done)
        return 0

    def execute(self, task: TaskInfo) -> None:
        """Run one claimed task to its end and record the outcome."""
        log.info("task_started worker=%s task=%s scan=%s attempt=%d", self.worker_id, task.task_id, task.scan_id,
                 task.attempt)
        outcome = self._run_child(task)
        if outcome.lost:
            log.warning("task_lease_lost worker=%s task=%s", self.worker_id, task.task_id)
            return
        # The outcome is worth retrying for: until the lease would run out, a store outage only delays it.
        deadline = time.monotonic() + self.settings.lease_s
        while True:
            try:
                finished = self.backend.finish(task.task_id, self.worker_id, result=outcome.result,
                                               error=outcome.error)
                break
            except LeaseLost:
                log.warning("task_lease_lost worker=%s task=%s", self.worker_id, task.task_id)
                return
            except BackendUnavailable as exc:
                if time.monotonic() > deadline:
                    log.error("finish_failed worker=%s task=%s error=%s", self.worker_id, task.task_id, exc.message)
                    return
                log.warning("finish_retry worker=%s task=%s error=%s", self.worker_id, task.task_id, exc.message)
                time.sleep(1.0)
        log.info("task_finished worker=%s task=%s state=%s%s", self.worker_id, task.task_id, finished.state.value,
                 f" code={outcome.error.code}" if outcome.error else "")

    # -- one task --------------------------------------------------------------------------
    def _run_child(self, task: TaskInfo) -> Outcome:
        template = self.backend.get_template(task.algorithm)
        max_runtime_s = template.max_runtime_s
        if template.entry_point == ENTRY_POINT:  # it runs registered bundles: only the registered one
            task = pin_unversioned(self.backend.algorithms, task)
            refusal = unregistered(self.backend.algorithms, task)
            if refusal:
                return Outcome(error=TaskError.make("unregistered_algorithm", refusal))
            version = self.backend.algorithm_version(task.algorithm, str(task.params["algorithm_version"]))
            max_runtime_s = version.spec.resources.timeout_s if version else max_runtime_s
        work = self.log_dir / f"{task.task_id}-{task.attempt}"
        work.mkdir(parents=True, exist_ok=True)
        spec_path, result_path, progress_path = work / "spec.json", work / "result.json", work / "progress"
        log_path = work / "task.log"
        spec = {"task_id": task.task_id, "algorithm": task.algorithm, "params": task.params,
                "output_uri": task.output_uri, "result_path": str(result_path), "progress_path": str(progress_path),
                "bundle_cache": str(self.settings.state_dir / "bundles"),
                "input_cache": str(self.settings.input_cache_dir)}
        spec_path.write_text(json.dumps(spec))
        timeout_s = min(max_runtime_s, self.settings.task_timeout_s)
        with open(log_path, "wb") as log_file:
            child = subprocess.Popen(
                [sys.executable, "-m", template.entry_point, "--spec", str(spec_path)],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=task_env(),
                start_new_session=True,  # a Ctrl-C to the worker's group must not kill the task: we drain
                preexec_fn=die_with_parent(),  # …but a worker killed outright must not leave it running
            )
            status = self._supervise(task, child, timeout_s, progress_path)
        log_text = _tail(log_path)
        if status == "lost":
            return Outcome(lost=True)
        if status == "timeout":
            return Outcome(error=TaskError.make("timeout", f"the algorithm ran past its {timeout_s:.0f} s limit",
                                                log_text))
        if status == "aborted":
            return Outcome(error=TaskError.make("aborted", "the worker was stopped while the task ran", log_text))
        return _read_outcome(result_path, child.returncode, log_text)

    def _supervise(self, task: TaskInfo, child: subprocess.Popen, timeout_s: float, progress_path: Path) -> str:
        """Wait for the child, renewing the lease. Returns 'exited', 'timeout', 'lost' or 'aborted'."""
        started = time.monotonic()
        next_beat = started + self.settings.heartbeat_s
        while child.poll() is None:
            now = time.monotonic()
            if now - started > timeout_s:
                _kill(child)
                return "timeout"
            if self._aborted:
                _kill(child)
                return "aborted"
            if now >= next_beat:
                next_beat = now + self.settings.heartbeat_s
                try:
                    if self.backend.heartbeat(self.worker_id, task.task_id, self.settings.lease_s,
                                              progress=_read_progress(progress_path)):
                        self.draining = True
                except LeaseLost:
                    _kill(child)
                    return "lost"
                except BackendUnavailable as exc:
                    # Keep working: the lease is longer than a few missed beats.
                    log.warning("heartbeat_failed worker=%s task=%s error=%s", self.worker_id, task.task_id,
                                exc.message)
            time.sleep(TICK_S)
        return "exited"


def task_env() -> dict[str, str]:
    """The task process's environment: ours without what it has no use for (``WITHHELD_ENV``: API
    tokens, the webhook), since it runs code and parses files from outside."""
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


def _kill(child: subprocess.Popen) -> None:
    stop_session(child, KILL_GRACE_S)


def _tail(path: Path, limit: int = TaskError.LOG_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
