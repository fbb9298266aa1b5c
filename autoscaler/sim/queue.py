"""A simulated task queue with its workers; it satisfies the daemon's ``QueueView`` protocol.

FIFO. An instance that becomes ready registers one worker per slot (``slot_worker_ids``). A
registered worker that is idle and not draining takes the next task at once (when several are
idle, one picked at random from a seeded stream, as polling agents race for the queue). A task
runs for its trace service time (one task alone on an instance) times the pool's slot slowdown
(1 for one slot): a slot shares its instance with the others. A worker asked to drain
acknowledges at once, finishes its task and takes no new one. Workers heartbeat continuously
(``last_seen`` is now) while their instance runs; the workers of an instance that goes away give
their tasks back to the head of the queue (a lost run: it counts as an attempt, as a lease that
runs out does).

On a spot interruption notice (``hand_back``) the instance's workers do what ``scantide worker``
does (``service.spot``): they stop their tasks at once and hand them back to the head of the queue,
a run that does not count as an attempt, and drain (they take no new task) until the instance goes.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from autoscaler.model import slot_worker_ids
from autoscaler.sim.clock import EventLoop
from service.domain import JobState, QueueStats, TaskInfo, WorkerInfo
from service.errors import TaskNotFound


@dataclass
class SimTask:
    index: int
    arrival_s: float
    service_s: float
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    runs: int = 0  # times a worker started it
    interruptions: int = 0  # runs stopped by a spot interruption notice and handed back

    @property
    def attempts(self) -> int:
        """Runs that count against an attempt limit: every run but those a spot interruption stopped."""
        return self.runs - self.interruptions

    @property
    def wait_s(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.arrival_s


@dataclass
class _Worker:
    id: str
    task: SimTask | None = None
    idle_since: float | None = None
    draining: bool = False
    generation: int = 0


class SimQueue:
    def __init__(self, loop: EventLoop, queue: str, seed: int, on_change: Callable[[], None] = lambda: None,
                 slots: int = 1, slowdown: float = 1.0) -> None:
        """``slots``: workers per instance; ``slowdown``: a task's run time on a slot over its trace time."""
        self.loop = loop
        self.queue = queue
        self.slots = slots
        self.slowdown = slowdown
        self.pending: deque[SimTask] = deque()
        self.enqueued_total = 0
        self.interrupted = 0  # tasks given back because their instance went away while running them
        self.finished = 0
        self._tasks: dict[str, SimTask] = {}  # by task id, as workers report it
        self._workers: dict[str, _Worker] = {}
        self._rng = random.Random(f"{seed}:dispatch")
        self._on_change = on_change

    # -- the QueueView protocol ------------------------------------------------------------
    def queue_stats(self, queue: str) -> QueueStats:
        if queue != self.queue:
            return QueueStats(queue=queue, pending=0, running=0, oldest_queued_age_s=0.0, enqueued_total=0)
        oldest = self.loop.now - self.pending[0].arrival_s if self.pending else 0.0
        running = sum(1 for w in self._workers.values() if w.task is not None)
        return QueueStats(queue=queue, pending=len(self.pending), running=running, oldest_queued_age_s=oldest,
                          enqueued_total=self.enqueued_total)

    def workers(self, queue: str | None = None) -> list[WorkerInfo]:
        if queue not in (None, self.queue):
            return []
        return [WorkerInfo(worker_id=w.id, queue=self.queue, task_id=f"t{w.task.index}" if w.task else None,
                           last_seen=self.loop.now, idle_since=w.idle_since, draining=w.draining)
                for w in self._workers.values()]

    def get_task(self, task_id: str) -> TaskInfo:
        """What the daemon reads of a task: its queue and started times (the arrival, and the last start)."""
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        state = (JobState.completed if task.finished_at is not None else
                 JobState.running if task.started_at is not None else JobState.queued)
        return TaskInfo(task_id=task_id, algorithm="sim", scan_id=task_id, queue=self.queue, state=state, params={},
                        output_uri="", queued_at=task.arrival_s, started_at=task.started_at,
                        finished_at=task.finished_at)

    def request_drain(self, worker_id: str) -> None:
        if worker_id in self._workers:
            self._workers[worker_id].draining = True

    # -- what the simulated world does -----------------------------------------------------
    def submit(self, task: SimTask) -> None:
        self.pending.append(task)
        self.enqueued_total += 1
        self._tasks[f"t{task.index}"] = task
        self._dispatch()

    def register(self, instance_id: str) -> None:
        """The instance's agents start: one worker per slot."""
        for worker_id in slot_worker_ids(instance_id, self.slots):
            self._workers[worker_id] = _Worker(id=worker_id, idle_since=self.loop.now)
        self._dispatch()

    def deregister(self, instance_id: str) -> None:
        """The instance goes away with its workers; their tasks go back to the head of the queue."""
        workers = [self._workers.pop(w, None) for w in slot_worker_ids(instance_id, self.slots)]
        tasks = sorted((w.task for w in workers if w is not None and w.task is not None), key=lambda t: t.index)
        self.interrupted += len(tasks)
        self._requeue(tasks)

    def hand_back(self, instance_id: str) -> None:
        """A spot interruption notice for the instance: its workers stop their tasks, hand them back
        uncounted and drain."""
        workers = [w for w in map(self._workers.get, slot_worker_ids(instance_id, self.slots)) if w is not None]
        tasks = sorted((w.task for w in workers if w.task is not None), key=lambda t: t.index)
        for worker in workers:
            if worker.task is not None:
                worker.task.interruptions += 1
                worker.task, worker.idle_since = None, self.loop.now
                worker.generation += 1  # its task's finish no longer counts
            worker.draining = True
        self._requeue(tasks)
        self._on_change()

    def _requeue(self, tasks: list[SimTask]) -> None:
        for task in reversed(tasks):  # in arrival order at the head of the queue
            task.started_at = task.worker_id = None
            self.pending.appendleft(task)
        if tasks:
            self._dispatch()

    def _dispatch(self) -> None:
        while self.pending:
            idle = [w for w in self._workers.values() if w.task is None and not w.draining]
            if not idle:
                break
            worker = self._rng.choice(sorted(idle, key=lambda w: w.id))
            task = self.pending.popleft()
            task.started_at, task.worker_id = self.loop.now, worker.id
            task.runs += 1
            worker.task, worker.idle_since = task, None
            worker.generation += 1
            self.loop.after(task.service_s * self.slowdown, self._finish, worker, worker.generation)
        self._on_change()

    def _finish(self, worker: _Worker, generation: int) -> None:
        if self._workers.get(worker.id) is not worker or worker.generation != generation or worker.task is None:
            return
        worker.task.finished_at = self.loop.now
        self.finished += 1
        worker.task, worker.idle_since = None, self.loop.now
        self._dispatch()
