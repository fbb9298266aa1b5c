"""Child processes that must not outlive what they serve (Linux; elsewhere a best effort).

``die_with_parent``: a ``preexec_fn`` that has the kernel SIGKILL the child when its parent dies,
however it dies. ``stop_session``: stop a child that leads its own session, and everything it
started: SIGTERM to its group, a grace period for its clean-up (an algorithm's container to
stop), then SIGKILL to every process still in the session, whatever process group it moved to.

``SUPERVISOR_ENV`` marks every process ``scantide up`` starts, directly or not (workers are the
autoscaler's children), with the supervisor's pid and start time: a worker whose supervisor is
gone drains and exits, and a new supervisor ends what a killed one left (``leftovers``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` arming the death signal, or None where there is none. It fires when the
    thread that forked exits: fork from a thread that lives as long as the child may (the main thread,
    or a worker slot's)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the forked child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before the death signal was armed
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def terminate(child: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM ``child`` (scantide's commands drain on it), SIGKILL it if it is still running
    after ``grace_s`` seconds; reaped either way."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def stop_session(child: subprocess.Popen, grace_s: float) -> None:
    """Stop ``child`` (started with ``start_new_session=True``) and the rest of its session."""
    _signal_group(child.pid, signal.SIGTERM)
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(child.pid, signal.SIGKILL)
    for pid in session_members(child.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    child.wait()


def session_members(sid: int) -> list[int]:
    """The processes in session ``sid`` (from /proc; none where there is no /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 3 and fields[3] == str(sid):
            members.append(int(stat.parent.name))
    return members


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


SUPERVISOR_ENV = "SCANTIDE_SUPERVISOR"  # "<pid>:<start time>:<state dir>" of the `scantide up` above us


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None when it is gone: with the
    pid, it names one process for good (pids are reused)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def supervisor_mark(state_dir: Path) -> str:
    """This process as the supervisor of ``state_dir``, for ``SUPERVISOR_ENV``."""
    return f"{os.getpid()}:{start_time(os.getpid())}:{state_dir.resolve()}"


def supervisor_alive(mark: str | None) -> bool:
    """Whether the supervisor a mark names still runs; True without a mark (not supervised)."""
    if not mark:
        return True
    pid, started, _ = mark.split(":", 2)
    return start_time(int(pid)) == started


def leftovers(state_dir: Path) -> list[int]:
    """Processes a killed supervisor of ``state_dir`` left running: marked with a supervisor of the
    same state dir that is no longer alive."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = environ.read_bytes().split(b"\0")
        except OSError:
            continue
        mark = next((v.split(b"=", 1)[1].decode(errors="replace") for v in variables
                     if v.startswith(SUPERVISOR_ENV.encode() + b"=")), None)
        if mark and mark.count(":") >= 2 and mark.split(":", 2)[2] == str(state_dir.resolve()) \
                and not supervisor_alive(mark) and int(environ.parent.name) != os.getpid():
            found.append(int(environ.parent.name))
    return found


def end_processes(pids: list[int], grace_s: float) -> None:
    """SIGTERM, up to ``grace_s`` to exit, then SIGKILL (each one's own group too, for what it started)."""
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(start_time(p) is not None for p in pids):
        time.sleep(0.1)
    for pid in pids:
        _signal_group(pid, signal.SIGKILL)
        _kill(pid, signal.SIGKILL)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
