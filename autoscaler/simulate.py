"""Trace-driven simulation: the real policy and the real daemon on a virtual clock, against a
simulated provider and queue, optionally beside ClearML's autoscaler policy on the same machines.

The parts live in ``autoscaler/sim/``: ``clock`` (the event loop), ``provider`` (boot model and
bill), ``queue`` (tasks and workers), ``traces``, ``world`` (one run), ``report``, ``plot``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoscaler.model import PoolConfig
from autoscaler.sim.report import Summary, json_record, summarize
from autoscaler.sim.traces import Trace, load_trace
from autoscaler.sim.world import RunResult, SimSettings, default_pool, run

__all__ = ["Comparison", "SimSettings", "simulate"]


@dataclass
class Comparison:
    trace: Trace
    seed: int
    ours: RunResult
    baseline: RunResult | None

    @property
    def summaries(self) -> list[Summary]:
        return [summarize(r) for r in (self.ours, self.baseline) if r is not None]

    def record(self) -> dict[str, Any]:
        ours, *rest = self.summaries
        return json_record(self.trace.name, self.seed, ours, rest[0] if rest else None)


    def plot(self, path: Path) -> None:
        from autoscaler.sim.plot import plot_runs

        plot_runs([r for r in (self.ours, self.baseline) if r is not None], path,
                  title=f"{self.trace.name} (seed {self.seed})")


def simulate(trace: str | Trace, policy: str = "default", vs: str | None = None, warm_pool: bool = False,
             seed: int = 0, settings: SimSettings | None = None, pool: PoolConfig | None = None,
             slots: int | None = None, slot_profile: str | Path | None = None,
             market: str | None = None) -> Comparison:
    """Run ``policy`` on ``trace`` and, when ``vs`` names one, that policy on the same machines.

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
    pool = pool or default_pool()
    if slots is not None:
        from dataclasses import replace

        from autoscaler.config import slot_resources

        pool = replace(pool, resources=slot_resources(slots, slot_profile))
    if market is not None:
        from dataclasses import replace

        from autoscaler.sim.provider import market_options

        pool = replace(pool, options=market_options(pool.options, market))
    ours = run(trace, policy, _with_warm_pool(pool, warm_pool and policy == "default"), seed, settings)
    baseline = run(trace, vs, _with_warm_pool(pool, warm_pool and vs == "default"), seed, settings) if vs else None
    return Comparison(trace=trace, seed=seed, ours=ours, baseline=baseline)


def _with_warm_pool(pool: PoolConfig, enabled: bool) -> PoolConfig:
    from dataclasses import replace

    return replace(pool, warm_pool=replace(pool.warm_pool, enabled=enabled))
