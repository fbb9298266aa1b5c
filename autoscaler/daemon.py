"""The autoscaler's tick: observe → decide → act → journal. The same code runs for real (wall
clock, threads for launches) and in the simulator (virtual clock, inline launches).

Observe lists instances from the provider (the truth: a restarted daemon rebuilds its view from
it) and joins them with the worker registry: an instance's slots register as workers under the
instance id (one slot) or ``<instance id>:<k>`` (``model.slot_worker_ids``; ``model.instance_of``
joins them back). It also carries what the daemon measures over ticks (``_learn``): the arrival
rate over the pool's window and over an hour, the service time and its variation, and the queue
wait of each task that started in the last hour (read from the store as each is first seen
running). ``policy.decide`` is a pure function of that snapshot. Acting never blocks the
tick on a launch; a launch that fails for capacity falls back to the pool's next option. As a
last safety net the daemon refuses to terminate an instance while a slot's worker holds a task.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from autoscaler.model import (
    HOURLY_WINDOW_S,
    Action,
    Drain,
    Instance,
    InstanceState,
    Launch,
    PoolConfig,
    PoolSnapshot,
    Snapshot,
    Start,
    Stop,
    Terminate,
    instance_of,
)
from autoscaler.providers.base import CapacityError, ComputeProvider, ProviderInstance
from service.domain import QueueStats, TaskInfo, WorkerInfo
from service.errors import ScantideError

log = logging.getLogger(__name__)

RATE_WARMUP_S = 600.0  # see _rate
RECENT_WAITS_S = 3600.0  # the snapshot carries the waits of the tasks that started this long ago at most

Policy = Callable[[Snapshot, float, dict[str, PoolConfig]], list[Action]]


class QueueView(Protocol):
    """What the autoscaler reads from the task store; ``TaskBackend`` satisfies it."""

    def queue_stats(self, queue: str) -> QueueStats: ...

    def get_task(self, task_id: str) -> TaskInfo: ...  # its queued_at and started_at give its wait

    def workers(self, queue: str | None = None) -> list[WorkerInfo]: ...

    def request_drain(self, worker_id: str) -> None: ...


class Journal:
    """Every decision with its reason: JSON lines on disk (when given a path) and the last few in memory."""

    def __init__(self, path: Path | None = None, keep: int = 500) -> None:
        self.path = path
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, now: float, kind: str, pool: str, reason: str, **fields: Any) -> None:
        entry = {"at": now, "kind": kind, "pool": pool, "reason": reason, **fields}
        with self._lock:
            self.recent.append(entry)
            if self.path is not None:
                with open(self.path, "a") as f:
                    f.write(json.dumps(entry, default=str) + "\n")

    def tail(self, n: int = 20) -> list[dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return list(self.recent)[-n:]
        lines = self.path.read_text().splitlines()[-n:]
        return [json.loads(line) for line in lines]


@dataclass
class _Ewma:
    """Exponentially weighted mean: each sample weighs ``alpha`` (or the weight ``add`` is given)."""

    alpha: float = 0.2
    value: float | None = None

    def add(self, x: float, alpha: float | None = None) -> None:
        a = self.alpha if alpha is None else alpha
        self.value = x if self.value is None else a * x + (1 - a) * self.value


@dataclass
class _PoolMemory:
    """What the daemon learns over ticks; all of it can be lost on restart without harm."""

    last_enqueued: int | None = None
    last_at: float | None = None
    # Weighted by the time between ticks; starts at 0 so a first busy tick does not read as a
    # sustained rate (``_rate`` takes the start out once RATE_WARMUP_S have passed).
    arrival_rate: _Ewma = field(default_factory=lambda: _Ewma(value=0.0))
    # the same over HOURLY_WINDOW_S: Erlang sizing wants a rate steadier than a scale-out's
    hourly_rate: _Ewma = field(default_factory=lambda: _Ewma(value=0.0))
    rate_since: float | None = None  # the first tick that measured arrivals
    service: _Ewma = field(default_factory=_Ewma)  # one task's run time on a slot, seconds
    service_sq: _Ewma = field(default_factory=_Ewma)  # its square, for the variance
    last_pending: int | None = None
    last_arrival_at: float | None = None  # the tick that last saw the queue's count grow
    waits: deque[tuple[float, float]] = field(default_factory=deque)  # (first seen running, wait s), oldest first
    running_since: dict[str, float] = field(default_factory=dict)  # task held by a slot → first seen, unix s
    launches_in_flight: int = 0
    launches_in_flight_price: float = 0.0  # $/h they will bill, at the option each is trying now
    interrupted: set[str] = field(default_factory=set)  # instances journaled as taken back by the provider


def _rate(mem: _PoolMemory, smoothed: _Ewma, now: float, window_s: float) -> float:
    """A smoothed arrival rate, arrivals/s. The smoothing starts from 0: divided by the weight it has
    given to what it measured so far (at least RATE_WARMUP_S of it), it is the mean rate of that,
    so a daemon just started (or restarted) does not read a busy queue as a quiet one for a window."""
    if mem.rate_since is None or not smoothed.value:
        return 0.0
    measured_s = max(now - mem.rate_since, min(RATE_WARMUP_S, window_s))
    return smoothed.value / (1 - math.exp(-measured_s / window_s))


def _cv2(mem: _PoolMemory) -> float | None:
    mean, sq = mem.service.value, mem.service_sq.value
    return None if not mean or sq is None else max(0.0, sq / mean ** 2 - 1.0)


class Autoscaler:
    def __init__(self, pools: list[PoolConfig], provider: ComputeProvider, queues: QueueView, policy: Policy, *,
                 journal: Journal | None = None, clock: Callable[[], float] = time.time,
                 executor: Executor | None = None) -> None:
        self.pools = {p.name: p for p in pools}
        self.provider = provider
        self.queues = queues
        self.policy = policy
        self.journal = journal or Journal()
        self.clock = clock
        self.executor = executor  # None: launch inline (the simulator)
        self._memory = {p.name: _PoolMemory() for p in pools}
        self._lock = threading.Lock()
        self.last_snapshot: Snapshot | None = None  # what the last tick observed (the status page's fleet)

    # -- observe ---------------------------------------------------------------------------
    def observe(self, now: float) -> Snapshot:
        return Snapshot(now=now, pools={name: self._observe_pool(pool, now) for name, pool in self.pools.items()})

    def _observe_pool(self, pool: PoolConfig, now: float) -> PoolSnapshot:
        mem = self._memory[pool.name]
        stats = self.queues.queue_stats(pool.queue)
        listed = self.provider.list_instances(pool.name)
        ids = {p.id for p in listed}
        self._note_interruptions(pool, mem, listed, now)
        slots: dict[str, list[WorkerInfo]] = defaultdict(list)
        for w in self.queues.workers(pool.queue):
            iid = instance_of(w.worker_id, ids)
            if iid is not None:
                slots[iid].append(w)
        instances = tuple(self._classify(pool, p, slots.get(p.id, []), now) for p in listed)
        self._learn(mem, stats, instances, now, pool.arrival_window_s)
        with self._lock:
            in_flight, in_flight_price = mem.launches_in_flight, mem.launches_in_flight_price
        return PoolSnapshot(
            pool=pool.name, pending=stats.pending, running=stats.running,
            oldest_queued_age_s=stats.oldest_queued_age_s, arrival_rate_per_s=_rate(mem, mem.arrival_rate, now, pool.arrival_window_s),
            hourly_arrival_rate_per_s=_rate(mem, mem.hourly_rate, now, HOURLY_WINDOW_S),
            instances=instances, launches_in_flight=in_flight, launches_in_flight_price=in_flight_price,
            service_time_s=mem.service.value, service_time_cv2=_cv2(mem),
            recent_waits_s=tuple(w for _, w in mem.waits),
            quiet_s=None if mem.last_arrival_at is None else now - mem.last_arrival_at,
        )

    def _note_interruptions(self, pool: PoolConfig, mem: _PoolMemory, listed: list[ProviderInstance],
                            now: float) -> None:
        """Journal, once each, the instances the provider is taking back. They are leaving (shutting
        down: not capacity), so the policy replaces them like any other; their workers have handed
        their tasks back (``service.spot``) or, silent, lose them when their leases run out."""
        taken = {p.id for p in listed if p.interrupted}
        for iid in sorted(taken - mem.interrupted):
            self.journal.record(now, "interrupted", pool.name, "spot interruption: EC2 is taking the instance back",
                                instances=[iid])
        mem.interrupted = taken

    @staticmethod
    def _classify(pool: PoolConfig, p: ProviderInstance, workers: list[WorkerInfo], now: float) -> Instance:
        """One instance from the provider's record and its slots' workers. A silent slot (its agent
        died) neither serves nor holds a task; the instance is lost only when every slot is silent."""
        live = [w for w in workers if now - w.last_seen <= pool.lost_after_s]

        def make(state: InstanceState, since: float) -> Instance:
            return Instance(id=p.id, pool=pool.name, option=p.option, state=state, launched_at=p.launched_at,
                            state_since=since, worker_ids=tuple(sorted(w.worker_id for w in workers)),
                            task_ids=tuple(sorted(w.task_id for w in live if w.task_id is not None)),
                            slots=pool.slots)

        def idle_since(ws: list[WorkerInfo]) -> float:  # since the last of them became idle
            return max(w.idle_since or w.last_seen for w in ws)

        if p.provider_state == "stopped":
            return make(InstanceState.stopped, p.launched_at)
        if p.provider_state in ("stopping", "shutting-down"):
            return make(InstanceState.stopping, p.launched_at)
        if not workers:
            return make(InstanceState.booting, p.launched_at)
        if not live:
            return make(InstanceState.lost, max(w.last_seen for w in workers))
        if all(w.draining for w in live):
            return make(InstanceState.draining, idle_since(live))
        if any(w.task_id is not None for w in live):
            return make(InstanceState.busy, max(w.last_seen for w in live))
        return make(InstanceState.idle, idle_since(live))

    def _learn(self, mem: _PoolMemory, stats: QueueStats, instances: tuple[Instance, ...], now: float,
               window_s: float) -> None:
        # A task's run time on its slot: from the tick that first saw it held to the first that did not.
        held = {t for inst in instances if inst.state in (InstanceState.busy, InstanceState.draining)
                for t in inst.task_ids}
        for task, since in sorted(mem.running_since.items()):  # in one order: the means do not depend on hashing
            if task not in held:
                mem.service.add(now - since)
                mem.service_sq.add((now - since) ** 2)
        started = sorted(t for t in held if t not in mem.running_since)
        mem.running_since = {t: mem.running_since.get(t, now) for t in sorted(held)}
        self._learn_waits(mem, started, now)
        # Arrivals: the growth of the queue's enqueued count; where the store does not keep one
        # (ClearML), the tasks that started plus the growth of the queue.
        total = stats.enqueued_total
        if total is None and mem.last_pending is not None:
            total = (mem.last_enqueued or 0) + max(0, len(started) + stats.pending - mem.last_pending)
        if total is not None and mem.last_enqueued is not None and mem.last_at is not None and now > mem.last_at:
            dt = now - mem.last_at
            # smoothed over a time constant, not a number of ticks, so the rate means the same at any tick
            mem.arrival_rate.add(max(0, total - mem.last_enqueued) / dt, alpha=1 - math.exp(-dt / window_s))
            mem.hourly_rate.add(max(0, total - mem.last_enqueued) / dt, alpha=1 - math.exp(-dt / HOURLY_WINDOW_S))
            mem.rate_since = mem.last_at if mem.rate_since is None else mem.rate_since
            if total > mem.last_enqueued:
                mem.last_arrival_at = now
        mem.last_enqueued, mem.last_at, mem.last_pending = total, now, stats.pending

    def _learn_waits(self, mem: _PoolMemory, started: list[str], now: float) -> None:
        """The queue wait of each task first seen running, from the store's queued and started times;
        kept for ``RECENT_WAITS_S``."""
        for task_id in started:
            try:
                task = self.queues.get_task(task_id)
            except ScantideError as exc:  # gone, or the store is away: one wait less, never a failed tick
                log.debug("autoscaler_wait_unknown task=%s error=%s", task_id, exc.message)
                continue
            if task.queued_at is not None and task.started_at is not None:
                mem.waits.append((now, max(0.0, task.started_at - task.queued_at)))
        while mem.waits and mem.waits[0][0] < now - RECENT_WAITS_S:
            mem.waits.popleft()

    # -- act -------------------------------------------------------------------------------
    def tick(self) -> list[Action]:
        now = self.clock()
        snapshot = self.last_snapshot = self.observe(now)
        actions = self.policy(snapshot, now, self.pools)
        for action in actions:
            self.act(action, snapshot, now)
        return actions

    def act(self, action: Action, snapshot: Snapshot, now: float) -> None:
        pool = self.pools[action.pool]
        if isinstance(action, Launch):
            self._launch(pool, action, now)
        elif isinstance(action, Start):
            self._start(pool, action, snapshot, now)
        elif isinstance(action, Drain):
            for worker_id in action.worker_ids:  # every slot: the instance goes only when all are drained
                self.queues.request_drain(worker_id)
            self.journal.record(now, "drain", pool.name, action.reason, instance=action.instance_id,
                                workers=list(action.worker_ids))
        elif isinstance(action, (Terminate, Stop)):
            # Read the workers again (a slot may have claimed a task since the snapshot). A lost worker's
            # task is orphaned already: its lease runs out and the task is re-queued.
            busy = {instance_of(w.worker_id, action.instance_ids) for w in self.queues.workers(pool.queue)
                    if w.task_id is not None and now - w.last_seen <= pool.lost_after_s}
            safe = [i for i in action.instance_ids if i not in busy]
            refused = sorted(set(action.instance_ids) - set(safe))
            if refused:
                self.journal.record(now, "refused", pool.name, "worker holds a task", instances=refused)
            if safe:
                kind = "terminate" if isinstance(action, Terminate) else "stop"
                (self.provider.terminate if kind == "terminate" else self.provider.stop)(safe)
                self.journal.record(now, kind, pool.name, action.reason, instances=safe)

    def _launch(self, pool: PoolConfig, action: Launch, now: float) -> None:
        self._reserve(pool, action.count, action.count * action.option.price_per_hour)
        self.journal.record(now, "launch", pool.name, action.reason, count=action.count, option=asdict(action.option))
        if self.executor is None:
            self._launch_with_fallback(pool, action)
        else:
            self.executor.submit(self._launch_with_fallback, pool, action)

    def _reserve(self, pool: PoolConfig, count: int, price: float) -> None:
        """Add ``count`` instances billing ``price`` $/h in all to the launches in flight (negative: remove)."""
        mem = self._memory[pool.name]
        with self._lock:
            mem.launches_in_flight += count
            mem.launches_in_flight_price = max(0.0, mem.launches_in_flight_price + price)

    def _launch_with_fallback(self, pool: PoolConfig, action: Launch) -> list[str]:
        """Try the chosen option, then each later one (the pool's order of preference), until one has
        capacity. Under ``max_cost_per_hour`` an option launches only as many as the launch's budget
        buys at its price, and one whose price buys none is skipped."""
        options = list(pool.options)
        start = options.index(action.option) if action.option in options else 0
        count, price = action.count, action.count * action.option.price_per_hour  # reserved in flight
        over_budget = False
        try:
            for option in options[start:]:
                n = action.count
                if action.budget_per_hour is not None:
                    n = min(n, math.floor(action.budget_per_hour / max(option.price_per_hour, 1e-9) + 1e-9))
                if n <= 0:
                    self.journal.record(self.clock(), "launch_failed", pool.name,
                                        f"{option.instance_type} {option.market.value} at "
                                        f"${option.price_per_hour:.3f}/h does not fit the "
                                        f"${action.budget_per_hour:.3f}/h left under max_cost_per_hour",
                                        option=asdict(option), fallback=True)
                    over_budget = True
                    continue
                self._reserve(pool, n - count, n * option.price_per_hour - price)
                count, price = n, n * option.price_per_hour
                try:
                    ids = self.provider.launch(pool.name, option, n)
                except CapacityError as exc:
                    self.journal.record(self.clock(), "launch_failed", pool.name, str(exc),
                                        option=asdict(option), fallback=True)
                    continue
                except Exception as exc:  # a broken launch must not kill the daemon
                    log.exception("launch_error pool=%s", pool.name)
                    self.journal.record(self.clock(), "launch_failed", pool.name, f"{type(exc).__name__}: {exc}",
                                        option=asdict(option), fallback=False)
                    return []
                log.info("launched pool=%s ids=%s type=%s market=%s", pool.name, ids, option.instance_type,
                         option.market.value)
                return ids
            self.journal.record(self.clock(), "launch_failed", pool.name, "no option had capacity" + (
                " within max_cost_per_hour" if over_budget else ""), fallback=False)
            return []
        finally:
            self._reserve(pool, -count, -price)

    def _start(self, pool: PoolConfig, action: Start, snapshot: Snapshot, now: float) -> None:
        try:
            started = self.provider.start(list(action.instance_ids))
        except CapacityError as exc:
            started = []
            self.journal.record(now, "start_failed", pool.name, str(exc), instances=list(action.instance_ids))
        self.journal.record(now, "start", pool.name, action.reason, instances=started)
        missing = [i for i in snapshot.pools[pool.name].instances
                   if i.id in action.instance_ids and i.id not in started]
        if missing:
            # within what the policy set aside under the cap for the starts that failed
            budget = None if pool.max_cost_per_hour is None else sum(i.option.price_per_hour for i in missing)
            self._launch(pool, Launch(pool.name, "warm start failed: cold launch instead", pool.options[0],
                                      len(missing), budget), now)
