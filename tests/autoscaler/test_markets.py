"""Pools that mix markets (spot first, on-demand after): the cost cap counts what each instance
really bills, a fallback to a pricier option stays under it, and the warm pool holds only what
EC2 can stop.

Against the moto server through the EC2 provider, whose seam answers as EC2 does where moto does
not: a one-time spot instance cannot be stopped (``UnsupportedOperation``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from autoscaler.config import parse_config
from autoscaler.model import (
    Drain,
    Instance,
    InstanceOption,
    InstanceState,
    Launch,
    Market,
    PoolSnapshot,
    Snapshot,
    Stop,
    Terminate,
    WarmPoolConfig,
)
from autoscaler.policy import decide
from service.errors import ConfigError
from service.settings import load_settings
from tests.autoscaler.moto_server import Ec2World, MotoServer
from tests.autoscaler.test_scenarios_ec2 import ON_DEMAND, POOL, QUEUE, SPOT, Fleet, SeamClient, launched, make_pool

CHEAP_SPOT = InstanceOption("g4dn.xlarge", Market.spot, 0.30)
PAGE = Path(__file__).resolve().parents[2] / "docs" / "autoscaler.md"


class Ec2Refusals(SeamClient):
    """The seam, refusing what EC2 refuses and moto lets through: stopping a spot instance of a
    one-time request (every spot instance the provider launches)."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(fleet.client.inner)
        self.ec2 = fleet.ec2
        self.refuse = fleet.client.refuse

    def stop_instances(self, instance_ids: Any) -> None:
        described = self.ec2.describe_instances(InstanceIds=list(instance_ids))["Reservations"]
        spot = [i["InstanceId"] for r in described for i in r["Instances"] if i.get("InstanceLifecycle") == "spot"]
        if spot:
            raise ClientError({"Error": {"Code": "UnsupportedOperation", "Message": (
                f"You can't stop the Spot Instance '{spot[0]}' because it is associated with a one-time Spot "
                "Instance request. You can only stop Spot Instances associated with persistent Spot Instance "
                "requests.")}}, "StopInstances")
        self.inner.stop_instances(instance_ids)


@pytest.fixture
def fleet(moto: MotoServer, world: Ec2World, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(moto, world, tmp_path)
    f.client = Ec2Refusals(f)
    f.provider.client = f.client
    yield f
    f.backend.close()


def listed_price(fleet: Fleet) -> float:
    """$/h of the pool's running and booting instances, from what EC2 lists."""
    return sum(i.option.price_per_hour for i in fleet.provider.list_instances(POOL)
               if i.provider_state in ("pending", "running"))


# -- the cost cap -------------------------------------------------------------------------------
def test_a_fallback_to_on_demand_stays_under_max_cost_per_hour(fleet: Fleet) -> None:
    """Spot is out: the launch sized at the spot price falls back to on-demand, which costs more each.
    It launches only what the cap still allows at the on-demand price."""
    fleet.client.refuse = lambda params: "InstanceMarketOptions" in params
    pool = make_pool(SPOT, ON_DEMAND, max_instances=8, max_cost_per_hour=2.0, expected_service_s=900.0)
    daemon = fleet.daemon(pool)
    fleet.submit(12)

    (launch,) = [a for a in daemon.tick() if isinstance(a, Launch)]

    assert launch.option == SPOT and launch.count == 4, "4 × $0.45 fit under $2/h"
    assert {i.option for i in fleet.provider.list_instances(POOL)} == {ON_DEMAND}
    assert listed_price(fleet) <= pool.max_cost_per_hour, f"${listed_price(fleet):.3f}/h under a $2/h cap"
    assert len(fleet.live()) == 1, "one on-demand instance at $1.006 fits"
    for _ in range(3):  # the policy still asks for spot, which fits the $0.99/h left; on demand does not
        daemon.tick()
    assert len(fleet.live()) == 1 and listed_price(fleet) <= pool.max_cost_per_hour
    assert any("max_cost_per_hour" in e["reason"] for e in fleet.entries("launch_failed"))


def test_the_cap_skips_an_option_it_cannot_afford_for_a_cheaper_later_one(fleet: Fleet) -> None:
    """Options in order g5 spot, g5 on-demand, g4dn spot; no g5 spot. $0.50/h left under the cap buys no
    on-demand instance, so the fallback goes on to the cheaper g4dn spot."""
    fleet.client.refuse = lambda params: (params["InstanceType"] == SPOT.instance_type
                                          and "InstanceMarketOptions" in params)
    pool = make_pool(SPOT, ON_DEMAND, CHEAP_SPOT, max_instances=8, max_cost_per_hour=0.5, expected_service_s=900.0)
    daemon = fleet.daemon(pool)
    fleet.submit(4)

    daemon.tick()

    assert [i.option for i in fleet.provider.list_instances(POOL)] == [CHEAP_SPOT]
    skipped = [e for e in fleet.entries("launch_failed") if e["option"]["market"] == "on_demand"]
    assert skipped and "max_cost_per_hour" in skipped[0]["reason"]


NOW = 100_000.0


def _instance(iid: str, option: InstanceOption, state: InstanceState, idle_for: float = 0.0) -> Instance:
    return Instance(id=iid, pool=POOL, option=option, state=state, launched_at=NOW - 900, state_since=NOW - idle_for,
                    worker_ids=(iid,) if state is not InstanceState.booting else ())


def test_scale_in_over_the_cap_drains_by_each_instance_price() -> None:
    """$2.46/h of idle instances under a $2/h cap: draining the longest idle, an on-demand one at $1.006,
    is enough. Counting every instance at the first option's $0.45 drained two."""
    pool = make_pool(SPOT, ON_DEMAND, max_cost_per_hour=2.0, max_instances=8)
    idle = (_instance("i-od-old", ON_DEMAND, InstanceState.idle, idle_for=120),
            _instance("i-od-new", ON_DEMAND, InstanceState.idle, idle_for=60),
            _instance("i-spot", SPOT, InstanceState.idle, idle_for=30))
    ps = PoolSnapshot(pool=POOL, pending=0, running=0, oldest_queued_age_s=0, arrival_rate_per_s=200 / 3600,
                      instances=idle)

    drains = [a for a in decide(Snapshot(NOW, {POOL: ps}), NOW, {POOL: pool}) if isinstance(a, Drain)]

    assert [d.instance_id for d in drains] == ["i-od-old"]


def test_launches_in_flight_count_at_the_price_they_launch_at() -> None:
    """Two on-demand instances in flight (a fallback) hold $2.01/h of a $2.5/h cap: one more spot fits, not three."""
    pool = make_pool(SPOT, ON_DEMAND, max_cost_per_hour=2.5, max_instances=8, expected_service_s=900.0)
    ps = PoolSnapshot(pool=POOL, pending=20, running=0, oldest_queued_age_s=300, arrival_rate_per_s=0.0,
                      instances=(), launches_in_flight=2, launches_in_flight_price=2 * ON_DEMAND.price_per_hour)

    actions = decide(Snapshot(NOW, {POOL: ps}), NOW, {POOL: pool})

    assert launched(actions) == 1


# -- the warm pool with spot first ----------------------------------------------------------------
def page_pool_toml(world: Ec2World, moto: MotoServer) -> str:
    """docs/autoscaler.md's example config as it stands, in this moto world, with timeouts no test time reaches."""
    text = PAGE.read_text()
    example = re.search(r"A full example, loaded as it stands.*?```toml\n(.*?)```", text, re.S)
    assert example, "docs/autoscaler.md's example config"
    toml = example.group(1).split("[pools.ec2]")[0]
    for key, value in (("name", f'"{POOL}"'), ("queue", f'"{QUEUE}"'), ("boot_timeout_s", "3600"),
                       ("lost_after_s", "3600")):
        toml = re.sub(rf"^{key} = .*$", f"{key} = {value}", toml, count=1, flags=re.M)
    return toml + world.ec2_toml(moto, "/scantide/test")


def test_the_warm_pool_fills_with_on_demand_instances_when_spot_comes_first(
        fleet: Fleet, moto: MotoServer, world: Ec2World, tmp_path: Path) -> None:
    """docs/autoscaler.md's example (g5 spot, g4dn spot, g5 on demand; warm pool min_size 2) on an empty queue
    for 30 minutes. One-time spot instances cannot be stopped: launching them to fill the warm pool
    relaunched two every few ticks, forever. The warm pool launches its instances on demand."""
    import tomllib

    settings = load_settings(state_dir=tmp_path / "state")
    (pool,) = parse_config(tomllib.loads(page_pool_toml(world, moto)), settings).pools
    assert pool.options[0].market is Market.spot and pool.warm_pool.min_size == 2
    daemon = fleet.daemon(pool)
    booted: set[str] = set()
    seen: dict[str, float] = {}  # instance → when it was first listed, on the test's clock

    for _ in range(int(1800 / 15)):  # every 15 s for 30 minutes
        now = fleet.clock()
        for inst in fleet.provider.list_instances(POOL):  # each agent: up after a boot, drains when asked
            up = now - seen.setdefault(inst.id, now) >= pool.expected_boot_s
            if inst.provider_state == "running" and inst.id not in booted and up:
                fleet.boot(inst.id)
                booted.add(inst.id)
            elif inst.id in booted and inst.provider_state == "running":
                fleet.acknowledge(inst.id)
        for iid in booted - {i.id for i in fleet.provider.list_instances(POOL) if i.provider_state == "running"}:
            fleet.backend.unregister_worker(iid)  # its instance stopped or ended: the agent exited
            booted.discard(iid)
        daemon.tick()
        fleet.clock.advance(15)

    launches = sum(e["count"] for e in fleet.entries("launch"))
    stopped = [i for i in fleet.provider.list_instances(POOL) if i.provider_state == "stopped"]
    assert launches == pool.warm_pool.min_size, f"{launches} instances launched for a warm pool of 2"
    assert len(stopped) == 2 and {i.option.market for i in stopped} == {Market.on_demand}
    assert not [i for i in fleet.provider.list_instances(POOL) if i.provider_state != "stopped"]


def test_a_drained_spot_instance_is_terminated_not_stopped() -> None:
    """The warm pool is short, but a drained one-time spot instance cannot join it: it is terminated,
    and the warm pool is filled on demand."""
    pool = make_pool(SPOT, ON_DEMAND, warm_pool=WarmPoolConfig(enabled=True, min_size=1, max_size=2))
    drained = Instance(id="i-spot", pool=POOL, option=SPOT, state=InstanceState.draining, launched_at=NOW - 900,
                       state_since=NOW - 30, worker_ids=("i-spot",))
    ps = PoolSnapshot(pool=POOL, pending=0, running=0, oldest_queued_age_s=0, arrival_rate_per_s=0.0,
                      instances=(drained,))

    actions = decide(Snapshot(NOW, {POOL: ps}), NOW, {POOL: pool})

    assert not [a for a in actions if isinstance(a, Stop)]
    assert [a.instance_ids for a in actions if isinstance(a, Terminate)] == [("i-spot",)]
    (fill,) = [a for a in actions if isinstance(a, Launch)]
    assert fill.option == ON_DEMAND and fill.count == 1


def test_a_warm_pool_without_an_on_demand_option_is_refused(tmp_path: Path) -> None:
    raw = {"provider": "local", "pools": [{
        "name": POOL, "queue": QUEUE, "options": [{"instance_type": "g5.xlarge", "market": "spot"}],
        "warm_pool": {"enabled": True, "min_size": 1}}]}
    with pytest.raises(ConfigError, match=r"pools\[0\].*warm_pool.*on_demand"):
        parse_config(raw, load_settings(state_dir=tmp_path))
