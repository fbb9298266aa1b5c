"""The task entry point under a stock ``clearml-agent``: the task's own side of the ClearML protocol.

The agent pops the task from its queue, marks it started and runs the template's script,
``python -m algorithms.entry``, with ``CLEARML_TASK_ID`` and the API credentials (or a
configuration file) in the environment. The entry point then reads the task it runs
(``RunningTask``; ``run_clearml_task`` is the whole run), reports progress on it, and records
its outcome where the ClearML backend reads it (``service.backends.clearml_tasks``):

- the parameters: section ``Args`` (``scan_uri``, ``output_uri``, ``model_version``, ``metadata``,
  ``model_uri``, ``previous_output_uri`` and the algorithm's own), the algorithm: property
  ``algorithm`` (or the ``alg:`` tag);
- progress: runtime property ``progress``, a whole percentage (``Task.set_progress``'s format),
  sent at most every ``PROGRESS_EVERY_S``;
- success: output artifact ``scantide-result``, recorded last, after every output is stored;
- failure: runtime property ``error`` (``{code, message, log_tail}``).

The entry point never changes the task's status: the agent does when the process exits
(``tasks.completed`` on 0, ``tasks.failed`` otherwise). A status changed under a running agent
makes it abort the task, and a process killed before its result is recorded then reads as
failed ``no_result`` instead of a false success.

One exception: on a spot instance (``SCANTIDE_SPOT_NOTICE_URL``, set by the EC2 boot script) the
entry point polls the interruption notice (``service.spot``), and on a notice hands its task back
(``clearml_agent.requeue_uncounted``: queued again, the run not counted as an attempt) and exits at
once with ``EXIT_HANDED_BACK``. The agent finds the task queued and leaves its status alone; the
boot script has stopped the agents from taking another task.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict
from typing import Any

from clearml.backend_api.services.v2_23 import tasks

from algorithms.entry import execute
from service.algorithms import unregistered
from service.backends.clearml_agent import requeue_uncounted
from service.backends.clearml_algorithms import ClearMLAlgorithms
from service.backends.clearml_client import ClearMLClient
from service.backends.clearml_store import ClearMLStore
from service.backends.clearml_tasks import (
    TASK_FIELDS,
    progress_text,
    result_artifact,
    task_info,
)
from service.domain import TaskError, TaskInfo
from service.errors import ConfigError, ScantideError, TaskNotFound
from service.settings import Settings, load_settings
from service.spot import INTERRUPTION_CODE, Notice, watch

log = logging.getLogger(__name__)

TASK_ID_ENV = "CLEARML_TASK_ID"  # set by clearml-agent for the process it runs
PROGRESS_EVERY_S = 2.0
# The task did its work by the time it records the result: retry harder than the control plane does.
RECORD_RETRIES = 5
EXIT_HANDED_BACK = 75  # the task was handed back for a spot interruption (EX_TEMPFAIL)


class RunningTask:
    """The ClearML task this process runs, for the entry point."""

    def __init__(self, client: ClearMLClient, task_id: str) -> None:
        self.client = client
        self.task_id = task_id
        self._lock = threading.Lock()
        self._last_sent = 0.0
        self._last_percent: str | None = None

    @classmethod
    def from_environment(cls, settings: Settings) -> RunningTask:
        """The task named by ``CLEARML_TASK_ID``; the server and credentials come from the SDK's chain."""
        task_id = os.environ.get(TASK_ID_ENV, "").strip()
        if not task_id:
            raise ConfigError(f"{TASK_ID_ENV} is not set: run this under clearml-agent, or pass --spec")
        client = ClearMLClient(timeout_s=settings.clearml_timeout_s,
                               retries=max(settings.clearml_retries, RECORD_RETRIES), backoff_s=1.0)
        return cls(client, task_id)

    def _doc(self) -> dict:
        found = self.client.send(tasks.GetAllRequest(id=[self.task_id], only_fields=TASK_FIELDS))["tasks"]
        if not found:
            raise TaskNotFound(f"ClearML has no task {self.task_id!r}")
        return found[0]

    def project_id(self) -> str | None:
        found = self.client.send(tasks.GetAllRequest(id=[self.task_id], only_fields=["id", "project"]))["tasks"]
        return found[0].get("project") if found else None

    def info(self) -> TaskInfo:
        """The task as the backend reads it: algorithm, ``Args`` parameters, output location."""
        return task_info(self._doc())

    def _set_runtime(self, **values: str) -> None:
        runtime = {**(self._doc().get("runtime") or {}), **values}  # the agent may keep its own there
        self.client.send(tasks.EditRequest(task=self.task_id, force=True, runtime=runtime))

    def progress(self, fraction: float) -> None:
        """Report progress (0..1); throttled, and a failed report is logged, never raised."""
        percent = progress_text(fraction)
        now = time.monotonic()
        with self._lock:
            if percent == self._last_percent or (now - self._last_sent < PROGRESS_EVERY_S and percent != "100"):
                return
            self._last_sent, self._last_percent = now, percent
        try:
            self._set_runtime(progress=percent)
        except ScantideError as exc:
            log.warning("progress_not_reported task=%s error=%s", self.task_id, exc.message)

    def record_result(self, result: dict[str, Any]) -> None:
        """The last step of a successful run: progress 100 and the ``scantide-result`` artifact."""
        self._set_runtime(progress=progress_text(1.0))
        self.client.send(tasks.AddOrUpdateArtifactsRequest(
            task=self.task_id, artifacts=[result_artifact(result, time.time())], force=True))
        log.info("result_recorded task=%s", self.task_id)

    def record_error(self, code: str, message: str, log_tail: str = "") -> None:
        """Why the run failed, read back as the task's error once the agent marks it failed."""
        error = TaskError.make(code, message, log_tail)
        self._set_runtime(error=json.dumps(asdict(error)))
        log.info("error_recorded task=%s code=%s", self.task_id, code)


def run_clearml_task() -> int:
    """Agent mode of the entry point: run the task named by ``CLEARML_TASK_ID``; the exit status."""
    try:
        settings = load_settings()
        task = RunningTask.from_environment(settings)
        info = task.info()
    except ScantideError as exc:
        log.error("task_unreadable code=%s message=%s", exc.code, exc.message)
        return 2
    spec = {"task_id": info.task_id, "algorithm": info.algorithm, "params": info.params,
            "output_uri": info.output_uri or str(info.params.get("output_uri") or "")}
    if not spec["output_uri"] or not info.params.get("scan_uri"):
        task.record_error("invalid_task", f"task {info.task_id} has no scan_uri or output_uri in section Args")
        return 2
    # The registry is the task's own project, where the template it was cloned from lives.
    store = ClearMLStore(task.client, settings.clearml_project, project_id=task.project_id())
    refusal = unregistered(ClearMLAlgorithms(store), info)
    if refusal:
        task.record_error("unregistered_algorithm", refusal)
        return 2
    spot = watch(settings.spot_notice_url, settings.spot_notice_poll_s, lambda notice: hand_back(task, store, notice))
    try:
        return execute(spec, settings, task.progress, task.record_result, task.record_error)
    except ScantideError as exc:  # ClearML unreachable while recording: the agent marks the task failed
        log.error("outcome_not_recorded task=%s code=%s message=%s", info.task_id, exc.code, exc.message)
        return 1
    finally:
        if spot is not None:
            spot.stop()


def hand_back(task: RunningTask, store: ClearMLStore, notice: Notice) -> None:
    """On the spot watch's thread: queue the task again without counting the run, then end this
    process and the algorithm with it (the instance goes within two minutes). If ClearML cannot be
    told, the task stays in progress and is re-queued as a lost worker's once the agent is gone."""
    reason = TaskError.make(INTERRUPTION_CODE, f"{notice.describe()}: the run was stopped and the task queued "
                                               "again, not counted as an attempt")
    code = EXIT_HANDED_BACK
    try:
        requeue_uncounted(store, task._doc(), reason)
    except ScantideError as exc:
        log.error("hand_back_failed task=%s code=%s message=%s", task.task_id, exc.code, exc.message)
        code = 1
    logging.shutdown()
    os._exit(code)
