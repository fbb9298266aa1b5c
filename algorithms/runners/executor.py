"""A warm executor: the process a worker keeps for ``python`` and ``python-function`` algorithms of
one bundle, serving task after task, so that a scan does not pay for a new interpreter, its imports
(torch) and the model's load (the algorithm's own caches live as long as this process).

``python -m algorithms.runners.executor FD``, started by ``algorithms.runners.warm`` with the same
minimal environment as a one-task ``child`` (no tokens, no cloud credentials). FD is a stream
socket; each message is one JSON line.

- In: first ``{"runner", "target", "here"}`` (the bundle, this process's own copy), then one
  request per task: ``{"scan", "params", "outputs", "home", "cwd", "log"}``.
- Out, per task: ``{"progress": 0.42}`` lines, then ``{"outcome": {"result": …} | {"error": …}}``.

The algorithm's output (stdout, stderr, and what its libraries write to fds 1 and 2) goes to the
request's ``log`` file; ``HOME``, ``TMPDIR`` and the working directory are the task's own. The
process exits when the socket closes; the worker kills it on a timeout or a stop.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import tempfile
import threading
from contextlib import contextmanager
from typing import Any

from algorithms.runners.child import serve


def main(fd: int) -> int:
    channel = socket.socket(fileno=fd)
    reader = channel.makefile("rb")
    lock = threading.Lock()  # an algorithm may report progress from its own threads

    def send(message: dict[str, Any]) -> None:
        with lock:
            channel.sendall(json.dumps(message).encode() + b"\n")

    bundle = json.loads(reader.readline() or b"null")
    if not bundle:
        return 0
    _preload(bundle)
    for line in reader:
        request = {**bundle, **json.loads(line)}
        with _task_context(request):
            outcome, _ = serve(request, lambda fraction: send({"progress": round(fraction, 4)}))
        send({"outcome": outcome})
    return 0


def _preload(bundle: dict[str, Any]) -> None:
    """Import the algorithm's module before the first task (torch and the like load here, while the
    worker waits for work). A failure is left for the task, which reports it as its own."""
    if bundle["runner"] != "python":
        return
    sys.path.insert(0, bundle["here"])
    try:
        importlib.import_module(str(bundle["target"]).partition(":")[0])
    except Exception:  # noqa: BLE001 - the first task imports it again and fails with the reason
        pass


@contextmanager
def _task_context(request: dict[str, Any]):  # noqa: ANN202
    """fds 1 and 2 on the task's log; HOME, TMPDIR and the working directory its own."""
    sys.stdout.flush()
    sys.stderr.flush()
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    saved = os.dup(1), os.dup(2)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.environ["HOME"] = os.environ["TMPDIR"] = request["home"]
    tempfile.tempdir = None  # tempfile reads TMPDIR again
    os.chdir(request["cwd"])
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        os.chdir("/")


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
