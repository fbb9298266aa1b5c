"""Drive pipeline runs: follow what changed, refresh step states, submit what is due, end runs.

What changed comes from two feeds read from persisted cursors, as the monitor reads task changes:
the run store's (runs created, retried, or written here) and every compute target's task changes
(a step's task ended). Each changed run is then *advanced*: its steps' tasks are read again, the
pure ``service.pipelines.plan`` decides, and the decision is applied, saved over the version read.

Nothing is lost or done twice across a crash at any point:

- A step's task is submitted under the key ``(algorithm, "<run_id>.<step>.<attempt>")``, which the
  task store makes idempotent: a run advanced again after a crash that followed the submit but
  preceded the save gets the same task back.
- The outcome event is put in the outbox (its id fixed by run, outcome and retry) before the run is
  saved as ended; a crash between the two puts the same event again, which the outbox ignores.
- Cursors are saved after the runs they name were advanced; a crash replays them, harmlessly.
"""

from __future__ import annotations

import logging
import time

from conductor.metrics import PIPELINE_RUNS, STEPS_SUBMITTED
from conductor.moves import place_inputs
from monitor import events
from monitor.events import Linker, local_link
from monitor.outbox import Outbox
from service import logs
from service.catalog.pipeline import PipelineStep
from service.domain import JobState, ScanRequest, TaskInfo
from service.enqueue import submit_items
from service.errors import BackendUnavailable, ScantideError, TaskNotFound
from service.pipelines.plan import plan
from service.pipelines.store import PipelineStore, PipelineVersion, Run
from service.pipelines.targets import Target, Targets

log = logging.getLogger(__name__)

RUNS_CURSOR = "conductor:runs_cursor"  # kept in the monitor's outbox, beside its own
SWEEP_EVERY_S = 30.0  # every active run is advanced this often, whatever the feeds said


class UnknownCompute(ScantideError):
    code = "unknown_compute"


def step_scan_id(run: Run, step: str) -> str:
    return f"{run.run_id}.{step}.{run.steps[step].attempt}"


class Conductor:
    def __init__(self, store: PipelineStore, targets: Targets, outbox: Outbox, *, link: Linker = local_link,
                 page_size: int = 500) -> None:
        self.store, self.targets, self.outbox, self.link = store, targets, outbox, link
        self.page_size = page_size
        self._next_sweep = 0.0
        self._pipelines: dict[tuple[str, str], PipelineVersion] = {}  # versions never change: parsed once

    def tick(self) -> int:
        """Advance every run that changed since the last tick; returns how many runs were advanced."""
        dirty: set[str] = set()
        saved = {RUNS_CURSOR: int(self.outbox.get(RUNS_CURSOR, 0))}
        cursors = dict(saved)
        while True:  # the pipeline store failing raises: no run can advance without it
            ids, cursors[RUNS_CURSOR] = self.store.changed_since(cursors[RUNS_CURSOR], self.page_size)
            dirty.update(ids)
            if len(ids) < self.page_size:
                break
        for name, target in self.targets.items():
            if not self._used(name):
                continue
            key = f"conductor:changes_cursor:{name}"
            saved[key] = cursors[key] = self.outbox.get(key)
            try:
                while True:
                    page = target.backend.changes(cursors[key], self.page_size)
                    dirty.update(str(c.task.params["pipeline_run"]) for c in page.changes
                                 if c.task.params.get("pipeline_run"))
                    cursors[key] = page.cursor
                    if not page.more:
                        break
            except BackendUnavailable as exc:  # one target down stops no run of the others
                cursors[key] = saved[key]
                log.warning("compute_target_unavailable target=%s error=%s", name, exc.message)
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_EVERY_S
            dirty.update(self.store.active_run_ids())
        for run_id in sorted(dirty):
            try:
                with logs.bind(run_id=run_id):
                    self.advance(run_id)
            except BackendUnavailable as exc:  # a target (or the store) is down: the sweep comes back to it
                log.warning("run_waits run_id=%s error=%s", run_id, exc.message)
            except Exception:  # noqa: BLE001 - one broken run must not stop the others; the sweep retries it
                log.exception("run_advance_failed run_id=%s", run_id)
        if cursors != saved:
            self.outbox.append([], state=cursors)
        return len(dirty)

    def _used(self, target: str) -> bool:
        """The own target is always followed; another only once a run uses it (it may be remote)."""
        return target == self.targets.default or self.targets[target]._backend is not None

    def advance(self, run_id: str) -> Run | None:
        """Bring one run up to date; the run as saved (None: unknown run). Lines logged meanwhile, and
        the tasks of its steps, carry the id of the request that started it."""
        for _ in range(10):
            run = self.store.get_run(run_id)
            if run is None or run.ended:
                return run
            with logs.bind(run_id=run.run_id, scan_id=run.scan_id, request_id=run.request_id):
                changed = self._apply(run)
            if not changed:
                return run
            saved = self.store.save_run(run)
            if saved is not None:
                if saved.ended:
                    PIPELINE_RUNS.labels(saved.pipeline, saved.state).inc()
                    with logs.bind(scan_id=saved.scan_id, request_id=saved.request_id):
                        log.info("run_%s run_id=%s pipeline=%s scan_id=%s", saved.state, saved.run_id,
                                 saved.pipeline, saved.scan_id)
                return saved
        log.warning("run_busy run_id=%s: changed by another writer ten times in a row; next tick", run_id)
        return None

    def _apply(self, run: Run) -> bool:
        """Refresh, plan and act on ``run`` in memory (tasks submitted, event put); whether it changed."""
        key = (run.pipeline, run.version)
        if key not in self._pipelines:
            found = self.store.get(*key)
            if found is None:  # cannot happen: versions are never deleted
                raise ScantideError(f"run {run.run_id} names pipeline {run.pipeline} {run.version}, which is missing")
            self._pipelines[key] = found
        pipeline = self._pipelines[key]
        changed = self._refresh(run)
        decision = plan(pipeline.spec, run)
        for name, why in decision.skip.items():
            run.steps[name].state = "skipped"
            run.steps[name].error = {"code": "skipped", "message": why}
            changed = True
        for name in decision.submit:
            self._submit(run, name, pipeline.spec.step(name))
            changed = True
        if run.state == "queued":
            run.state, changed = "running", True
        if decision.outcome is not None:
            run.state = decision.outcome
            if decision.failed_step is not None:
                step = run.steps[decision.failed_step]
                run.error = {"step": decision.failed_step, **(step.error or {"code": "failed", "message": ""})}
            run.updated_at = time.time()  # the event's time; the save stamps its own
            self.outbox.append([events.pipeline_outcome(run, self.link)])
            changed = True
        return changed

    def _refresh(self, run: Run) -> bool:
        changed = False
        for name, step in run.steps.items():
            if step.state not in ("queued", "running") or step.task_id is None:
                continue
            try:
                task = self._target(step.compute).backend.get_task(step.task_id)
                state, result, error = _step_state(task)
            except TaskNotFound:
                state, result, error = "failed", None, {
                    "code": "task_missing", "message": f"step {name}'s task {step.task_id} is no longer in the task "
                    f"store of compute {step.compute} (deleted?): retry the run to run the step again", "log_tail": ""}
            except UnknownCompute as exc:
                state, result, error = "failed", None, {"code": exc.code, "message": exc.message, "log_tail": ""}
            if (state, result, error) != (step.state, step.result, step.error):
                step.state, step.result, step.error = state, result, error
                changed = True
        return changed

    def _target(self, name: str) -> Target:
        if name not in self.targets:
            raise UnknownCompute(f"compute target {name!r} is no longer configured (known: "
                                 f"{', '.join(self.targets)}): configure it again and retry the run")
        return self.targets[name]

    def _submit(self, run: Run, name: str, spec: PipelineStep) -> None:
        step = run.steps[name]
        if step.task_id is None:
            step.attempt += 1
        try:
            target = self._target(step.compute)
            scan_uri, step_inputs, moved = place_inputs(run, name, spec.inputs, target)
            request = ScanRequest(scan_id=step_scan_id(run, name), scan_uri=scan_uri, algorithm=step.algorithm,
                                  algorithm_version=step.version, params=dict(spec.params) or None,
                                  metadata=run.metadata)
            item = target.enqueuer.prepare(request)
            item.params.update(pipeline_run=run.run_id, pipeline_step=name, step_inputs=step_inputs)
            (outcome,) = submit_items(target.backend, [item])
            if isinstance(outcome, ScantideError):
                raise outcome
        except BackendUnavailable:
            raise  # the next tick tries again
        except Exception as exc:  # noqa: BLE001 - anything else would fail again: the step fails, saying why
            code, message = ((exc.code, exc.message) if isinstance(exc, ScantideError) else
                             ("input_unavailable" if isinstance(exc, OSError) else "internal_error",
                              f"{type(exc).__name__}: {exc}"))
            step.state, step.error = "failed", {"code": code, "message": message, "log_tail": ""}
            log.warning("step_refused run_id=%s step=%s code=%s message=%s", run.run_id, name, code, message)
            return
        step.task_id, step.state, step.bytes_moved = outcome.task.task_id, "queued", step.bytes_moved + moved
        if outcome.created:  # a run advanced again after a crash gets its task back, not a new one
            STEPS_SUBMITTED.labels(step.compute).inc()
        with logs.bind(task_id=outcome.task.task_id):
            log.info("step_submitted run_id=%s step=%s task_id=%s compute=%s created=%s bytes_moved=%d", run.run_id,
                     name, outcome.task.task_id, step.compute, outcome.created, moved)


def _step_state(task: TaskInfo) -> tuple[str, dict | None, dict | None]:
    if task.state is JobState.completed:
        if task.result:
            return "completed", task.result, None
        return "failed", None, {"code": "no_result", "message": "the task ended as completed but recorded no result",
                                "log_tail": ""}
    if task.state in (JobState.failed, JobState.stopped):
        err = task.error
        return "failed", None, ({"code": err.code, "message": err.message, "log_tail": err.log_tail} if err else
                                {"code": task.state.value, "message": f"the task was {task.state.value}",
                                 "log_tail": ""})
    return task.state.value, None, None
