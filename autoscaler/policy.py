"""The default scaling policy: a pure function of a fleet snapshot and the time; no I/O.

Per pool, every tick:

1. **Hygiene.** An instance booting past ``boot_timeout_s`` and one whose worker is ``lost`` are
   terminated.
2. **Finish drains.** An instance whose worker acknowledged a drain (state ``draining``) and holds
   no task is stopped into the warm pool while the pool is short of its size, else terminated. No
   other running instance is ever stopped or terminated: drain before terminate.
3. **Scale out.** Queued tasks, then the arrivals expected at the smoothed rate before new capacity
   could be ready (a warm start while stopped instances remain, else a cold boot), are placed
   first-come first-served on the capacity there is (idle workers now, busy ones after about half
   a service time, booting instances and launches in flight when their boot should end). New
   capacity is added one instance at a time, warm starts of stopped instances before cold
   launches, while the waiting it saves, priced at ``wait_cost_per_hour``, pays for its boot; the
   first task at zero capacity always gets one (activation on the first tick). A backlog of short
   tasks therefore gets fewer instances than tasks, never one per task. ``max_instances`` and
   ``max_cost_per_hour`` cap the fleet, each instance (and launch in flight) at the price of the
   option it launched with; a ``Launch`` carries the $/h left under the cap, which a fallback to a
   pricier option keeps to (``daemon``).
4. **Keep or drain idle instances (break-even).** The n-th warm instance (busy ones counted
   first) is kept while the arrivals that would find the other n-1 busy, at the smoothed arrival
   rate, are worth its price. For the first, each such arrival served warm saves a replacement: its
   boot billing, the drain round trip and the wait the boot causes (priced at
   ``wait_cost_per_hour``); the replacement is a warm start when the warm pool is on, a cold boot
   otherwise. For the n-th of several, the arrival would instead wait for the first of the others to
   free (about ``service_s / n``), so it saves that wait, or a replacement if that is cheaper. Idle
   instances beyond that are drained, longest idle first; none is kept past ``idle_timeout_s``;
   never below ``min_instances``. With ``idle_policy="fixed"`` an instance is drained after
   ``idle_timeout_s``.
5. **Warm pool.** Its size follows the arrival rate: enough stopped instances for the instances
   a rate-``λ`` stream keeps busy over a service time plus a cold boot (99th percentile of a
   Poisson count, at least one), between the pool's ``min_size`` and ``max_size``. Stopped
   instances bill no compute, so only those beyond ``max_size`` are terminated. Below
   ``min_size``, instances are launched to be initialised, drained and stopped. Only instances of a
   stoppable option (on-demand) are stopped, and the pool is filled with the first such option:
   EC2 refuses to stop a one-time spot instance, so a drained spot instance is terminated.

**Slots.** An instance of a pool with ``resources.slots = N`` runs N tasks at once, each
``resources.slot_slowdown`` times as long as alone (measured, see ``autoscaler.config``). Capacity
is instances × slots: in step 3 every slot is a server of the first-come first-served estimate,
with the slowed service time (the prior ``expected_service_s`` is a task alone; a measured service
time is per slot already), an idle or busy instance's free slots are ready now, and a booting
instance, a launch in flight or a new instance brings N slots. Step 4 weighs instances (each one
N servers), and step 5 counts N slots per stopped instance. An instance is drained, stopped and
terminated whole: every slot's worker is asked to drain.

Every action carries the reason the daemon journals.
"""

from __future__ import annotations

import heapq
import math

from autoscaler.model import (
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
)

# Billed seconds a scale-in costs beyond the idle time: the drain waits a tick for the
# worker's acknowledgement before the instance is stopped or terminated.
DRAIN_ROUND_TRIP_S = 20.0


def decide(snapshot: Snapshot, now: float, config: dict[str, PoolConfig]) -> list[Action]:
    """The actions for every configured pool in ``snapshot``."""
    actions: list[Action] = []
    for name in sorted(snapshot.pools):
        if name in config:
            actions.extend(decide_pool(snapshot.pools[name], now, config[name]))
    return actions


def decide_pool(ps: PoolSnapshot, now: float, pool: PoolConfig) -> list[Action]:
    e = _Economics.of(ps, pool)
    actions: list[Action] = []
    gone: set[str] = set()

    # 1. hygiene
    for inst in ps.in_state(InstanceState.booting):
        if now - inst.launched_at > pool.boot_timeout_s:
            actions.append(Terminate(pool.name, f"booting for {now - inst.launched_at:.0f}s, past boot_timeout_s="
                                                f"{pool.boot_timeout_s:.0f}", (inst.id,)))
            gone.add(inst.id)
    for inst in ps.in_state(InstanceState.lost):
        actions.append(Terminate(pool.name, f"worker silent for {now - inst.state_since:.0f}s (lost_after_s="
                                            f"{pool.lost_after_s:.0f})", (inst.id,)))
        gone.add(inst.id)

    stopped = sorted(ps.in_state(InstanceState.stopped), key=lambda i: i.id)
    parked = len(stopped) + len(ps.in_state(InstanceState.stopping))
    warm_target = _warm_target(pool, e)

    # 2. finish drains: acknowledged, holding no task
    drained = [i for i in ps.in_state(InstanceState.draining) if not i.holds_task]
    # only what EC2 can stop joins the warm pool: a drained one-time spot instance is terminated
    to_stop = [i.id for i in drained if i.option.stoppable][:max(0, warm_target - parked)]
    to_end = [i.id for i in drained if i.id not in to_stop]
    if to_stop:
        actions.append(Stop(pool.name, f"drained; into the warm pool ({parked} of {warm_target} stopped)",
                            tuple(to_stop)))
    if to_end:
        why = "warm pool full" if pool.warm_pool.enabled else "warm pool off"
        actions.append(Terminate(pool.name, f"drained, holds no task ({why})", tuple(to_end)))
    gone.update(i.id for i in drained)

    # what keeps serving the queue
    idle = sorted(ps.in_state(InstanceState.idle), key=lambda i: i.state_since)
    busy = ps.in_state(InstanceState.busy)
    booting = [i for i in ps.in_state(InstanceState.booting) if i.id not in gone]
    leaving_busy = [i for i in ps.in_state(InstanceState.draining) if i.holds_task]
    fleet = len(idle) + len(busy) + len(booting) + len(leaving_busy) + ps.launches_in_flight
    billed_price = sum(i.option.price_per_hour for i in (*idle, *busy, *booting, *leaving_busy))
    billed_price += (ps.launches_in_flight * e.option_price if ps.launches_in_flight_price is None
                     else ps.launches_in_flight_price)

    # 3. scale out
    usable_stopped = stopped if pool.warm_pool.enabled else []
    n_start, n_launch = _scale_out(ps, now, pool, e, idle, busy, booting, len(usable_stopped), fleet, billed_price)
    n_start, n_launch = _within_cap(pool, billed_price, usable_stopped[:n_start], n_launch)
    started = tuple(i.id for i in usable_stopped[:n_start])
    billed_start = billed_price + sum(i.option.price_per_hour for i in usable_stopped[:n_start])
    if started:
        actions.append(Start(pool.name, _scale_out_reason(ps, fleet, "warm start", n_start, e.start_s, e.slots),
                             started))
    if n_launch:
        actions.append(Launch(pool.name, _scale_out_reason(ps, fleet, "cold launch", n_launch, e.boot_s, e.slots),
                              pool.options[0], n_launch, _budget(pool, billed_start)))

    # 4. keep or drain idle instances
    if ps.pending == 0 and idle:
        actions.extend(_scale_in(now, pool, e, idle, len(busy) + len(booting) + ps.launches_in_flight,
                                 billed_price))

    # 5. warm pool upkeep
    if not pool.warm_pool.enabled and stopped:
        actions.append(Terminate(pool.name, "stopped, and the warm pool is off", tuple(i.id for i in stopped)))
    elif pool.warm_pool.enabled:
        # below min_size: launch instances to initialise; once idle they are drained and stopped
        # on the first option EC2 can stop: a one-time spot instance launched here would be terminated
        # at its stop, and launched again, for ever
        existing = fleet + parked + len(to_stop) + n_launch
        billed = billed_start + n_launch * pool.options[0].price_per_hour
        warm_option = next((o for o in pool.options if o.stoppable), None)
        fill = 0 if warm_option is None else min(
            pool.warm_pool.min_size - existing,
            _room(pool, fleet + n_start + n_launch, billed, warm_option.price_per_hour))
        if fill > 0 and warm_option is not None:
            actions.append(Launch(pool.name, f"warm pool below min_size={pool.warm_pool.min_size} with {existing} "
                                             f"instance(s): launching {fill} {warm_option.market.value} to "
                                             f"initialise and stop", warm_option, fill, _budget(pool, billed)))
        excess = parked + len(to_stop) - len(started) - pool.warm_pool.max_size
        spare = sorted((i for i in stopped if i.id not in started), key=lambda i: i.state_since)
        if excess > 0 and spare:
            actions.append(Terminate(pool.name, f"warm pool above max_size={pool.warm_pool.max_size}",
                                     tuple(i.id for i in spare[:excess])))
    return actions


class _Economics:
    """Estimates (measured where the snapshot has them, the pool's priors otherwise) and prices per second."""

    def __init__(self, pool: PoolConfig, rate: float, service_s: float, boot_s: float) -> None:
        self.rate = rate  # arrivals per second, smoothed by the daemon
        self.service_s = service_s  # one task's run time on a slot, seconds
        self.slots = pool.slots  # servers per instance
        self.boot_s = boot_s
        self.start_s = min(pool.expected_start_s, boot_s)
        self.option_price = pool.options[0].price_per_hour
        self.price_s = self.option_price / 3600.0
        self.wait_price_s = pool.wait_cost_per_hour / 3600.0

    @classmethod
    def of(cls, ps: PoolSnapshot, pool: PoolConfig) -> _Economics:
        # the prior is a task alone on an instance: slowed by its slots' sharing; a measurement is per slot
        prior_s = pool.expected_service_s * pool.resources.slot_slowdown
        return cls(pool, max(0.0, ps.arrival_rate_per_s), ps.service_time_s or prior_s, pool.expected_boot_s)

    def ready_at(self, inst: Instance, now: float, warm_pool: bool) -> float:
        """When a booting instance should register. The snapshot does not say whether it was started
        or launched: with the warm pool on, one booting for less than 1.5 warm starts is taken as a
        warm start, any other as a cold boot."""
        elapsed = now - inst.launched_at
        warm = warm_pool and elapsed < 1.5 * self.start_s
        return max(now, inst.launched_at + (self.start_s if warm else self.boot_s))

    def replacement_value(self, warm: bool) -> float:
        """$ saved when an arrival finds a warm instance instead of waiting for a replacement."""
        ready_s = self.start_s if warm else self.boot_s
        return self.price_s * (ready_s + DRAIN_ROUND_TRIP_S) + self.wait_price_s * ready_s

    def keep_value(self, warm: bool, n: int) -> float:
        """$ saved by the n-th warm instance for an arrival that finds the other n-1 full: a replacement
        when there is no other; else the wait for the first of their k = (n-1) × slots busy slots to
        free (the least of k residual service times, about ``service_s / (k + 1)``), or a replacement
        if that is cheaper."""
        replacement = self.replacement_value(warm)
        if n == 1:
            return replacement
        return min(replacement, self.wait_price_s * self.service_s / ((n - 1) * self.slots + 1))

    def worth_keeping(self, warm: bool, limit: int) -> int:
        """How many warm instances (busy ones included) the break-even keeps, at most ``limit``. The
        busy slots are Poisson(rate × service_s); the n-th instance serves the arrivals that find the
        other n-1 instances' (n-1) × slots slots all busy."""
        mu = self.rate * self.service_s
        k, below, term = 0, 0.0, math.exp(-mu)  # below = P(fewer than k slots busy)
        n = 0
        while n < limit and self.rate * max(0.0, 1.0 - below) * self.keep_value(warm, n + 1) >= self.price_s:
            n += 1
            while k < n * self.slots:
                below += term
                k += 1
                term *= mu / k
        return n


def _warm_target(pool: PoolConfig, e: _Economics) -> int:
    if not pool.warm_pool.enabled:
        return 0
    # at least one: a stopped instance bills only its volume, and without one the next scan waits a cold boot
    need = max(1, math.ceil(_poisson_quantile(e.rate * (e.service_s + e.boot_s), 0.99) / e.slots))
    return max(pool.warm_pool.min_size, min(pool.warm_pool.max_size, need))


def _scale_out(ps: PoolSnapshot, now: float, pool: PoolConfig, e: _Economics, idle: list[Instance],
               busy: list[Instance], booting: list[Instance], stopped: int, fleet: int,
               billed_price: float) -> tuple[int, int]:
    """(warm starts, cold launches) to add now."""
    room = _room(pool, fleet, billed_price, e.option_price)
    below_min = max(0, pool.min_instances - fleet)
    if room <= 0 or (ps.pending == 0 and below_min == 0):
        return 0, 0
    # one entry per slot: when it can take its next task
    slots = [now] * sum(i.slots for i in idle)
    for i in busy:
        slots += [now] * i.free_slots + [now + e.service_s / 2] * (i.slots - i.free_slots)
    for i in booting:
        slots += [e.ready_at(i, now, pool.warm_pool.enabled)] * i.slots
    slots += [now + e.boot_s] * (ps.launches_in_flight * e.slots)
    # the queue now, then the arrivals expected before new capacity could be ready: arrivals after
    # that are served as well by capacity added at a later tick, so they justify no instance now
    horizon_s = e.start_s if stopped else e.boot_s
    expected = int(e.rate * horizon_s) if ps.pending else 0
    releases = [now] * ps.pending + [now + (k + 0.5) / e.rate for k in range(expected)]
    wait = _fifo_wait(slots, releases, e.service_s)
    n_start = n_launch = 0
    while n_start + n_launch < room:
        warm = n_start < stopped
        ready = now + (e.start_s if warm else e.boot_s)
        added = [ready] * e.slots  # a new instance brings all its slots
        after = _fifo_wait([*slots, *added], releases, e.service_s)
        needed = n_start + n_launch < below_min or not slots
        if not (needed or (ps.pending and (wait - after) * e.wait_price_s >= e.price_s * (ready - now))):
            break
        slots += added
        wait = after
        n_start, n_launch = (n_start + 1, n_launch) if warm else (n_start, n_launch + 1)
    return n_start, n_launch


def _room(pool: PoolConfig, fleet: int, billed_price: float, price: float) -> int:
    """Instances at ``price`` ($/h each) that can still be added under ``max_instances`` and
    ``max_cost_per_hour``; ``billed_price``: $/h of the fleet now, each instance at its own price."""
    room = pool.max_instances - fleet
    if pool.max_cost_per_hour is not None:
        room = min(room, math.floor((pool.max_cost_per_hour - billed_price) / max(price, 1e-9) + 1e-9))
    return max(0, room)


def _within_cap(pool: PoolConfig, billed_price: float, starts: list[Instance], n_launch: int) -> tuple[int, int]:
    """(warm starts, cold launches) trimmed to ``max_cost_per_hour``: starts first, each at the price
    of the option it was launched with, then launches at the first option's."""
    if pool.max_cost_per_hour is None:
        return len(starts), n_launch
    left = pool.max_cost_per_hour - billed_price + 1e-9
    n_start = 0
    for inst in starts:
        if inst.option.price_per_hour > left:
            break
        left -= inst.option.price_per_hour
        n_start += 1
    return n_start, min(n_launch, max(0, math.floor(left / max(pool.options[0].price_per_hour, 1e-9))))


def _budget(pool: PoolConfig, billed_price: float) -> float | None:
    """$/h a launch may add under ``max_cost_per_hour`` to a fleet billing ``billed_price``; None: no cap."""
    return None if pool.max_cost_per_hour is None else max(0.0, pool.max_cost_per_hour - billed_price)


def _fifo_wait(slots: list[float], releases: list[float], service_s: float) -> float:
    """Total seconds the jobs released at ``releases`` (ascending) wait when each, in order, goes to
    the first free slot and holds it for ``service_s``."""
    if not releases:
        return 0.0
    if not slots:
        return math.inf
    heap = list(slots)
    heapq.heapify(heap)
    total = 0.0
    for release in releases:
        start = max(release, heapq.heappop(heap))
        total += start - release
        heapq.heappush(heap, start + service_s)
    return total


def _scale_out_reason(ps: PoolSnapshot, fleet: int, how: str, n: int, ready_s: float, slots: int) -> str:
    per = f" ({slots} slots each)" if slots > 1 else ""
    if fleet == 0 and ps.pending:
        return f"activation: {ps.pending} queued at zero capacity; {how} of {n}{per} (ready in ~{ready_s:.0f}s)"
    if not ps.pending:
        return f"below min_instances with {fleet} instance(s); {how} of {n}{per}"
    return (f"{ps.pending} queued (oldest {ps.oldest_queued_age_s:.0f}s) for {fleet} instance(s); {how} of {n}{per} "
            f"(ready in ~{ready_s:.0f}s) saves more waiting than its boot costs")


def _scale_in(now: float, pool: PoolConfig, e: _Economics, idle: list[Instance], others: int,
              billed_price: float) -> list[Action]:
    """Drain the idle instances not worth their price; ``idle`` is ordered longest idle first.

    ``others``: busy and booting instances and launches in flight, which count as warm capacity first.
    """
    if pool.idle_policy == "fixed":
        keep = len(idle)
        why = f"fixed idle timeout {pool.idle_timeout_s:.0f}s"
    else:
        warm = pool.warm_pool.enabled
        keep = max(0, e.worth_keeping(warm, others + len(idle)) - others)
        why = (f"break-even keeps {keep} idle at {e.rate * 3600:.1f} arrivals/h "
               f"(a {'warm start' if warm else 'cold boot'} costs ~${e.replacement_value(warm):.3f}, "
               f"idling ${e.option_price:.2f}/h)")
    floor = max(0, pool.min_instances - others)
    keep = max(keep, floor)
    if pool.max_cost_per_hour is not None and billed_price > pool.max_cost_per_hour:
        # drained longest idle first, each taking its own price off the bill, until under the cap
        over, excess = 0, billed_price - pool.max_cost_per_hour
        while over < len(idle) and excess > 1e-9:
            excess -= idle[over].option.price_per_hour
            over += 1
        keep = min(keep, max(floor, len(idle) - over))
        why += f"; fleet over max_cost_per_hour={pool.max_cost_per_hour:.2f}"
    actions: list[Action] = []
    for rank, inst in enumerate(idle):  # the most recently idle are kept
        idle_for = now - inst.state_since
        kept, floored = rank >= len(idle) - keep, rank >= len(idle) - floor
        if floored or (kept and idle_for < pool.idle_timeout_s):
            continue
        reason = why if not kept else f"idle past idle_timeout_s={pool.idle_timeout_s:.0f}"
        actions.append(Drain(pool.name, f"idle {idle_for:.0f}s; {reason}", inst.id, inst.drain_ids()))
    return actions


def _poisson_quantile(mu: float, q: float) -> int:
    """Smallest n with P(Poisson(mu) <= n) >= q."""
    n, term = 0, math.exp(-mu)
    cdf = term
    while cdf < q and n < 1000:
        n += 1
        term *= mu / n
        cdf += term
    return n
