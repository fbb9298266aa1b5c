"""The ``command`` runner, and ``image`` (the same command in a container).

The command is an argv, never a shell: each placeholder fills part of one argument. It runs in its
own process group with a minimal environment (no tokens, no secrets: PATH, locale, GPU
visibility, and a private HOME and TMPDIR), ``python`` as its first word meaning this interpreter.
Its output goes to the task log as it comes; a line ``scantide:progress 0.42`` reports progress.

Exit 0: completed, ``{outputs}/result.json`` (a JSON object, 1 MiB at most) the result. Exit 2:
``invalid_input``. Any other exit or a signal: ``algorithm_crashed``; past ``resources.timeout_s``:
``timeout``. Every failure carries the last 2 KB of the output.

A container algorithm runs as is where the task already runs inside its image (a ClearML agent in
docker mode, from the template's ``container`` section); on this machine (embedded mode) through
docker or podman, with no network and only the task's folders mounted.
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
from pathlib import Path
from typing import Any

from algorithms.task_files import EntryError
from service.algorithms import CONTAINER_ENGINES
from service.catalog import AlgorithmDescriptor, command_argv
from service.errors import InvalidParams

EXIT_INVALID_INPUT = 2
MAX_RESULT_BYTES = 1024**2
TAIL_BYTES = 2048
PROGRESS = re.compile(rb"^scantide:progress\s+([0-9]*\.?[0-9]+)\s*$")
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "OPENBLAS_CORETYPE",
              "OPENBLAS_L2_SIZE")
AGENT_TASK_ENV = "CLEARML_TASK_ID"  # set when a ClearML agent runs the task (inside the image, in docker mode)
MOUNT = "/scantide"  # where the task's folders appear inside a container


def run_command(descriptor: AlgorithmDescriptor, here: Path, scan: Path, params: dict[str, Any], out_dir: Path,
                progress: Any) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="scantide-run-"))  # the command's own: its inputs and its home
    inputs, home = work / "inputs", work / "home"
    inputs.mkdir()
    home.mkdir()
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.update(HOME=str(home), TMPDIR=str(home), PYTHONUNBUFFERED="1", LANG=env.get("LANG", "C.UTF-8"))
    try:
        try:
            argv = _argv(descriptor, here, inputs, out_dir, params)
        except InvalidParams as exc:
            raise EntryError("invalid_params", exc.message) from exc
        shutil.copyfile(scan, inputs / f"scan{scan.suffix.lower()}")  # a copy: the command may write there
        code, tail = _run(argv, env, work, descriptor.resources.timeout_s, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if code is None:
        raise EntryError("timeout", f"the command ran past its {descriptor.resources.timeout_s:g} s limit", tail)
    if code == EXIT_INVALID_INPUT:
        raise EntryError("invalid_input", f"the command refused the input (exit {code})", tail)
    if code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise EntryError("algorithm_crashed", f"the command {how}", tail)
    return _result(out_dir, tail)


def _argv(descriptor: AlgorithmDescriptor, here: Path, inputs: Path, outputs: Path, params: dict[str, Any]) -> list[str]:
    if descriptor.runner == "image" and not os.environ.get(AGENT_TASK_ENV):
        argv = command_argv(descriptor, here=f"{MOUNT}/here", inputs=f"{MOUNT}/inputs", outputs=f"{MOUNT}/outputs",
                            params=params)
        engine = next((shutil.which(e) for e in CONTAINER_ENGINES if shutil.which(e)), None)
        if engine is None:
            raise EntryError("runner_unavailable", f"{descriptor.name} runs in a container, and neither "
                                                   f"{' nor '.join(CONTAINER_ENGINES)} is on this worker's PATH")
        mounts = [f"{here}:{MOUNT}/here:ro", f"{inputs}:{MOUNT}/inputs:ro", f"{outputs}:{MOUNT}/outputs"]
        return [engine, "run", "--rm", "--network", "none", *[a for m in mounts for a in ("-v", m)],
                str(descriptor.image), *argv]
    argv = command_argv(descriptor, here=str(here), inputs=str(inputs), outputs=str(outputs), params=params)
    if argv and argv[0] == "python":
        argv[0] = sys.executable
    return argv


def _run(argv: list[str], env: dict[str, str], cwd: Path, timeout_s: float, progress: Any) -> tuple[int | None, str]:
    """Run ``argv``, copying its output to ours; ``(exit code or None on timeout, output tail)``."""
    tail: deque[bytes] = deque()
    size = 0
    try:
        child = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise EntryError("algorithm_crashed", f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _kill_group(child)

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
        _kill_group(child)  # whatever the command left running in its group goes with it
        child.wait()
    text = b"".join(tail)[-TAIL_BYTES:].decode("utf-8", "replace")
    return (None if expired.is_set() else code), text


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _result(out_dir: Path, tail: str) -> dict[str, Any]:
    path = out_dir / "result.json"
    if not path.exists():
        return {}
    if path.stat().st_size > MAX_RESULT_BYTES:
        raise EntryError("invalid_result", f"result.json is {path.stat().st_size} bytes; at most {MAX_RESULT_BYTES}",
                         tail)
    try:
        result = json.loads(path.read_text())
    except ValueError as exc:
        raise EntryError("invalid_result", f"result.json is not JSON: {exc}", tail) from exc
    if not isinstance(result, dict):
        raise EntryError("invalid_result", f"result.json holds a {type(result).__name__}, not a JSON object", tail)
    return result
