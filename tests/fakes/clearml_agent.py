"""A stand-in for ``clearml-agent daemon --queue Q`` for the production end-to-end test: what the
stock agent does around a task, over the same API calls (``clearml_agent/commands/worker.py``),
without its virtualenv or docker set-up.

``python -m tests.fakes.clearml_agent --queue Q --worker-id ID [--max-tasks N]``: registers the
worker on the queue, pops tasks (``queues.get_next_task``), marks each started (``tasks.started``),
reports it (``workers.status_report``), runs the task's ``script`` (``binary`` +
``entry_point``, e.g. ``python3 -m algorithms.entry``) with ``CLEARML_TASK_ID`` set and this
process's environment (the API credentials, AWS settings), and on exit marks the task
``completed`` (exit 0) or ``failed`` (``worker execution exit code N``), as the agent does.
Unlike the agent it runs the script with this interpreter, in the current directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import subprocess
import sys
import time

from clearml.backend_api.services.v2_23 import queues, tasks, workers

from service.backends.clearml_client import ClearMLClient

log = logging.getLogger("clearml-agent-stand-in")


def run_one(client: ClearMLClient, worker_id: str, qid: str) -> bool:
    """Take the next task off the queue and run it; False when the queue is empty."""
    entry = client.send(queues.GetNextTaskRequest(queue=qid)).get("entry")
    if not entry:
        return False
    task_id = entry["task"]
    client.send(tasks.StartedRequest(task=task_id, status_reason="worker started execution", force=True))
    client.send(workers.StatusReportRequest(worker=worker_id, timestamp=int(time.time() * 1000), task=task_id,
                                            queue=qid, queues=[qid]))
    script = client.send(tasks.GetAllRequest(id=[task_id], only_fields=["script"]))["tasks"][0].get("script") or {}
    if not (script.get("binary") or "").split("/")[-1].startswith("python") or not script.get("entry_point"):
        raise SystemExit(f"task {task_id} has no python script to run: {script}")
    argv = [sys.executable, "-u", *shlex.split(script["entry_point"])]
    log.info("running task=%s argv=%s", task_id, argv)
    code = subprocess.call(argv, env={**os.environ, "CLEARML_TASK_ID": task_id}, stdin=subprocess.DEVNULL)
    if code == 0:
        client.send(tasks.CompletedRequest(task=task_id, status_reason="worker execution done"))
    else:
        client.send(tasks.FailedRequest(task=task_id, status_reason=f"worker execution exit code {code}"))
    client.send(workers.StatusReportRequest(worker=worker_id, timestamp=int(time.time() * 1000), queues=[qid]))
    return True


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queue", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--max-tasks", type=int, default=1)
    parser.add_argument("--poll-s", type=float, default=0.2)
    parser.add_argument("--retries", type=int, default=2, help="Of each API call, as the agent's own session.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    client = ClearMLClient(timeout_s=10.0, retries=args.retries, backoff_s=0.1)
    found = client.send(queues.GetAllRequest(name=f"^{re.escape(args.queue)}$"))["queues"]
    qid = found[0]["id"]
    client.send(workers.RegisterRequest(worker=args.worker_id, timeout=600, queues=[qid]))
    done = 0
    while done < args.max_tasks:
        if run_one(client, args.worker_id, qid):
            done += 1
        else:
            time.sleep(args.poll_s)
    client.send(workers.UnregisterRequest(worker=args.worker_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
