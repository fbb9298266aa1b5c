"""The autoscaler's Prometheus series, recorded after each tick of the running daemon
(``autoscaler.runner``; the simulator records none)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from autoscaler.model import Action, InstanceState, Snapshot

FLEET_INSTANCES = Gauge("scantide_fleet_instances", "Instances per pool and state (booting, idle, busy, draining, "
                        "stopped, stopping, lost) as the last tick observed them.", ["pool", "state"],
                        multiprocess_mode="livemostrecent")
FLEET_COST = Gauge("scantide_fleet_cost_per_hour", "What a pool's instances bill per hour, in the configured "
                   "price's currency: every instance but the stopped, at its option's price.", ["pool"],
                   multiprocess_mode="livemostrecent")
DECISIONS = Counter("scantide_autoscaler_decisions", "Actions the policy decided, by pool and action (launch, start, "
                    "drain, stop, terminate).", ["pool", "action"])
TICKS = Counter("scantide_autoscaler_ticks", "Autoscaler ticks by outcome (ok, failed).", ["outcome"])


def record_tick(snapshot: Snapshot | None, actions: list[Action], ok: bool) -> None:
    """Count the tick and its decisions; set the fleet gauges from what it observed (every state of
    every pool, zeros included, so a state that emptied reads 0 rather than its last count)."""
    TICKS.labels("ok" if ok else "failed").inc()
    for action in actions:
        DECISIONS.labels(action.pool, type(action).__name__.lower()).inc()
    if snapshot is None:
        return
    for pool, observed in snapshot.pools.items():
        for state in InstanceState:
            FLEET_INSTANCES.labels(pool, state.value).set(sum(1 for i in observed.instances if i.state is state))
        FLEET_COST.labels(pool).set(sum(i.option.price_per_hour for i in observed.instances
                                        if i.state is not InstanceState.stopped))
