"""The worker's side of a warm executor (``algorithms.runners.executor``): one long-lived process per
worker slot that runs ``python`` and ``python-function`` algorithms task after task.

An executor serves one algorithm version (``key``: name, version, runner, target; the registry
never changes a registered version's bundle) from its own copy of the bundle. A task of another
version replaces it, and so does a task after the executor has served ``max_tasks`` or grown past
``max_rss_bytes``. Isolation stays what a one-task process gives: the minimal environment (with
only the mark of the ``scantide up`` above, so a new one finds what a killed one left), a session
of its own that dies with the worker, and on a timeout, a stop or a lost lease the whole
session is killed (``kill``, from any thread) and the next task gets a fresh executor. A process
that dies under a task ends it as a one-task process would (``failure``: ``algorithm_crashed``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from algorithms.errors import EntryError
from algorithms.runners.process import PASSED_ENV, TAIL_BYTES, Progress, Workspace
from service.processes import SUPERVISOR_ENV, die_with_parent, session_members

if TYPE_CHECKING:
    from service.catalog import AlgorithmDescriptor

log = logging.getLogger(__name__)

EXIT_WAIT_S = 2.0  # how long an executor whose socket closed under a task gets to report its exit
CHECK_S = 0.2  # how often a waiting task checks whether it was stopped, seconds


@dataclass
class Call:
    """What one task's run returned: ``outcome`` (``{"result"}`` or ``{"error"}``; None when the
    process ended or was killed without one) and, then, its exit status (None: past the timeout)."""

    outcome: dict[str, Any] | None
    code: int | None = 0


class WarmExecutor:
    def __init__(self, package_root: str, *, max_tasks: int = 200, max_rss_bytes: int = 8 * 1024**3) -> None:
        self.package_root = package_root  # the executor imports algorithms.* from here
        self.max_tasks = max_tasks
        self.max_rss_bytes = max_rss_bytes
        self.key: tuple[str, ...] | None = None
        self.tasks = 0  # served by the current process
        self.started = 0  # processes started, the first included
        self._proc: subprocess.Popen | None = None
        self._channel: socket.socket | None = None
        self._root: Path | None = None
        self._lock = threading.Lock()

    # -- one task ----------------------------------------------------------------------------
    def prepare(self, descriptor: AlgorithmDescriptor, here: Path) -> None:
        """Have an executor for ``descriptor``'s version (its bundle unpacked at ``here``) running:
        the one there is, or a new one, which imports the algorithm while the worker waits."""
        key = key_of(descriptor)
        if key != self.key or not self.alive():
            self.close()
            self._start(key, bundle_of(descriptor), here)

    def call(self, descriptor: AlgorithmDescriptor, here: Path, request: dict[str, Any], timeout_s: float,
             progress: Progress, cancelled: threading.Event) -> Call:
        """Run ``request`` (scan, params, outputs, home, cwd, log) on the executor for ``descriptor``'s
        version, starting one first when there is none for it. Once ``cancelled`` is set the
        executor is killed (within ``CHECK_S``)."""
        self.prepare(descriptor, here)
        bundle = bundle_of(descriptor)
        assert self._channel is not None and self._root is not None
        deadline = time.monotonic() + timeout_s
        buffer = b""
        try:
            self._channel.sendall(json.dumps({**request, "here": str(self._root / "bundle")}).encode() + b"\n")
            while True:
                line, newline, rest = buffer.partition(b"\n")
                if not newline:
                    if cancelled.is_set() or time.monotonic() >= deadline:
                        self.close()
                        return Call(None, None)
                    self._channel.settimeout(max(0.001, min(CHECK_S, deadline - time.monotonic())))
                    try:
                        chunk = self._channel.recv(65536)
                    except TimeoutError:
                        continue
                    if not chunk:
                        break
                    buffer += chunk
                    continue
                buffer = rest
                message = json.loads(line)
                if "progress" in message:
                    progress(min(1.0, float(message["progress"])))
                elif "outcome" in message:
                    self.tasks += 1
                    self._recycle_if_due(bundle)
                    return Call(message["outcome"])
        except (OSError, ValueError):
            pass  # the process went away mid-message
        return Call(None, self._ended())

    # -- the process --------------------------------------------------------------------------
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """Kill the executor's whole session now (a timeout, a stop, a lost lease); safe from any
        thread: the task waiting on it sees the process end."""
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            self._kill_session(proc)

    def close(self) -> None:
        """Stop the executor and everything in its session at once: between tasks it holds nothing
        worth a graceful exit, and it may be deep in an import that would not notice one."""
        with self._lock:
            proc, channel, root = self._proc, self._channel, self._root
            self._proc = self._channel = self._root = None
            self.key = None
        if channel is not None:
            channel.close()
        if proc is not None:
            self._kill_session(proc)
            proc.wait()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def rss_bytes(self) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return None

    def _start(self, key: tuple[str, ...], bundle: dict[str, Any], here: Path) -> None:
        root = Path(tempfile.mkdtemp(prefix="scantide-executor-"))
        shutil.copytree(here, root / "bundle", symlinks=True)
        (root / "home").mkdir()
        ours, theirs = socket.socketpair()
        env = {k: os.environ[k] for k in (*PASSED_ENV, SUPERVISOR_ENV) if k in os.environ}
        env.update(HOME=str(root / "home"), TMPDIR=str(root / "home"), PYTHONUNBUFFERED="1",
                   LANG=env.get("LANG", "C.UTF-8"), PYTHONPATH=self.package_root)
        with open(root / "executor.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "algorithms.runners.executor", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent())
        theirs.close()
        ours.sendall(json.dumps({**bundle, "here": str(root / "bundle")}).encode() + b"\n")
        with self._lock:
            self._proc, self._channel, self._root = proc, ours, root
            self.key, self.tasks = key, 0
            self.started += 1
        log.info("executor_started pid=%d algorithm=%s", proc.pid, "@".join(key[:2]))

    def _ended(self) -> int | None:
        """After the socket closed under a task: the exit status, the executor gone."""
        proc = self._proc
        code = None
        if proc is not None:
            try:
                code = proc.wait(timeout=EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                code = -9
        self.close()
        return code

    def _recycle_if_due(self, bundle: dict[str, Any]) -> None:
        """Replace an executor that served its ``max_tasks`` or grew past ``max_rss_bytes`` now, so the
        new one imports while the worker records the task."""
        rss = self.rss_bytes()
        if self.tasks < self.max_tasks and (rss is None or rss <= self.max_rss_bytes):
            return
        log.info("executor_recycled tasks=%d rss_mib=%s", self.tasks, rss and rss // 2**20)
        key, keep = self.key, Path(tempfile.mkdtemp(prefix="scantide-executor-bundle-"))
        assert key is not None and self._root is not None
        try:
            shutil.copytree(self._root / "bundle", keep / "bundle", symlinks=True)
            self.close()
            self._start(key, bundle, keep / "bundle")
        finally:
            shutil.rmtree(keep, ignore_errors=True)

    @staticmethod
    def _kill_session(proc: subprocess.Popen) -> None:
        for pid in {proc.pid, *session_members(proc.pid)}:
            try:
                os.kill(pid, 9)
            except (ProcessLookupError, PermissionError):
                pass


class TaskExecutor:
    """A slot's warm executor lent to one task, whose algorithm output goes to ``log_path``."""

    def __init__(self, warm: WarmExecutor, log_path: Path) -> None:
        self.warm = warm
        self.log_path = log_path
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop the task (a timeout, a stop, a lost lease): its algorithm is killed, or never starts."""
        self.cancelled.set()
        self.warm.kill()

    def run(self, descriptor: AlgorithmDescriptor, here: Path, request: dict[str, Any], work: Workspace,
            timeout_s: float, progress: Progress) -> tuple[dict[str, Any], int | None, str]:
        """``request`` run as ``runners.run`` runs a one-task process: ``(outcome or {}, exit status,
        output tail)``."""
        start = self.log_path.stat().st_size if self.log_path.exists() else 0
        task = {"scan": request["scan"], "params": request["params"], "outputs": request["outputs"],
                "home": str(work.home), "cwd": str(work.root), "log": str(self.log_path)}
        if self.cancelled.is_set():
            raise EntryError("aborted", "the task was stopped before its algorithm started")
        call = self.warm.call(descriptor, here, task, timeout_s, progress, self.cancelled)
        if self.cancelled.is_set():
            raise EntryError("aborted", "the task was stopped while its algorithm ran")
        return call.outcome or {}, call.code, _tail_from(self.log_path, start)


def bundle_of(descriptor: AlgorithmDescriptor) -> dict[str, Any]:
    """What a Python runner's process is told to run: the runner and its target."""
    return {"runner": descriptor.runner,
            "target": descriptor.python if descriptor.runner == "python" else descriptor.function}


def key_of(descriptor: AlgorithmDescriptor) -> tuple[str, ...]:
    """The version an executor serves."""
    bundle = bundle_of(descriptor)
    return descriptor.name, descriptor.version, str(bundle["runner"]), str(bundle["target"])


def _tail_from(path: Path, start: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(start, f.seek(0, os.SEEK_END) - TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
