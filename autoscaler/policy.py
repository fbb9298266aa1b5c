"""The default scaling policy: a pure function of a fleet snapshot and the time; no I/O.

Each pool has a wait target, ``p95_wait_target_s``: the policy keeps the 95th percentile of queue
waits at or under it at the least cost. ``autoscaler.sizing`` turns the snapshot's measurements
(arrival rate, service time and its variation, the last hour's waits) into the sizes below.
Per pool, every tick:

1. **Hygiene.** An instance booting past ``boot_timeout_s`` and one whose worker is ``lost`` are
   terminated.
2. **Finish drains.** An instance whose worker acknowledged a drain (state ``draining``) and holds
   no task is stopped into the warm pool while the pool is short of its size, else terminated. No
   other running instance is ever stopped or terminated: drain before terminate.
3. **Scale out**, warm starts of stopped instances before cold launches, to the largest of:
   ``min_instances``; the **warm floor** (Erlang C: the capacity the target needs held up when no
   replacement could be ready within it; one more while the last hour's p95 is over the target);
   and what the **queue** needs: the queued tasks and the arrivals expected before new capacity
   could be ready are placed first come first served on the capacity there is (idle slots now,
   busy ones after about half a service time, booting instances and launches in flight when their
   boot should end), and instances are added one at a time while each makes fewer of them start
   later than the target (tightened by the overshoot while the last hour's p95 is over it), or
   takes more than its own boot off the lateness of those that will be late anyway. A task
   at zero capacity always gets one (activation on the first tick). A backlog that can wait within
   the target waits for the instances there are: never one instance per task. ``max_instances`` and
   ``max_cost_per_hour`` cap the fleet, each instance (and launch in flight) at the price of the
   option it launched with; a ``Launch`` carries the $/h left under the cap, which a fallback to a
   pricier option keeps to (``daemon``).
4. **Keep or drain idle instances.** Busy and booting instances count first. Idle instances are
   kept up to the warm floor, and beyond it while the break-even says so (each kept instance saves
   the replacements of the arrivals that would need one, a warm start when the warm pool is on, a
   cold boot otherwise, worth more than its idling). The rest are drained, longest idle first;
   none kept by the break-even stays past ``idle_timeout_s``; never below ``min_instances``. With
   ``idle_policy="fixed"`` an instance is drained after ``idle_timeout_s``, and there is no warm floor.
5. **Warm pool.** Its size follows the arrival rate: enough stopped instances for the instances
   a rate-``λ`` stream keeps busy over a service time plus a cold boot (99th percentile of a
   Poisson count, at least one), between the pool's ``min_size`` and ``max_size``. Stopped
   instances bill no compute, so only those beyond ``max_size`` are terminated. Below
   ``min_size``, instances are launched to be initialised, drained and stopped. Only instances of a
   stoppable option (on-demand) are stopped, and the pool is filled with the first such option:
   EC2 refuses to stop a one-time spot instance, so a drained spot instance is terminated.

**Slots.** An instance of a pool with ``resources.slots = N`` runs N tasks at once, each
``resources.slot_slowdown`` times as long as alone (measured, see ``autoscaler.config``). Capacity
is instances × slots: Erlang C counts N servers per instance, every slot is a server of the
first-come first-served placement, with the slowed service time (the prior ``expected_service_s``
is a task alone; a measured service time is per slot already), an idle or busy instance's free
slots are ready now, and a booting instance, a launch in flight or a new instance brings N slots.
Step 5 counts N slots per stopped instance. An instance is drained, stopped and terminated whole:
every slot's worker is asked to drain.

Every action carries the reason the daemon journals; ``pool_state`` says in a few words what the
policy is doing with a pool (``scantide fleet``).
"""

from __future__ import annotations

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
from autoscaler.sizing import Estimates, misses, poisson_quantile


def decide(snapshot: Snapshot, now: float, config: dict[str, PoolConfig]) -> list[Action]:
    """The actions for every configured pool in ``snapshot``."""
    actions: list[Action] = []
    for name in sorted(snapshot.pools):
        if name in config:
            actions.extend(decide_pool(snapshot.pools[name], now, config[name]))
    return actions


def decide_pool(ps: PoolSnapshot, now: float, pool: PoolConfig) -> list[Action]:
    e = Estimates.of(ps, pool)
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
    n_start, n_launch, why = _scale_out(ps, now, pool, e, idle, busy, booting, len(usable_stopped), fleet,
                                        billed_price)
    n_start, n_launch = _within_cap(pool, billed_price, usable_stopped[:n_start], n_launch)
    started = tuple(i.id for i in usable_stopped[:n_start])
    billed_start = billed_price + sum(i.option.price_per_hour for i in usable_stopped[:n_start])
    if started:
        actions.append(Start(pool.name, _scale_out_reason(why, "warm start", n_start, e.start_s, e.slots), started))
    if n_launch:
        actions.append(Launch(pool.name, _scale_out_reason(why, "cold launch", n_launch, e.boot_s, e.slots),
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


def pool_state(ps: PoolSnapshot, now: float, pool: PoolConfig) -> str:
    """What the policy is doing with the pool, in a few words: scaling out, draining, holding
    instances warm for the target, serving, or at zero."""
    actions = decide_pool(ps, now, pool)
    adding = sum(a.count if isinstance(a, Launch) else len(a.instance_ids)
                 for a in actions if isinstance(a, (Launch, Start)))
    draining = sum(1 for a in actions if isinstance(a, Drain)) + len(ps.in_state(InstanceState.draining))
    up = len(ps.in_state(InstanceState.idle, InstanceState.busy, InstanceState.booting)) + ps.launches_in_flight
    e = Estimates.of(ps, pool)
    floor = e.floor(pool.warm_pool.enabled and bool(ps.in_state(InstanceState.stopped)))
    if adding:
        return f"scaling out (+{adding})"
    if draining:
        return f"draining {draining}"
    if up == 0:
        return "at zero"
    if floor:
        return f"holding {floor} warm for the target" + (" (last hour over it)" if e.behind else "")
    return f"serving with {up}"


def _warm_target(pool: PoolConfig, e: Estimates) -> int:
    if not pool.warm_pool.enabled:
        return 0
    # at least one: a stopped instance bills only its volume, and without one the next scan waits a cold boot
    need = max(1, math.ceil(poisson_quantile(e.rate * (e.service_s + e.boot_s), 0.99) / e.slots))
    return max(pool.warm_pool.min_size, min(pool.warm_pool.max_size, need))


def _ready_at(e: Estimates, inst: Instance, now: float, warm_pool: bool) -> float:
    """When a booting instance should register. The snapshot does not say whether it was started or
    launched: with the warm pool on, one booting for less than 1.5 warm starts is taken as a warm
    start, any other as a cold boot."""
    elapsed = now - inst.launched_at
    warm = warm_pool and elapsed < 1.5 * e.start_s
    return max(now, inst.launched_at + e.ready_s(warm))


def _scale_out(ps: PoolSnapshot, now: float, pool: PoolConfig, e: Estimates, idle: list[Instance],
               busy: list[Instance], booting: list[Instance], stopped: int, fleet: int,
               billed_price: float) -> tuple[int, int, str]:
    """(warm starts, cold launches) to add now, and why."""
    room = _room(pool, fleet, billed_price, e.option_price)
    serving = len(idle) + len(busy) + len(booting) + ps.launches_in_flight
    floor = e.floor(warm=stopped > 0)
    base = max(pool.min_instances - fleet, floor - serving, 0)
    if room <= 0 or (ps.pending == 0 and base == 0):
        return 0, 0, ""
    # one entry per slot: when it can take its next task
    slots = [now] * sum(i.slots for i in idle)
    for i in busy:
        slots += [now] * i.free_slots + [now + e.service_s / 2] * (i.slots - i.free_slots)
    for i in booting:
        slots += [_ready_at(e, i, now, pool.warm_pool.enabled)] * i.slots
    slots += [now + e.boot_s] * (ps.launches_in_flight * e.slots)
    # the queued tasks, taken to have arrived evenly since the oldest, then the arrivals expected
    # before new capacity could be ready: later ones are served as well by capacity added at a later tick
    queued = [now - ps.oldest_queued_age_s * (1 - k / ps.pending) for k in range(ps.pending)]
    horizon_s = e.ready_s(stopped > 0)
    expected = int(e.rate * horizon_s) if ps.pending else 0
    releases = queued + [now + (k + 0.5) / e.rate for k in range(expected)]
    target_s = e.scale_out_target_s()
    late, over_s = misses(slots, releases, e.service_s, target_s)
    n = 0
    while n < room:
        ready_s = e.ready_s(n < stopped)
        added = [now + ready_s] * e.slots  # a new instance brings all its slots
        after, after_over_s = misses([*slots, *added], releases, e.service_s, target_s)
        # worth it when fewer start late, or when as many do but it takes more than its own boot off
        # their lateness (a backlog already past the target must not wait longer than a boot)
        if not (n < base or not slots or after < late or over_s - after_over_s >= ready_s):
            break
        slots += added
        late, over_s = after, after_over_s
        n += 1
    if n == 0:
        return 0, 0, ""
    if fleet == 0 and ps.pending:
        why = f"activation: {ps.pending} queued at zero capacity"
    elif n <= base and floor - serving >= pool.min_instances - fleet:
        why = f"warm floor of {floor} for p95 <= {e.target_s:.0f}s at {e.rate * 3600:.0f} arrivals/h" + (
            f" (last hour's p95 {e.observed_p95_s:.0f}s over it)" if e.behind else "")
    elif n <= base:
        why = f"below min_instances with {fleet} instance(s)"
    else:
        why = (f"{ps.pending} queued (oldest {ps.oldest_queued_age_s:.0f}s) for {fleet} instance(s): "
               f"{late} would still wait past {target_s:.0f}s")
    return min(n, stopped), max(0, n - stopped), why


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


def _scale_out_reason(why: str, how: str, n: int, ready_s: float, slots: int) -> str:
    per = f" ({slots} slots each)" if slots > 1 else ""
    return f"{why}; {how} of {n}{per} (ready in ~{ready_s:.0f}s)"


def _scale_in(now: float, pool: PoolConfig, e: Estimates, idle: list[Instance], others: int,
              billed_price: float) -> list[Action]:
    """Drain the idle instances neither the warm floor nor the break-even keeps; ``idle`` is ordered
    longest idle first.

    ``others``: busy and booting instances and launches in flight, which count as warm capacity first.
    """
    warm = pool.warm_pool.enabled
    floor = minimum = max(0, pool.min_instances - others)
    if pool.idle_policy == "fixed":
        keep = len(idle)
        why = f"fixed idle timeout {pool.idle_timeout_s:.0f}s"
    else:
        held = e.floor(warm, keeping=True)
        floor = max(floor, held - others)
        keep = max(floor, e.worth_keeping(warm, others + len(idle)) - others)
        why = (f"the target (p95 <= {e.target_s:.0f}s) holds {held} and the break-even keeps {keep} idle at "
               f"{e.rate * 3600:.1f} arrivals/h (a {'warm start' if warm else 'cold boot'} bills "
               f"~{e.ready_s(warm):.0f}s, idling ${e.option_price:.2f}/h)")
    if pool.max_cost_per_hour is not None and billed_price > pool.max_cost_per_hour:
        # drained longest idle first, each taking its own price off the bill, until under the cap
        over, excess = 0, billed_price - pool.max_cost_per_hour
        while over < len(idle) and excess > 1e-9:
            excess -= idle[over].option.price_per_hour
            over += 1
        keep = min(keep, max(minimum, len(idle) - over))  # the cap comes before the target, not before min_instances
        floor = min(floor, keep)
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
