"""Spot in the simulator: spot prices on the bill, interruptions with a two-minute notice, tasks handed
back uncounted and run again, capacity falling back to on demand, and ``scantide simulate --market``."""

from __future__ import annotations

import json
import math
import random

import pytest
import typer
from typer.testing import CliRunner

from autoscaler.cli import register
from autoscaler.model import InstanceOption, Market
from autoscaler.sim.clock import EventLoop
from autoscaler.sim.provider import SPOT_PRICE_FRACTION, BootModel, SimProvider, market_options
from autoscaler.sim.traces import Trace, poisson_arrivals
from autoscaler.sim.world import SimSettings, default_pool
from autoscaler.simulate import simulate

ON_DEMAND = default_pool().options[0]
SPOT_PRICE = round(ON_DEMAND.price_per_hour * SPOT_PRICE_FRACTION, 4)


def long_jobs(seed: int = 3) -> Trace:
    """Six hours, a 20–40 minute scan every ten minutes or so: interruptions catch tasks mid-run."""
    rng = random.Random(seed)
    jobs = tuple((a, rng.uniform(1200, 2400)) for a in poisson_arrivals(rng, 1 / 600, 6 * 3600))
    return Trace(name="long", jobs=jobs, duration_s=6 * 3600)


def often(rate_per_hour: float = 1.0, **boot: float) -> SimSettings:
    return SimSettings(boot=BootModel(spot_interruptions_per_hour=rate_per_hour, **boot))


def test_market_options_put_spot_first_at_its_price_and_on_demand_after() -> None:
    spot, fallback = market_options(default_pool().options, "spot")
    assert (spot.market, spot.instance_type, spot.price_per_hour) == (Market.spot, "g5.xlarge", SPOT_PRICE)
    assert fallback == ON_DEMAND
    assert market_options(default_pool().options, "on-demand") == (ON_DEMAND,)
    own = (InstanceOption("g4dn.xlarge", Market.spot, 0.3), ON_DEMAND)
    assert market_options(own, "spot") == own  # a pool's own spot prices are kept
    with pytest.raises(ValueError, match="no on-demand option"):
        market_options(own[:1], "on-demand")
    with pytest.raises(ValueError, match="spot or on-demand"):
        market_options(own, "reserved")


@pytest.mark.parametrize("trace", ["grin-day", "steady-60"])
def test_spot_bills_less_than_on_demand_for_the_same_trace(trace: str) -> None:
    spot = simulate(trace, vs="clearml", market="spot")
    on_demand = simulate(trace, vs="clearml", market="on-demand")
    for s, d in zip(spot.summaries, on_demand.summaries):
        assert s.cost_usd < 0.6 * d.cost_usd, (s.label, s.cost_usd, d.cost_usd)
        assert s.unfinished == 0 and d.interruptions == 0
    assert spot.record()["interruptions"] == spot.ours.bill.interruptions


def test_spot_time_is_billed_at_the_spot_price() -> None:
    result = simulate(long_jobs(), market="spot", settings=often()).ours
    bill = result.bill
    assert bill.interruptions > 0 and bill.capacity_errors == 0  # every instance was spot
    assert bill.cost == pytest.approx(bill.billed_s * SPOT_PRICE / 3600)


@pytest.mark.parametrize("policy", ["default", "clearml"])
def test_interrupted_tasks_are_handed_back_run_again_and_finish_without_counting_an_attempt(policy: str) -> None:
    result = simulate(long_jobs(), policy=policy, market="spot", settings=often(2.0))
    tasks = result.ours.tasks
    handed_back = [t for t in tasks if t.interruptions]
    assert result.ours.bill.interruptions >= 5 and len(handed_back) >= 3
    assert all(t.finished_at is not None for t in tasks)  # none lost
    assert all(t.attempts == 1 and t.runs == 1 + t.interruptions for t in tasks)
    assert result.ours.interrupted == 0  # no run lost with its instance: each was handed back at the notice
    for t in handed_back:  # the last run took its whole service time, after the hand-back
        assert t.finished_at - t.started_at == pytest.approx(t.service_s)


def test_the_daemon_journals_each_interruption_and_replaces_the_capacity() -> None:
    result = simulate(long_jobs(), market="spot", settings=often(2.0)).ours
    interrupted = [e for e in result.journal.recent if e["kind"] == "interrupted"]
    assert len(interrupted) == result.bill.interruptions
    launches = sum(e["count"] for e in result.journal.recent if e["kind"] == "launch")
    assert launches == result.bill.cold_launches > result.bill.interruptions
    assert result.end_s < long_jobs().duration_s + 4 * 3600


@pytest.mark.parametrize("market", [Market.spot, Market.on_demand])
def test_a_spot_instance_is_reclaimed_at_the_end_of_its_notice_and_billed_until_then(market: Market) -> None:
    loop = EventLoop()
    seen: dict[str, float] = {}
    provider = SimProvider(
        loop, 0, BootModel(spot_interruptions_per_hour=360.0, cold_boot_s=(100.0, 100.0), pending_s=(20.0, 20.0)),
        on_ready=lambda iid, _pool: seen.setdefault("ready", loop.now),
        on_gone=lambda iid: seen.setdefault("gone", loop.now),
        on_notice=lambda iid: seen.update(notice=loop.now, listed=provider.list_instances("gpu")[0].interrupted))
    option = market_options((ON_DEMAND,), "spot")[0] if market is Market.spot else ON_DEMAND
    provider.launch("gpu", option, 1)
    loop.run(until=lambda: "gone" in seen, limit=7200.0)
    bill = provider.close(loop.now)
    if market is Market.on_demand:
        assert "notice" not in seen and "gone" not in seen and bill.interruptions == 0
        return
    assert 20.0 < seen["notice"] < 100.0 and seen["listed"]  # mean 10 s of running before the notice
    assert "ready" not in seen  # the agents die on the notice: no worker registers after it
    assert seen["gone"] == seen["notice"] + 120.0 and provider.list_instances("gpu") == []
    assert bill.interruptions == 1 and bill.billed_s == math.ceil(seen["gone"] - 20.0)
    assert bill.cost == pytest.approx(bill.billed_s * SPOT_PRICE / 3600)


def test_spot_capacity_errors_fall_back_to_on_demand_at_its_price() -> None:
    result = simulate("grin-day", market="spot", settings=often(0.05, capacity_error_p=0.5)).ours
    journal = result.journal.recent
    fallbacks = [e for e in journal if e["kind"] == "launch_failed" and e.get("fallback")]
    assert any(e["option"]["market"] == Market.spot for e in fallbacks)  # then on demand was tried
    bill = result.bill
    assert bill.billed_s * SPOT_PRICE / 3600 < bill.cost < bill.billed_s * ON_DEMAND.price_per_hour / 3600
    assert all(t.finished_at is not None for t in result.tasks)


def test_a_spot_run_is_deterministic_for_a_seed() -> None:
    a = simulate(long_jobs(), vs="clearml", market="spot", settings=often(), seed=2).record()
    assert a == simulate(long_jobs(), vs="clearml", market="spot", settings=often(), seed=2).record()
    assert a["interruptions"] > 0


def test_scantide_simulate_market_spot_prints_the_interruptions() -> None:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """scantide (test)"""

    register(app)
    runner = CliRunner()
    args = ["simulate", "--trace", "long-jobs", "--vs", "clearml", "--spot-interruptions-per-hour", "0.5"]
    spot = runner.invoke(app, [*args, "--market", "spot"])
    assert spot.exit_code == 0, spot.output
    assert "interruptions" in spot.output and "spot (0.5 interruptions/instance-h)" in spot.output
    record = json.loads(spot.output.strip().splitlines()[-1])
    assert record["interruptions"] > 0 and record["unfinished"] == 0
    on_demand = json.loads(runner.invoke(app, [*args, "--market", "on-demand"]).output.strip().splitlines()[-1])
    assert on_demand["interruptions"] == 0 and record["cost_usd"] < on_demand["cost_usd"]
    bad = runner.invoke(app, [*args, "--market", "reserved"])
    assert bad.exit_code != 0 and "spot or on-demand" in bad.output
