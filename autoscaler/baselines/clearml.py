"""ClearML's AWS autoscaler policy, re-implemented for comparison only (the simulator's baseline).

Source: ``clearml/clearml`` at 0cc42633 (May 2026), ``clearml/automation/auto_scaler.py`` and
``clearml/automation/aws_driver.py``. Each behaviour, and what it reproduces:

- **Poll every 5 minutes.** ``AutoScaler.supervisor`` ends each loop iteration with
  ``sleep(self.polling_interval_time_min * MINUTE)`` (``ScalerConfig.polling_interval_time_min``
  = 5), so the period is 5 min plus the time the iteration itself took (its REST calls,
  ``poll_overhead_s``, and its blocking launches).
- **Pending workers.** ``supervisor`` keeps ``spun_workers`` (instance → spin time): launched,
  worker not yet registered; a worker that appears in ``get_workers()`` is popped from it.
- **Stuck spin-ups.** ``AutoScaler.stale_workers``: a spun worker not registered after
  ``max_spin_up_time_min`` (30) is spun down (``driver.spin_down_worker``).
- **Idle clock.** ``AutoScaler.update_idle_workers``: a worker a poll sees without a task is
  recorded with ``worker_last_time(worker)`` (its last report, about the poll time) unless it is
  recorded already; the record is dropped only when a poll sees it busy, so a task run between
  two polls does not restart the clock.
- **One instance per queued job minus idle and pending workers.** In ``supervisor``:
  ``spin_up_count = len(entries) - len(free_queue_resources)``, where the free resources are the
  idle workers plus the spun workers of the queue's resources.
- **Per-resource max instances.** ``max_allowed = int(max_instances) - currently_running_workers
  - spun_up_workers``; the resource is the pool's first instance option and its max is
  ``max_instances``.
- **Serial, blocking launches.** ``supervisor`` spins the new machines one after another;
  ``AWSDriver.spin_up_worker`` calls ``run_instances`` and then ``instance.wait_until_running()``
  (boto3 waiter: describe, then every 15 s, at most 40 attempts = 10 min), blocking the loop until
  the instance is ``running``. The spin time (``spun_workers[worker_id] = (resource, time())``)
  is taken after that wait. A launch that raises is logged and skipped.
- **Idle timeout.** In ``supervisor``: idle workers of a resource needed this poll
  (``required_idle_resources``, the queue had entries) are spared; any other worker idle for more
  than ``max_idle_time_min`` (15) is spun down (``AWSDriver.spin_down_worker`` → terminate) once
  ``AutoScaler.is_worker_still_idle`` confirms it holds no task.

No drain, no lost-worker handling, no cost cap, no warm pool, no spot fallback: ClearML has none.

**Slots** (a pool with ``resources.slots = N`` > 1) are not ClearML's: its worker id pattern,
``prefix:name:instance_type:cloud_id`` (``_workers_pattern``), has no room for a slot and ignores
any other id as an "unknown worker", and its user data starts one agent. So that a comparison with
slots sets machines against machines, the baseline is ClearML's loop counted in slots, on the same
N-slot instances: the workers of an instance (``<instance>:<k>``) are joined to it; free resources
are the idle workers plus N per spun instance; it spins up one instance per N queued jobs beyond
them, ``ceil((entries - free) / N)``; ``max_instances`` counts instances; an instance is spun
down once every one of its workers has been idle past ``max_idle_time_min``. With one slot all of
this is the loop above, step for step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass

from autoscaler.daemon import Journal, QueueView
from autoscaler.model import PoolConfig, instance_of
from autoscaler.providers.base import ComputeProvider


@dataclass(frozen=True)
class ClearMLSettings:
    """ClearML's defaults (``ScalerConfig``), in seconds."""

    polling_interval_s: float = 300.0  # polling_interval_time_min = 5
    max_idle_s: float = 900.0  # max_idle_time_min = 15
    max_spin_up_s: float = 1800.0  # max_spin_up_time_min = 30
    waiter_delay_s: float = 15.0  # boto3 InstanceRunning waiter
    waiter_max_attempts: int = 40
    poll_overhead_s: float = 2.0  # the REST calls one poll makes before it decides


class ClearMLAutoscaler:
    """The supervisor loop for one pool, as a process: ``run()`` yields the seconds it blocks or sleeps."""

    def __init__(self, pool: PoolConfig, provider: ComputeProvider, queues: QueueView, clock: Callable[[], float],
                 settings: ClearMLSettings = ClearMLSettings(), journal: Journal | None = None) -> None:
        self.pool = pool
        self.provider = provider
        self.queues = queues
        self.clock = clock
        self.settings = settings
        self.journal = journal or Journal()
        self.idle_workers: dict[str, float] = {}  # worker → idle since (its last report when first seen idle)
        self.spun_workers: dict[str, float] = {}  # instance → spin time, until a worker of it registers
        self.previous_workers: set[str] = set()  # instances whose workers have registered

    def run(self) -> Generator[float, None, None]:
        while True:
            yield self.settings.poll_overhead_s
            yield from self.poll()
            yield self.settings.polling_interval_s

    def poll(self) -> Generator[float, None, None]:
        """One iteration of ``AutoScaler.supervisor``'s loop."""
        s, pool, slots = self.settings, self.pool, self.pool.slots
        all_workers = self.queues.workers(pool.queue)
        known = set(self.spun_workers) | self.previous_workers
        instance = {w.worker_id: instance_of(w.worker_id, known) or w.worker_id for w in all_workers}
        for worker in all_workers:
            iid = instance[worker.worker_id]
            if iid in self.previous_workers:
                continue
            if self.spun_workers.pop(iid, None) is not None:
                self.previous_workers.add(iid)
        for iid, spun_at in list(self.spun_workers.items()):
            if self.clock() - spun_at > s.max_spin_up_s:
                del self.spun_workers[iid]
                self._spin_down(iid, "stuck spin-up")

        if not all_workers:
            self.idle_workers.clear()
        for worker in all_workers:
            if worker.task_id is None:
                self.idle_workers.setdefault(worker.worker_id, worker.last_seen)
            else:
                self.idle_workers.pop(worker.worker_id, None)

        entries = self.queues.queue_stats(pool.queue).pending
        free = len(self.idle_workers) + len(self.spun_workers) * slots
        required_idle = entries > 0 and free > 0
        spin_up_count = math.ceil((entries - free) / slots) if entries > 0 else 0
        max_allowed = pool.max_instances - len(set(instance.values())) - len(self.spun_workers)
        for _ in range(min(spin_up_count, max_allowed) if spin_up_count > 0 and max_allowed > 0 else 0):
            yield from self._spin_up(entries)

        workers_of: dict[str, set[str]] = {}
        for wid, iid in instance.items():
            workers_of.setdefault(iid, set()).add(wid)
        for wid in list(self.idle_workers):
            if required_idle or wid not in self.idle_workers:
                continue
            iid = instance.get(wid, wid)
            wids = sorted(workers_of.get(iid, set()) | {wid})  # the instance goes only with all its workers
            if all(self.clock() - self.idle_workers.get(w, math.inf) > s.max_idle_s for w in wids) \
                    and all(self._still_idle(w) for w in wids):
                self._spin_down(iid, f"idle for more than {s.max_idle_s:.0f}s")
                for w in wids:
                    self.idle_workers.pop(w, None)

    def _spin_up(self, entries: int) -> Generator[float, None, None]:
        option = self.pool.options[0]
        try:
            iid = self.provider.launch(self.pool.name, option, 1)[0]
        except Exception as exc:  # noqa: BLE001 - ClearML logs any launch failure and goes on
            self.journal.record(self.clock(), "launch_failed", self.pool.name, str(exc))
            return
        self.journal.record(self.clock(), "launch", self.pool.name, f"{entries} queued", instance=iid)
        for attempt in range(self.settings.waiter_max_attempts):
            if self._provider_state(iid) in ("running", None):
                break
            if attempt == self.settings.waiter_max_attempts - 1:
                self.journal.record(self.clock(), "launch_failed", self.pool.name, "waiter gave up", instance=iid)
                return
            yield self.settings.waiter_delay_s
        self.spun_workers[iid] = self.clock()

    def _spin_down(self, iid: str, reason: str) -> None:
        self.provider.terminate([iid])
        self.journal.record(self.clock(), "terminate", self.pool.name, reason, instances=[iid])

    def _still_idle(self, worker_id: str) -> bool:
        for worker in self.queues.workers(self.pool.queue):
            if worker.worker_id == worker_id:
                return worker.task_id is None
        return True

    def _provider_state(self, iid: str) -> str | None:
        for inst in self.provider.list_instances(self.pool.name):
            if inst.id == iid:
                return inst.provider_state
        return None
