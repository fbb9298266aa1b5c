"""What a pool's wait target asks of its fleet: the estimates the policy decides with, and the sizes
it takes from them. Pure; no I/O.

Three sizes, in instances (each ``slots`` servers):

- **The warm floor.** Capacity to hold up (busy, idle or booting) so that arrivals meet the target
  without a boot: Erlang C over the measured hourly arrival rate and service time gives the fewest
  servers whose p95 wait is under the target, its wait tail scaled by the Allen–Cunneen factor
  ``(1 + cv²) / 2`` for the measured service-time variation (scans vary less than exponential
  times, so their waits are shorter than M/M/c's). When a replacement (a cold boot, or a warm start
  while stopped instances remain) is ready within the target, arrivals can wait for it instead:
  the floor is 0. Corrected by what is observed: when the p95 of the last hour's waits is over the
  target, one instance more. A pool with ``idle_policy = "fixed"`` holds no floor: its idle
  instances go after ``idle_timeout_s``, and the target drives its scale-out only.
- **Keep-alive (break-even).** Beyond the floor, an idle instance is kept while the arrivals that
  would need a replacement without it (those finding the others full when waiting for them would
  pass the target) save more boot billing than it costs to idle.
- **Scale-out (deadlines).** ``misses``: the queued tasks and the arrivals expected before new
  capacity could be ready, placed first come first served on the slots there are, that would start
  later than the target after they arrived, and by how much in all.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from autoscaler.erlang import servers_for
from autoscaler.model import HOURLY_WINDOW_S, PoolConfig, PoolSnapshot

# Billed seconds a scale-in costs beyond the idle time: the drain waits a tick for the
# worker's acknowledgement before the instance is stopped or terminated.
DRAIN_ROUND_TRIP_S = 20.0
# A replacement counts as in time for the target when it is ready this much before it: the daemon
# sees a queued task a tick late at worst, and boot times vary.
READY_MARGIN_S = 30.0
# No arrival for t seconds is unlikely (e^-QUIET_ARRIVALS) at a rate above QUIET_ARRIVALS / t: the
# rate is taken to be at most that, so the fleet winds down when arrivals stop, not a smoothing later.
QUIET_ARRIVALS = 3.0
# The hourly rate lags a rise: the floor follows the recent rate when it is more than RISE_SD of its
# standard errors above the hourly one. Kept instances are counted at the hourly rate plus KEEP_SD
# standard errors. Both measured on the simulator's traces (docs/autoscaler.md, Results): lower values churn
# instances with the rate's noise, higher ones hold more than the target needs.
RISE_SD = 2.0
KEEP_SD = 1.0
MIN_WAITS = 20  # observed waits before their p95 corrects the model
PRIOR_CV2 = 1.0  # service-time variation until measured: exponential, the cautious side


@dataclass(frozen=True)
class Estimates:
    """Measured where the snapshot has them, the pool's priors otherwise. Seconds and arrivals/s."""

    rate: float  # arrivals per second, smoothed by the daemon over the pool's arrival_window_s
    hourly_rate: float  # the same over an hour: what the warm floor is sized for
    hourly_rate_sd: float  # its standard error (Poisson counts over its window)
    service_s: float  # one task's run time on a slot
    variability: float  # Allen–Cunneen factor on Erlang C's waits, (1 + cv²) / 2
    slots: int  # servers per instance
    boot_s: float
    start_s: float
    target_s: float
    holds_floor: bool  # False for idle_policy "fixed"
    observed_p95_s: float | None  # p95 of the last hour's waits; None with fewer than MIN_WAITS
    option_price: float  # $/h of the pool's first option
    price_s: float  # the same, per second

    @classmethod
    def of(cls, ps: PoolSnapshot, pool: PoolConfig) -> Estimates:
        # the prior is a task alone on an instance: slowed by its slots' sharing; a measurement is per slot
        prior_s = pool.expected_service_s * pool.resources.slot_slowdown
        cv2 = PRIOR_CV2 if ps.service_time_cv2 is None else ps.service_time_cv2
        waits = ps.recent_waits_s
        boot_s = pool.expected_boot_s
        # a smoothed rate outlives the arrivals: so long a silence bounds it
        bound = QUIET_ARRIVALS / ps.quiet_s if ps.quiet_s else math.inf
        rate = min(max(0.0, ps.arrival_rate_per_s), bound)
        hourly = rate if ps.hourly_arrival_rate_per_s is None else min(max(0.0, ps.hourly_arrival_rate_per_s), bound)
        # the hourly rate lags a rise: the recent rate replaces it when clearly above it
        hourly = max(hourly, rate - RISE_SD * math.sqrt(rate / (2 * pool.arrival_window_s)))
        # an exponential smoothing over τ of a Poisson stream weighs about 2τ of it
        return cls(rate=rate, hourly_rate=hourly, hourly_rate_sd=math.sqrt(hourly / (2 * HOURLY_WINDOW_S)),
                   service_s=ps.service_time_s or prior_s,
                   variability=(1 + cv2) / 2, slots=pool.slots, boot_s=boot_s,
                   start_s=min(pool.expected_start_s, boot_s), target_s=pool.p95_wait_target_s,
                   holds_floor=pool.idle_policy != "fixed",
                   observed_p95_s=quantile(waits, 0.95) if len(waits) >= MIN_WAITS else None,
                   option_price=pool.options[0].price_per_hour, price_s=pool.options[0].price_per_hour / 3600.0)

    @property
    def behind(self) -> bool:
        """The last hour's p95 wait is over the target."""
        return self.observed_p95_s is not None and self.observed_p95_s > self.target_s

    def ready_s(self, warm: bool) -> float:
        """Seconds until a replacement serves: a warm start, or a cold boot."""
        return self.start_s if warm else self.boot_s

    def in_time(self, warm: bool) -> bool:
        """Whether a replacement is ready within the target."""
        return self.ready_s(warm) + READY_MARGIN_S <= self.target_s

    def floor(self, warm: bool, keeping: bool = False) -> int:
        """Instances to hold up for the target (see the module docstring). ``keeping``: the floor below
        which nothing up is drained, with hysteresis so that the noise of the rate does not drain an
        instance only to launch it again: at the rate plus KEEP_SD standard errors."""
        if not self.holds_floor or self.hourly_rate <= 0 or self.in_time(warm):
            return 0
        rate = self.hourly_rate + KEEP_SD * self.hourly_rate_sd if keeping else self.hourly_rate
        servers = servers_for(rate, self.service_s, self.target_s, variability=self.variability)
        return math.ceil(servers / self.slots) + (1 if self.behind else 0)

    def scale_out_target_s(self) -> float:
        """The wait scale-out aims at: the target, tightened by how far the last hour's p95 went over it."""
        if not self.behind or not self.observed_p95_s:
            return self.target_s
        return self.target_s * self.target_s / self.observed_p95_s

    def worth_keeping(self, warm: bool, limit: int) -> int:
        """How many instances (busy ones included) the break-even keeps up, at most ``limit``.

        The busy slots are Poisson(rate × service_s). The n-th instance serves the arrivals that
        find the other n-1 instances' c slots all busy, each saving a replacement's billing (its boot
        and the drain round trip), unless it can wait for them instead: when they keep up with the
        load a (c > a) and such an arrival waits, on average, within the target (Erlang C:
        ``variability × service_s / (c - a)``).
        """
        mu = self.rate * self.service_s
        saved_s = self.ready_s(warm) + DRAIN_ROUND_TRIP_S
        k, below, term = 0, 0.0, math.exp(-mu)  # below = P(fewer than k slots busy)
        n = 0
        while n < limit:
            spare = n * self.slots - mu
            others_suffice = n > 0 and spare > 0 and self.variability * self.service_s / spare <= self.target_s
            if others_suffice or self.rate * max(0.0, 1.0 - below) * saved_s < 1.0:
                break
            n += 1
            while k < n * self.slots:
                below += term
                k += 1
                term *= mu / k
        return n


def misses(slots: Sequence[float], releases: Sequence[float], service_s: float,
           target_s: float) -> tuple[int, float]:
    """How many of the tasks released at ``releases`` (ascending) start more than ``target_s`` after
    their release, and by how many seconds in all, when each, in order, takes the first free slot
    (``slots``: when each is free) and holds it for ``service_s``. Without a slot none starts."""
    if not slots:
        return len(releases), math.inf if releases else 0.0
    heap = list(slots)
    heapq.heapify(heap)
    late, over_s = 0, 0.0
    for release in releases:
        start = max(release, heapq.heappop(heap))
        if start - release > target_s:
            late += 1
            over_s += start - release - target_s
        heapq.heappush(heap, start + service_s)
    return late, over_s


def quantile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def poisson_quantile(mu: float, q: float) -> int:
    """Smallest n with P(Poisson(mu) <= n) >= q."""
    n, term = 0, math.exp(-mu)
    cdf = term
    while cdf < q and n < 1000:
        n += 1
        term *= mu / n
        cdf += term
    return n
