"""Trace-driven simulation: the real policy and the real daemon on a virtual clock, against a
simulated provider and queue, optionally beside ClearML's autoscaler policy on the same machines.

The parts live in ``autoscaler/sim/``: ``clock`` (the event loop), ``provider`` (boot model and
bill), ``queue`` (tasks and workers), ``traces``, ``world`` (one run), ``reference`` (the
stationary Erlang C cost of a wait target), ``report``, ``plot``.

The policy runs at a p95 wait target: the pool's, a number of seconds, or ``"baseline"``, the
ClearML baseline's own p95 on the same trace and seed (the baseline runs first). ``sweep`` runs it
at several targets: the cost/p95 frontier of a trace.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autoscaler.model import PoolConfig
from autoscaler.sim.reference import Reference, reference
from autoscaler.sim.report import Summary, json_record, summarize
from autoscaler.sim.traces import Trace, load_trace
from autoscaler.sim.world import RunResult, SimSettings, default_pool, run

__all__ = ["Comparison", "SimSettings", "Sweep", "simulate", "sweep"]

BASELINE = "baseline"  # the p95 target that is the ClearML baseline's own p95
SWEEP_TARGETS_S = (30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0)


@dataclass
class Comparison:
    trace: Trace
    seed: int
    ours: RunResult
    baseline: RunResult | None
    reference: Reference  # of ours' wait target

    @property
    def target_s(self) -> float:
        return self.reference.target_s

    @property
    def summaries(self) -> list[Summary]:
        return [summarize(r) for r in (self.ours, self.baseline) if r is not None]

    def record(self) -> dict[str, Any]:
        ours, *rest = self.summaries
        return json_record(self.trace.name, self.seed, ours, rest[0] if rest else None, self.reference)

    def verdict(self) -> str:
        """One line: whether ours met its target, or why no policy can."""
        if self.reference.infeasible:
            return self.reference.infeasible
        p95 = summarize(self.ours).p95_wait_s
        met = "met" if p95 <= self.target_s else "MISSED"
        return f"p95 wait target {self.target_s:.0f} s: {met} ({p95:.0f} s)"

    def plot(self, path: Path) -> None:
        from autoscaler.sim.plot import plot_runs

        plot_runs([r for r in (self.ours, self.baseline) if r is not None], path,
                  title=f"{self.trace.name} (seed {self.seed})")


def simulate(trace: str | Trace, policy: str = "default", vs: str | None = None, warm_pool: bool = False,
             seed: int = 0, settings: SimSettings | None = None, pool: PoolConfig | None = None,
             slots: int | None = None, slot_profile: str | Path | None = None,
             market: str | None = None, p95_target: float | str | None = None) -> Comparison:
    """Run ``policy`` on ``trace`` and, when ``vs`` names one, that policy on the same machines.

    ``p95_target``: the pool's wait target, seconds; ``"baseline"``: the ClearML baseline's p95 on
    this trace and seed (its run is the comparison's baseline: ``vs`` is clearml or None); None: the
    pool's own.

    ``warm_pool`` turns the warm pool on for the default policy (the baseline has none). ``slots``
    (when given) gives the pool's instances that many slots, both policies alike, with the slowdown
    measured in ``slot_profile`` (``autoscaler.config.slot_resources``: a ``ConfigError`` when it is
    missing for more than one slot). ``market`` (when given, ``"spot"`` or ``"on-demand"``) sets the
    pool's options to that market, both policies alike (``autoscaler.sim.provider.market_options``:
    spot first at its price, on demand as the fallback); spot instances are interrupted at
    ``settings.boot.spot_interruptions_per_hour``.
    """
    settings = settings or SimSettings()
    if isinstance(trace, str):
        trace = load_trace(trace, seed)
    pool = _pool(pool, slots, slot_profile, market)
    baseline = None
    if p95_target == BASELINE:
        if vs not in (None, "clearml"):
            raise ValueError(f"a p95 target of 'baseline' compares with the clearml baseline, not {vs!r}")
        baseline = run(trace, "clearml", pool, seed, settings)
        target_s = summarize(baseline).p95_wait_s
    else:
        target_s = pool.p95_wait_target_s if p95_target is None else float(p95_target)
    pool = replace(pool, p95_wait_target_s=target_s)
    ours = run(trace, policy, _with_warm_pool(pool, warm_pool and policy == "default"), seed, settings)
    if baseline is None and vs:
        baseline = run(trace, vs, _with_warm_pool(pool, warm_pool and vs == "default"), seed, settings)
    return Comparison(trace=trace, seed=seed, ours=ours, baseline=baseline,
                      reference=reference(trace, pool, target_s, first_ready_s=settings.boot.cold_boot_s[0]))


@dataclass(frozen=True)
class SweepPoint:
    target_s: float
    label: str  # the target as given: seconds, or "baseline"
    ours: Summary
    reference: Reference


@dataclass
class Sweep:
    """The default policy at several wait targets on one trace, and the ClearML baseline's point."""

    trace: Trace
    seed: int
    warm_pool: bool
    baseline: Summary
    points: list[SweepPoint]

    def record(self) -> dict[str, Any]:
        return {"trace": self.trace.name, "seed": self.seed, "warm_pool": self.warm_pool,
                "baseline": {"billed_s": self.baseline.billed_s, "cost_usd": round(self.baseline.cost_usd, 2),
                             "p95_wait_s": round(self.baseline.p95_wait_s, 1)},
                "points": [{"p95_target_s": round(p.target_s, 1), "billed_s": p.ours.billed_s,
                            "cost_usd": round(p.ours.cost_usd, 2), "p95_wait_s": round(p.ours.p95_wait_s, 1),
                            "cost_ratio_vs_baseline": round(p.ours.billed_s / self.baseline.billed_s, 4),
                            "erlang_reference_ratio": round(p.ours.billed_s / p.reference.billed_s, 4)
                            if p.reference.billed_s else None,
                            "p95_target_infeasible": p.reference.infeasible} for p in self.points]}

    def plot(self, path: Path) -> None:
        from autoscaler.sim.plot import plot_frontier

        plot_frontier(self, path)


def sweep(trace: str | Trace, targets_s: tuple[float, ...] = SWEEP_TARGETS_S, warm_pool: bool = False, seed: int = 0,
          settings: SimSettings | None = None, pool: PoolConfig | None = None, slots: int | None = None,
          slot_profile: str | Path | None = None, market: str | None = None) -> Sweep:
    """The default policy at each of ``targets_s`` and at the baseline's p95, beside ClearML's run."""
    settings = settings or SimSettings()
    if isinstance(trace, str):
        trace = load_trace(trace, seed)
    pool = _with_warm_pool(_pool(pool, slots, slot_profile, market), warm_pool)
    baseline = summarize(run(trace, "clearml", _with_warm_pool(pool, False), seed, settings))
    points = []
    for label, target_s in sorted([*((f"{t:g}", t) for t in targets_s), (BASELINE, baseline.p95_wait_s)],
                                  key=lambda x: x[1]):
        ours = summarize(run(trace, "default", replace(pool, p95_wait_target_s=target_s), seed, settings))
        points.append(SweepPoint(target_s, label, ours, reference(trace, pool, target_s, settings.boot.cold_boot_s[0])))
    return Sweep(trace=trace, seed=seed, warm_pool=warm_pool, baseline=baseline, points=points)


def _pool(pool: PoolConfig | None, slots: int | None, slot_profile: str | Path | None,
          market: str | None) -> PoolConfig:
    """The simulated pool: ``pool`` (default: ``default_pool()``) with ``slots`` measured in
    ``slot_profile`` and its options in ``market``, when given."""
    pool = pool or default_pool()
    if slots is not None:
        from autoscaler.config import slot_resources

        pool = replace(pool, resources=slot_resources(slots, slot_profile))
    if market is not None:
        from autoscaler.sim.provider import market_options

        pool = replace(pool, options=market_options(pool.options, market))
    return pool


def _with_warm_pool(pool: PoolConfig, enabled: bool) -> PoolConfig:
    return replace(pool, warm_pool=replace(pool.warm_pool, enabled=enabled))
