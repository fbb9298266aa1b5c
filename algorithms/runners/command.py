"""The ``command`` runner, and ``image`` (the same command in a container).

The command is an argv, never a shell: each placeholder fills part of one argument, ``python`` as
its first word meaning this interpreter. It runs as ``algorithms.runners.process`` runs every
algorithm. Exit 0: completed, ``{outputs}/result.json`` (a JSON object, 1 MiB at most) the result.

A container algorithm runs as is where the task already runs inside its image (a ClearML agent in
docker mode, from the template's ``container`` section); on this machine (embedded mode) through
docker or podman, with no network and only the task's folders mounted, under a name of its own
that is killed when the run ends, however it ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from algorithms.errors import EntryError
from algorithms.runners.process import Progress, Staged, Workspace, failure, read_result, run_process
from service.algorithms import CONTAINER_ENGINES
from service.catalog import AlgorithmDescriptor, command_argv
from service.errors import InvalidParams

AGENT_TASK_ENV = "CLEARML_TASK_ID"  # set when a ClearML agent runs the task (inside the image, in docker mode)
MOUNT = "/scantide"  # where the task's folders appear inside a container


def run_command(descriptor: AlgorithmDescriptor, here: Path, staged: Staged, params: dict[str, Any],
                out_dir: Path, progress: Progress) -> dict[str, Any]:
    timeout_s = descriptor.resources.timeout_s
    with Workspace() as work:
        try:
            argv, on_exit = _argv(descriptor, here, work.inputs, out_dir, params)
        except InvalidParams as exc:
            raise EntryError("invalid_params", exc.message) from exc
        work.stage(staged)
        code, tail = run_process(argv, work.env(), work.root, timeout_s, progress, on_exit)
    error = failure(code, tail, timeout_s, "command")
    if error is not None:
        raise error
    return read_result(out_dir / "result.json", tail)


def _argv(descriptor: AlgorithmDescriptor, here: Path, inputs: Path, outputs: Path,
          params: dict[str, Any]) -> tuple[list[str], Callable[[], None] | None]:
    if descriptor.runner == "image" and not os.environ.get(AGENT_TASK_ENV):
        argv = command_argv(descriptor, here=f"{MOUNT}/here", inputs=f"{MOUNT}/inputs", outputs=f"{MOUNT}/outputs",
                            params=params)
        engine = next((shutil.which(e) for e in CONTAINER_ENGINES if shutil.which(e)), None)
        if engine is None:
            raise EntryError("runner_unavailable", f"{descriptor.name} runs in a container, and neither "
                                                   f"{' nor '.join(CONTAINER_ENGINES)} is on this worker's PATH")
        name = f"scantide-{uuid.uuid4().hex[:16]}"
        mounts = [f"{here}:{MOUNT}/here:ro", f"{inputs}:{MOUNT}/inputs:ro", f"{outputs}:{MOUNT}/outputs"]
        return ([engine, "run", "--rm", "--name", name, "--network", "none",
                 *[a for m in mounts for a in ("-v", m)], str(descriptor.image), *argv],
                lambda: _kill_container(engine, name))
    argv = command_argv(descriptor, here=str(here), inputs=str(inputs), outputs=str(outputs), params=params)
    if argv and argv[0] == "python":
        argv[0] = sys.executable
    return argv, None


def _kill_container(engine: str, name: str) -> None:
    """Killing the engine's client leaves its container running: kill the container by name (an
    error when it has already gone is expected)."""
    subprocess.run([engine, "kill", name], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=30, check=False)
