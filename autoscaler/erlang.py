"""Erlang C: waits in a queue of ``c`` identical servers fed by Poisson arrivals (M/M/c).

Rates are arrivals per second, service times and waits seconds. The policy sizes warm capacity
with it and the simulator's stationary reference cost uses it (plain M/M/c). ``variability``
scales the waits of those who wait, for service times other than exponential: the Allen–Cunneen
approximation for M/G/c takes ``(1 + cv²) / 2``, cv the service time's coefficient of variation
(1: exponential, M/M/c itself).
"""

from __future__ import annotations

import math

P95 = 0.95


def erlang_c(servers: int, load: float) -> float:
    """P(an arrival waits) with ``servers`` servers and offered ``load`` = rate × service time
    (Erlangs); 1 when the load is at or above the servers (the queue grows without bound)."""
    if load <= 0:
        return 0.0
    if load >= servers:
        return 1.0
    b = 1.0  # Erlang B by its recurrence, then C from B
    for k in range(1, servers + 1):
        b = load * b / (k + load * b)
    return servers * b / (servers - load * (1 - b))


def wait_quantile(servers: int, rate: float, service_s: float, q: float = P95, variability: float = 1.0) -> float:
    """The ``q`` quantile of the wait, seconds: 0 when at most ``1 - q`` of arrivals wait; inf when
    the servers cannot keep up."""
    load = rate * service_s
    if rate <= 0:
        return 0.0
    if servers <= 0 or load >= servers:
        return math.inf
    waits = erlang_c(servers, load)
    if waits <= 1 - q:
        return 0.0
    # P(W > t) = C · exp(-(c - a) t / (s · variability))
    return variability * service_s / (servers - load) * math.log(waits / (1 - q))


def servers_for(rate: float, service_s: float, target_s: float, q: float = P95, limit: int = 10_000,
                variability: float = 1.0) -> int:
    """The fewest servers whose ``q`` wait quantile is at most ``target_s`` (0 without arrivals), at
    most ``limit`` (``limit`` + 1 when even that many fall short)."""
    if rate <= 0:
        return 0
    c = max(1, math.floor(rate * service_s) + 1)  # fewer cannot keep up
    while c <= limit and wait_quantile(c, rate, service_s, q, variability) > target_s:
        c += 1
    return c
