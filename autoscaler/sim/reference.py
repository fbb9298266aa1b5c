"""The stationary reference cost of a wait target on a trace, and whether the target can be met.

Reference: for each window of the trace (an hour by default), the fewest always-on instances that
Erlang C says keep the p95 wait at or under the target at that window's arrival rate and mean
service time (on a slot: times the slot slowdown; servers = instances × slots), billed for the
window. Boots are ignored, so a policy that boots pays more than it for the same instances, and one
that scales inside a window can pay less.

Infeasible: no policy can keep 95% of the waits at or under the target when more than 5% of the
trace's arrivals either come before any instance could be up (the fleet starts at zero: an arrival
at ``a`` waits at least ``first_ready_s - a``) or fall in windows that need more instances than
``max_instances`` (the queue there grows whatever is done). A target under the service time, or
under the boot time, is not infeasible by itself: warm capacity makes waits zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autoscaler.erlang import P95, servers_for
from autoscaler.model import PoolConfig
from autoscaler.sim.traces import Trace

WINDOW_S = 3600.0


@dataclass(frozen=True)
class Reference:
    target_s: float
    billed_s: float  # instance-seconds the reference bills
    windows: tuple[int, ...]  # instances per window
    infeasible: str | None  # why no policy can meet the target on this trace, or None


def reference(trace: Trace, pool: PoolConfig, target_s: float, first_ready_s: float,
              window_s: float = WINDOW_S) -> Reference:
    """``first_ready_s``: the earliest a first instance can serve (the shortest cold boot)."""
    slots, slowdown = pool.slots, pool.resources.slot_slowdown
    count = max(1, math.ceil(trace.duration_s / window_s))
    per_window: list[list[float]] = [[] for _ in range(count)]
    for arrival, service in trace.jobs:
        per_window[min(count - 1, int(arrival // window_s))].append(service * slowdown)
    windows, billed, over = [], 0.0, 0
    for k, services in enumerate(per_window):
        length = min(window_s, max(0.0, trace.duration_s - k * window_s)) or window_s
        if not services:
            windows.append(0)
            continue
        servers = servers_for(len(services) / length, sum(services) / len(services), target_s,
                              limit=pool.max_instances * slots)
        instances = math.ceil(servers / slots)
        if instances > pool.max_instances:
            over += len(services)
            instances = pool.max_instances
        windows.append(instances)
        billed += instances * length
    early = sum(1 for arrival, _ in trace.jobs if first_ready_s - arrival > target_s)
    budget = (1 - P95) * len(trace.jobs)
    why = None
    if early + over > budget:
        parts = []
        if over:
            parts.append(f"{over} arrive in hours that need more than max_instances={pool.max_instances}")
        if early:
            parts.append(f"{early} arrive before a first instance could be up ({first_ready_s:.0f} s)")
        why = (f"p95 wait <= {target_s:.0f} s cannot be met on {trace.name}: of {len(trace.jobs)} scans, "
               f"{' and '.join(parts)}, more than the 5% the p95 leaves")
    return Reference(target_s=target_s, billed_s=billed, windows=tuple(windows), infeasible=why)
