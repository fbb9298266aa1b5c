"""One supervisor for the embedded processes: the API, the monitor, the conductor, the autoscaler
(or fixed workers).

Children run as separate processes and are restarted with backoff when they die; they die with the
supervisor, however it dies (the kernel's parent-death signal), and the workers the autoscaler
started drain and exit once the supervisor is gone (``service.processes.SUPERVISOR_ENV``). One
supervisor per state dir: ``lock_state_dir`` holds a lock for the process's life, and a new one
ends what a killed one left. The supervisor also reaps expired leases, so a worker killed mid-task
has its task re-queued even when no other worker is polling. Every child, and every worker they
start, writes its Prometheus series under ``<state_dir>/metrics`` (``service.metrics``), which the
API serves; the supervisor empties it when it starts.

SIGTERM/SIGINT stops everything in order (``STOP_ORDER``): intake first (the API), then the workers
drain (finish the task in hand), then the conductor and the monitor announce what finished, all
within ``grace_s``; a second signal kills at once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from service import logs
from service.backends.base import TaskBackend
from service.errors import ScantideError, StateDirLocked
from service.metrics_files import fresh
from service.processes import SUPERVISOR_ENV, die_with_parent, end_processes, leftovers, supervisor_mark
from service.settings import ENV_PREFIX, METRICS_DIR_ENV, REVEAL_SECRETS, Settings

log = logging.getLogger(__name__)

# The stop, stage by stage (children named by these prefixes): intake, the work in hand, then what
# announces its end. Unnamed children stop last.
DRAINING = ("autoscaler", "worker")  # the stage that finishes the tasks in hand: it gets the grace
STOP_ORDER = (("api",), DRAINING, ("conductor",), ("monitor",))
LOCK_FILE = "up.lock"
STAGE_S = 15.0  # what a stage other than the workers' gets to stop (the monitor: deliver what is due)


def lock_state_dir(state_dir: Path) -> IO[str]:
    """Hold ``<state_dir>/up.lock`` for this process's life (the kernel releases it when the process
    dies, however); raises ``StateDirLocked`` naming the holder. Keep the returned file open."""
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = open(state_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held open until the process ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise StateDirLocked(f"another `scantide up` (pid {holder}) is running on {state_dir}: stop it first "
                             f"(kill {holder}), or give this one another state dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def end_leftovers(state_dir: Path, grace_s: float = 10.0) -> list[int]:
    """End the processes a killed supervisor of ``state_dir`` left running; their pids."""
    pids = leftovers(state_dir)
    if pids:
        log.warning("supervisor_leftovers state_dir=%s pids=%s: ending them", state_dir, pids)
        end_processes(pids, grace_s)
    return pids


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0  # monotonic seconds
    started_at: float = field(default=0.0)


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ``SCANTIDE_*`` variables, so child processes see exactly what we see, secrets
    in clear: for a child's environment only."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json", context={REVEAL_SECRETS: True}).items():
        if value is None:
            continue
        env[f"{ENV_PREFIX}{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


def cli_argv(*args: str) -> list[str]:
    """Run a scantide command in a child process with this interpreter."""
    return [sys.executable, "-m", "service.cli", *args]


class Supervisor:
    def __init__(self, settings: Settings, backend: TaskBackend, children: list[Child], *,
                 output: IO[Any] | None = None, grace_s: float = 60.0, reap_every_s: float = 2.0) -> None:
        self.settings = settings
        self.backend = backend
        self.children = children
        self.output = output
        self.grace_s = grace_s
        self.reap_every_s = reap_every_s
        self._stopping = False
        self._kill = False
        self._env = {**os.environ, **settings_env(settings), SUPERVISOR_ENV: supervisor_mark(settings.state_dir),
                     METRICS_DIR_ENV: str(settings.metrics_dir)}

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stopping:
            self._kill = True
        self._stopping = True
        log.info("supervisor_stopping signal=%s", signum)

    def run(self) -> int:
        fresh(self.settings.metrics_dir)  # the series of an earlier run are not this one's
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        next_reap = 0.0
        while not self._stopping:
            now = time.monotonic()
            for child in self.children:
                self._check(child, now)
            if now >= next_reap:
                next_reap = now + self.reap_every_s
                self._reap()
            time.sleep(0.2)
        return self._stop_all()

    def _check(self, child: Child, now: float) -> None:
        proc = child.process
        if proc is not None and proc.poll() is None:
            return
        if proc is not None:
            # A child that ran for a while before dying gets a fresh backoff.
            if now - child.started_at > 60:
                child.restarts = 0
            delay = min(30.0, 0.5 * 2 ** child.restarts)
            log.warning("child_exited name=%s status=%s restart_in_s=%.1f", child.name, proc.returncode, delay)
            child.restarts += 1
            child.next_start = now + delay
            child.process = None
            return
        if now >= child.next_start:
            child.process = subprocess.Popen(child.argv, env=self._env, stdout=self.output, stderr=self.output,
                                             stdin=subprocess.DEVNULL, start_new_session=True,
                                             preexec_fn=die_with_parent())
            child.started_at = now
            log.info("child_started name=%s pid=%d", child.name, child.process.pid)

    def _reap(self) -> None:
        try:
            for task in self.backend.reap_expired():
                with logs.bind(task_id=task.task_id, scan_id=task.scan_id, request_id=task.request_id):
                    log.warning("lease_expired task=%s scan=%s now=%s attempt=%d", task.task_id, task.scan_id,
                                task.state.value, task.attempt)
        except ScantideError as exc:
            log.warning("reap_failed error=%s", exc.message)

    def _stop_all(self) -> int:
        for i, stage in enumerate(stop_stages(self.children)):
            # The workers get the grace to finish their tasks; the others a short stop of their own.
            deadline = time.monotonic() + (self.grace_s if i == STOP_ORDER.index(DRAINING) else STAGE_S)
            running = [c for c in stage if c.process is not None and c.process.poll() is None]
            for child in running:
                log.info("child_stopping name=%s", child.name)
                child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            while running and time.monotonic() < deadline and not self._kill:
                running = [c for c in running if c.process.poll() is None]  # type: ignore[union-attr]
                time.sleep(0.1)
            for child in running:
                log.warning("child_killed name=%s", child.name)
                os.killpg(child.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
                child.process.wait()  # type: ignore[union-attr]
        log.info("supervisor_stopped")
        return 0


def stop_stages(children: list[Child]) -> list[list[Child]]:
    """``children`` grouped by ``STOP_ORDER``, in that order; the unnamed last."""
    def stage(child: Child) -> int:
        return next((i for i, prefixes in enumerate(STOP_ORDER) if child.name.startswith(prefixes)),
                    len(STOP_ORDER))

    return [[c for c in children if stage(c) == i] for i in range(len(STOP_ORDER) + 1)]
