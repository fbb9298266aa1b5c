"""How every algorithm runs: as a process of its own, never inside the entry point.

``Workspace`` is a run's private folder: ``inputs/`` (a copy of the scan as ``scan.<ext>``: the
algorithm may write there) and ``home/`` (its HOME and TMPDIR). ``run_process`` starts an argv
(never a shell) there with a minimal environment: no tokens, no cloud credentials, only PATH,
locale, thread and GPU settings. It copies the output to ours as it comes, reports
``scantide:progress 0.42`` lines, and kills the process's whole group on the timeout and on the
way out, whatever ended the run. The process dies with the entry point (a death signal), and
stays in the entry point's session, so a worker that kills that session reaches all of it.

``failure`` maps an exit to the run contract: 2 ``invalid_input``, any other non-zero exit or a
signal ``algorithm_crashed``, the timeout ``timeout``; each carries the last 2 KB of the output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from algorithms.errors import EntryError
from service.processes import die_with_parent

EXIT_INVALID_INPUT = 2
MAX_RESULT_BYTES = 1024**2
TAIL_BYTES = 2048
PROGRESS = re.compile(rb"^scantide:progress\s+([0-9]*\.?[0-9]+)\s*$")
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
              "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

Progress = Callable[[float], None]


@dataclass
class Staged:
    """What lands in a run's ``{inputs}``: the scan (None: a pipeline step that does not read it) and
    upstream steps' outputs, a folder per step. ``scan_owned``: the scan is the task's own copy,
    which may be moved rather than copied; upstream folders always are the task's own."""

    scan: Path | None = None
    scan_owned: bool = False
    upstream: dict[str, Path] = field(default_factory=dict)


class Workspace:
    """A run's own folder, removed with everything in it on exit. ``stage`` places the inputs in
    ``inputs`` (moved when they are this task's own copies, copied when they are originals)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="scantide-run-"))
        self.inputs, self.home = self.root / "inputs", self.root / "home"
        self.inputs.mkdir()
        self.home.mkdir()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def stage(self, staged: Staged) -> Path:
        """Place ``staged`` in ``inputs``: the scan as ``scan.<ext>``, each upstream step's outputs under
        ``<step>/``; returns the scan's path there, or ``inputs`` itself when there is no scan."""
        for step, folder in staged.upstream.items():
            shutil.move(folder, self.inputs / step)
        return self.inputs if staged.scan is None else self.stage_scan(staged.scan, staged.scan_owned)

    def stage_scan(self, scan: Path, owned: bool) -> Path:
        dest = self.inputs / f"scan{scan.suffix.lower()}"
        if owned:
            try:
                os.replace(scan, dest)
                return dest
            except OSError:  # another file system: copy
                pass
        shutil.copyfile(scan, dest)
        return dest

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env.update(HOME=str(self.home), TMPDIR=str(self.home), PYTHONUNBUFFERED="1", LANG=env.get("LANG", "C.UTF-8"))
        env.update(extra)
        return env


def run_process(argv: list[str], env: dict[str, str], cwd: Path, timeout_s: float, progress: Progress,
                on_exit: Callable[[], None] | None = None) -> tuple[int | None, str]:
    """Run ``argv``, copying its output to ours; ``(exit code, or None past timeout_s; output tail)``.
    on_exit: called after the process group is killed, however the run ended (a container to stop)."""
    tail: deque[bytes] = deque()
    size = 0
    try:
        child = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, process_group=0, preexec_fn=die_with_parent())
    except OSError as exc:
        raise EntryError("algorithm_crashed", f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _kill_group(child.pid)

    timer = threading.Timer(timeout_s, expire)
    timer.start()
    try:
        assert child.stdout is not None
        for line in child.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
            tail.append(line)
            size += len(line)
            while size > TAIL_BYTES and len(tail) > 1:
                size -= len(tail.popleft())
            match = PROGRESS.match(line)
            if match:
                progress(min(1.0, float(match.group(1))))
        code = child.wait()
    finally:
        timer.cancel()
        _kill_group(child.pid)  # whatever the run left in its group goes with it
        child.wait()
        if on_exit is not None:
            on_exit()
    text = b"".join(tail)[-TAIL_BYTES:].decode("utf-8", "replace")
    return (None if expired.is_set() else code), text


def failure(code: int | None, tail: str, timeout_s: float, what: str) -> EntryError | None:
    """The run contract's verdict on an exit: None for 0, else the error to fail the task with."""
    if code is None:
        return EntryError("timeout", f"the {what} ran past its {timeout_s:g} s limit", tail)
    if code == EXIT_INVALID_INPUT:
        return EntryError("invalid_input", f"the {what} refused the input (exit {code})", tail)
    if code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return EntryError("algorithm_crashed", f"the {what} {how}", tail)
    return None


def read_result(path: Path, tail: str) -> dict[str, Any]:
    """The JSON object a run left at ``path`` ({} when none); ``invalid_result`` when it is not one."""
    if not path.exists():
        return {}
    if path.stat().st_size > MAX_RESULT_BYTES:
        raise EntryError("invalid_result", f"{path.name} is {path.stat().st_size} bytes; at most {MAX_RESULT_BYTES}",
                         tail)
    try:
        result = json.loads(path.read_text())
    except ValueError as exc:
        raise EntryError("invalid_result", f"{path.name} is not JSON: {exc}", tail) from exc
    if not isinstance(result, dict):
        raise EntryError("invalid_result", f"{path.name} holds a {type(result).__name__}, not a JSON object", tail)
    return result


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
