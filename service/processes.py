"""Child processes that must not outlive what they serve (Linux; elsewhere a best effort).

``die_with_parent``: a ``preexec_fn`` that has the kernel SIGKILL the child when its parent dies,
however it dies. ``stop_session``: stop a child that leads its own session, and everything it
started: SIGTERM to its group, a grace period for its clean-up (an algorithm's container to
stop), then SIGKILL to every process still in the session, whatever process group it moved to.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` arming the death signal, or None where there is none. It fires when the
    thread that forked exits: fork from the main thread."""
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
