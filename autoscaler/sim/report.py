"""What a run cost and how long scans waited: one summary per run, the table, the JSON line."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from autoscaler.sim.reference import Reference
from autoscaler.sim.world import RunResult


@dataclass(frozen=True)
class Summary:
    policy: str
    warm_pool: bool
    slots: int  # tasks each instance ran at once
    tasks: int
    unfinished: int  # never started; their wait counts up to the end of the run
    billed_s: int  # GPU-seconds billed
    cost_usd: float
    storage_usd: float  # volumes of stopped instances, beside the GPU bill
    busy_s: float  # the work done: finished tasks' trace service times (each alone on an instance), seconds
    cold_launches: int
    warm_starts: int
    capacity_errors: int
    interruptions: int  # spot interruption notices; their tasks were handed back and ran again
    p50_wait_s: float
    p95_wait_s: float
    max_wait_s: float

    @property
    def label(self) -> str:
        return self.policy + (" + warm pool" if self.warm_pool else "")

    @property
    def cost_over_busy(self) -> float:
        return self.billed_s / self.busy_s if self.busy_s else math.inf


def summarize(result: RunResult) -> Summary:
    waits = [t.wait_s if t.wait_s is not None else result.end_s - t.arrival_s for t in result.tasks]
    return Summary(
        policy=result.policy, warm_pool=result.warm_pool, slots=result.slots, tasks=len(result.tasks),
        unfinished=sum(1 for t in result.tasks if t.started_at is None), billed_s=result.bill.billed_s,
        cost_usd=result.bill.cost, storage_usd=result.bill.storage_cost,
        busy_s=sum(t.service_s for t in result.tasks if t.finished_at is not None),
        cold_launches=result.bill.cold_launches, warm_starts=result.bill.warm_starts,
        capacity_errors=result.bill.capacity_errors, interruptions=result.bill.interruptions,
        p50_wait_s=percentile(waits, 50),
        p95_wait_s=percentile(waits, 95), max_wait_s=max(waits, default=0.0),
    )


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


COLUMNS = ("policy", "GPU-s billed", "cost $", "storage $", "busy GPU-s", "cost/busy", "launches (cold, warm)",
           "interruptions", "wait p50 s", "wait p95 s", "wait max s")


def rows(summaries: list[Summary]) -> list[tuple[str, ...]]:
    return [(s.label, f"{s.billed_s:,}", f"{s.cost_usd:.2f}", f"{s.storage_usd:.2f}", f"{s.busy_s:,.0f}", f"{s.cost_over_busy:.2f}",
             f"{s.cold_launches + s.warm_starts} ({s.cold_launches}, {s.warm_starts})", f"{s.interruptions}",
             f"{s.p50_wait_s:.0f}", f"{s.p95_wait_s:.0f}", f"{s.max_wait_s:.0f}") for s in summaries]


def json_record(trace: str, seed: int, ours: Summary, baseline: Summary | None,
                reference: Reference | None = None) -> dict[str, Any]:
    """The one-line result: ``ours`` against the baseline (ratios are null without one) and against the
    stationary Erlang reference of its wait target (``p95_target_s``, ``erlang_reference_ratio``:
    GPU-seconds over the reference's; ``p95_target_infeasible``: why no policy can meet it, or null)."""

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 4) if b else None

    return {
        "trace": trace, "seed": seed, "policy": ours.policy, "warm_pool": ours.warm_pool, "slots": ours.slots,
        "tasks": ours.tasks,
        "billed_s": ours.billed_s, "baseline_billed_s": baseline.billed_s if baseline else None,
        "cost_ratio_vs_baseline": ratio(ours.billed_s, baseline.billed_s) if baseline else None,
        "p50_wait_s": round(ours.p50_wait_s, 1), "p95_wait_s": round(ours.p95_wait_s, 1),
        "max_wait_s": round(ours.max_wait_s, 1),
        "baseline_p50_wait_s": round(baseline.p50_wait_s, 1) if baseline else None,
        "baseline_p95_wait_s": round(baseline.p95_wait_s, 1) if baseline else None,
        "p95_ratio_vs_baseline": ratio(ours.p95_wait_s, baseline.p95_wait_s) if baseline else None,
        "cost_over_busy": round(ours.cost_over_busy, 3),
        "baseline_cost_over_busy": round(baseline.cost_over_busy, 3) if baseline else None,
        "cost_usd": round(ours.cost_usd, 2), "storage_usd": round(ours.storage_usd, 3), "baseline_cost_usd": round(baseline.cost_usd, 2) if baseline else None,
        "unfinished": ours.unfinished, "interruptions": ours.interruptions,
        "p95_target_s": round(reference.target_s, 1) if reference else None,
        "erlang_reference_ratio": ratio(ours.billed_s, reference.billed_s) if reference else None,
        "p95_target_infeasible": reference.infeasible if reference else None,
    }
