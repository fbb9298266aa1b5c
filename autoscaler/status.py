"""The fleet on the status page: what the running daemon last observed, kept in ``fleet.json``.

``scantide fleet`` observes the fleet itself (it lists the provider's instances); the API must not
call the provider on every snapshot, so the daemon writes each tick's observation beside its
journal (``run_forever`` → ``write_fleet``) and the API reads the file (``source``, registered as
the ``fleet`` entry point of ``scantide.status``). Where the API does not share the daemon's state
dir (production on several machines), the section says the file is missing.

The file: ``{"at": unix s, "pools": [{"pool", "queue", "launches_in_flight", "instances": [{"id",
"state", "instance_type", "market", "price_per_hour", "state_since", "slots", "task_ids"}],
"target": {"p95_wait_target_s", "p95_wait_s_last_hour", "waits_last_hour", "state"}}]}``, rewritten
whole each tick. ``target`` is the wait target and what the daemon measured against it (the p95 of
the waits of the tasks that started in the last hour, null without any) and the policy's state
(``policy.pool_state``); ``scantide fleet`` shows it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from autoscaler.model import InstanceState, PoolConfig, PoolSnapshot, Snapshot
from service.backends.base import TaskBackend
from service.domain import iso
from service.settings import Settings
from service.status.model import FleetInstance, FleetPool, FleetStatus, StatusPart
from service.status.sources import Source

log = logging.getLogger(__name__)

FLEET_FILE = "fleet.json"
NOT_BILLED = {InstanceState.stopped.value}  # a stopped instance bills its volumes, not its hours


def fleet_path(settings: Settings) -> Path:
    return settings.autoscaler_journal.with_name(FLEET_FILE)


def fleet_record(snapshot: Snapshot, pools: dict[str, PoolConfig]) -> dict[str, Any]:
    return {"at": snapshot.now, "pools": [
        {"pool": name, "queue": pools[name].queue if name in pools else "",
         "launches_in_flight": p.launches_in_flight,
         "instances": [{"id": i.id, "state": i.state.value, "instance_type": i.option.instance_type,
                        "market": i.option.market.value, "price_per_hour": i.option.price_per_hour,
                        "state_since": i.state_since, "slots": i.slots, "task_ids": list(i.task_ids)}
                       for i in p.instances],
         **({"target": target_record(p, pools[name], snapshot.now)} if name in pools else {})}
        for name, p in snapshot.pools.items()]}


def target_record(ps: PoolSnapshot, pool: PoolConfig, now: float) -> dict[str, Any]:
    """The pool's wait target, the p95 of the last hour's waits against it, and the policy's state."""
    from autoscaler.policy import pool_state
    from autoscaler.sizing import quantile

    waits = ps.recent_waits_s
    return {"p95_wait_target_s": pool.p95_wait_target_s,
            "p95_wait_s_last_hour": round(quantile(waits, 0.95), 1) if waits else None,
            "waits_last_hour": len(waits), "state": pool_state(ps, now, pool)}


def daemon_targets(path: Path, now: float, max_age_s: float) -> dict[str, dict[str, Any]] | None:
    """Each pool's ``target`` as the running daemon last wrote it, when the file is at most ``max_age_s``
    old; None when it is missing, unreadable or older (no daemon is ticking)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or now - float(record.get("at", 0.0)) > max_age_s:
        return None
    return {p["pool"]: p["target"] for p in record.get("pools", []) if "target" in p}


def write_fleet(path: Path, snapshot: Snapshot, pools: dict[str, PoolConfig]) -> None:
    """Replace the file whole (a reader never sees half of it); a failure is logged, never raised."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(fleet_record(snapshot, pools)))
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("autoscaler_fleet_unwritable path=%s error=%s", path, exc)  # ticks.json warns once already


def read_fleet(path: Path, now: float) -> FleetStatus:
    """The file as the status page's section; unavailable (with the reason) when missing or unreadable."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return FleetStatus(available=False, reason=f"no autoscaler has written {path} (it writes it each tick)")
    except (OSError, ValueError) as exc:
        return FleetStatus(available=False, reason=f"cannot read {path}: {exc}")
    return fleet_status(record, now)


def fleet_status(record: dict[str, Any], now: float) -> FleetStatus:
    """A ``fleet_record`` as the status page's section, its ages as of ``now`` (unix s)."""
    at = float(record["at"])
    pools = []
    for p in record["pools"]:
        instances = [FleetInstance(id=i["id"], state=i["state"], instance_type=i["instance_type"], market=i["market"],
                                   price_per_hour=i["price_per_hour"], slots=i["slots"], task_ids=i["task_ids"],
                                   state_age_s=round(max(0.0, at - i["state_since"]), 1))
                     for i in p["instances"]]
        cost = sum(i.price_per_hour for i in instances if i.state not in NOT_BILLED)
        pools.append(FleetPool(pool=p["pool"], queue=p["queue"], instances=instances,
                               launches_in_flight=p["launches_in_flight"], cost_per_hour=round(cost, 4)))
    return FleetStatus(observed_at=iso(at), age_s=round(max(0.0, now - at), 1), pools=pools,
                       cost_per_hour=round(sum(p.cost_per_hour for p in pools), 4))


def source(settings: Settings, backend: TaskBackend) -> Source:
    path = fleet_path(settings)
    return lambda now: StatusPart(fleet=read_fleet(path, now))
