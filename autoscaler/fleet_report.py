"""``scantide fleet --json``: the fleet as observed now, each pool with its queue, and the recent
decisions from the journal.

The pools and instances are the status page's (``service.status.model``: ``GET /v1/status``'s
``fleet``) with the pool's queue beside them; the decisions are the journal's lines with their time
in ISO-8601 UTC and a drain's one instance in ``instances`` like every other decision's.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from autoscaler.model import PoolConfig, Snapshot
from autoscaler.status import fleet_record, fleet_status
from service.domain import iso
from service.status.model import FleetPool


class PoolReport(FleetPool):
    pending: int = Field(description="Tasks queued on the pool's queue.")
    running: int
    oldest_queued_age_s: float = Field(description="Seconds; 0 when nothing is queued.")
    p95_wait_target_s: float = Field(description="The pool's wait target: the p95 of queue waits, seconds.")
    p95_wait_s_last_hour: float | None = Field(description="The p95 of the queue waits of the tasks that started "
                                                           "in the last hour, as the running autoscaler measured "
                                                           "them; null without any (or without a running "
                                                           "autoscaler).")
    waits_last_hour: int = Field(description="How many waits that p95 is of.")
    state: str = Field(description="What the policy is doing with the pool: scaling out (+n), draining n, holding "
                                   "n warm for the target, serving with n, or at zero.")


class Decision(BaseModel):
    at: str = Field(description="ISO-8601 UTC.")
    pool: str
    kind: str = Field(description="launch, launch_failed, start, start_failed, stop, terminate, drain, refused "
                                  "or interrupted.")
    reason: str
    count: int | None = Field(None, description="Instances a launch asked for.")
    option: dict[str, Any] | None = Field(None, description="The instance option of a launch: instance_type, "
                                                            "market, price_per_hour, subnet.")
    instances: list[str] = Field(default_factory=list, description="The instances it acted on.")
    workers: list[str] = Field(default_factory=list, description="The workers a drain asked to stop.")
    fallback: bool | None = Field(None, description="launch_failed: whether a later option was tried next.")


class FleetReport(BaseModel):
    observed_at: str = Field(description="ISO-8601 UTC.")
    cost_per_hour: float = Field(description="All pools together, US dollars per hour.")
    pools: list[PoolReport]
    decisions: list[Decision] = Field(description="The most recent, oldest first.")


def fleet_report(snapshot: Snapshot, pools: dict[str, PoolConfig], journal: list[dict[str, Any]],
                 targets: dict[str, dict[str, Any]] | None = None) -> FleetReport:
    """``targets``: each pool's ``status.target_record`` as the running daemon wrote it (``daemon_targets``);
    a pool without one is measured from ``snapshot``."""
    record = fleet_record(snapshot, pools)
    status = fleet_status(record, snapshot.now)
    reports = []
    for pool, raw in zip(status.pools, record["pools"]):
        seen = snapshot.pools[pool.pool]
        target = (targets or {}).get(pool.pool) or raw.get("target") or {}
        reports.append(PoolReport(**pool.model_dump(), pending=seen.pending, running=seen.running,
                                  oldest_queued_age_s=round(seen.oldest_queued_age_s, 1), **target))
    return FleetReport(observed_at=iso(snapshot.now) or "", cost_per_hour=status.cost_per_hour, pools=reports,
                       decisions=[decision(entry) for entry in journal])


def decision(entry: dict[str, Any]) -> Decision:
    """A journal line as a ``Decision`` (fields it does not know are left out)."""
    fields = {k: v for k, v in entry.items() if k in Decision.model_fields and k not in ("at", "instances")}
    instances = list(entry.get("instances") or ([entry["instance"]] if "instance" in entry else []))
    return Decision(at=iso(entry["at"]) or "", instances=instances, **fields)
