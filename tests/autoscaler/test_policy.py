"""The default policy, table-driven: a snapshot and the time in, actions out."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from autoscaler.model import (
    Action,
    Drain,
    Instance,
    InstanceOption,
    InstanceState,
    Launch,
    Market,
    PoolConfig,
    PoolSnapshot,
    Resources,
    Snapshot,
    Start,
    Stop,
    Terminate,
    WarmPoolConfig,
    slot_worker_ids,
)
from autoscaler.policy import decide, pool_state

NOW = 100_000.0
OPTION = InstanceOption("g5.xlarge", Market.on_demand, price_per_hour=1.0)  # stoppable: the warm pool takes it
POOL = PoolConfig(name="gpu", queue="scans", options=(OPTION,), expected_service_s=60.0, expected_boot_s=180.0)
WARM = replace(POOL, warm_pool=WarmPoolConfig(enabled=True, min_size=0, max_size=4))
PER_HOUR = 1 / 3600


def inst(iid: str, state: InstanceState, since: float = 0.0, task: str | None = None,
         launched: float | None = None, slots: int = 1, tasks: tuple[str, ...] = ()) -> Instance:
    """An instance in ``state`` for ``since`` seconds before NOW, with ``slots`` slots holding ``task``
    (or ``tasks``)."""
    has_worker = state not in (InstanceState.booting, InstanceState.stopped, InstanceState.stopping)
    return Instance(id=iid, pool="gpu", option=OPTION, state=state,
                    launched_at=NOW - (launched if launched is not None else since + 300),
                    state_since=NOW - since, worker_ids=slot_worker_ids(iid, slots) if has_worker else (),
                    task_ids=(task,) if task else tasks, slots=slots)


def busy(iid: str) -> Instance:
    return inst(iid, InstanceState.busy, task=f"t-{iid}")


def snap(*instances: Instance, pending: int = 0, rate_per_h: float = 0.0, in_flight: int = 0,
         oldest: float = 0.0, **measured: Any) -> Snapshot:
    """``measured``: the snapshot's measurements (``service_time_s``, ``recent_waits_s``, …)."""
    ps = PoolSnapshot(pool="gpu", pending=pending, running=sum(len(i.task_ids) for i in instances),
                      oldest_queued_age_s=oldest, arrival_rate_per_s=rate_per_h * PER_HOUR,
                      instances=tuple(instances), launches_in_flight=in_flight, **measured)
    return Snapshot(now=NOW, pools={"gpu": ps})


def run(s: Snapshot, pool: PoolConfig = POOL) -> list[Action]:
    actions = decide(s, NOW, {"gpu": pool})
    _check_invariants(s, actions)
    return actions


def _check_invariants(s: Snapshot, actions: list[Action]) -> None:
    """Whatever the case: every action says why, and nothing busy or not yet drained is stopped or terminated."""
    by_id = {i.id: i for i in s.pools["gpu"].instances}
    for a in actions:
        assert a.reason.strip(), a
        if isinstance(a, (Terminate, Stop)):
            for iid in a.instance_ids:
                i = by_id[iid]
                assert not i.holds_task or i.state is InstanceState.lost, (a, i)
                assert i.state not in (InstanceState.idle, InstanceState.busy), (a, i)


def launched(actions: list[Action]) -> int:
    return sum(a.count for a in actions if isinstance(a, Launch))


def of(actions: list[Action], kind: type) -> list[Action]:
    return [a for a in actions if isinstance(a, kind)]


# -- scale out ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case, snapshot, pool, expect", [
    ("activation: one job at zero", snap(pending=1), POOL, 1),
    ("activation at zero even with a loose target", snap(pending=1), replace(POOL, p95_wait_target_s=3600.0), 1),
    ("a booting instance covers one job", snap(inst("b", InstanceState.booting, launched=30), pending=1), POOL, 0),
    ("a launch in flight covers one job", snap(pending=1, in_flight=1), POOL, 0),
    ("an idle worker covers one job", snap(inst("i", InstanceState.idle), pending=1), POOL, 0),
    ("nothing queued, nothing launched", snap(), POOL, 0),
    ("max_instances caps the backlog", snap(busy("a"), pending=50, oldest=300), replace(POOL, max_instances=4), 3),
    ("max_cost_per_hour caps the backlog", snap(busy("a"), pending=50, oldest=300),
     replace(POOL, max_cost_per_hour=2.5), 1),
    ("at max_instances nothing more", snap(busy("a"), busy("b"), pending=5), replace(POOL, max_instances=2), 0),
])
def test_scale_out(case: str, snapshot: Snapshot, pool: PoolConfig, expect: int) -> None:
    assert launched(run(snapshot, pool)) == expect, case


def test_activation_reason_says_so() -> None:
    (action,) = run(snap(pending=1))
    assert isinstance(action, Launch) and "activation" in action.reason


def test_scale_out_is_sized_from_backlog_not_one_per_job() -> None:
    n = launched(run(snap(pending=20, oldest=10)))
    assert 1 < n < 20  # short jobs share instances: no per-job overshoot
    assert launched(run(snap(pending=40, oldest=10))) >= n  # a bigger backlog never gets fewer


def test_scale_out_counts_booting_and_in_flight() -> None:
    alone = launched(run(snap(pending=12)))
    booting = [inst(f"b{k}", InstanceState.booting, launched=20) for k in range(3)]
    # each booting instance replaces at least one launch (it is ready sooner than a new one)
    assert launched(run(snap(*booting, pending=12))) <= alone - 3
    assert launched(run(snap(pending=12, in_flight=3))) < alone


# -- keep or drain idle instances ---------------------------------------------------------------
@pytest.mark.parametrize("case, rate_per_h, pool, drained", [
    ("frequent arrivals keep the idle instance", 60.0, POOL, False),
    ("rare arrivals drain it", 0.5, POOL, True),
    ("no arrivals drain it", 0.0, POOL, True),
    ("min_instances keeps it even without arrivals", 0.0, replace(POOL, min_instances=1), False),
    ("fixed idle policy keeps it under idle_timeout_s", 0.0, replace(POOL, idle_policy="fixed"), False),
])
def test_idle_break_even(case: str, rate_per_h: float, pool: PoolConfig, drained: bool) -> None:
    actions = run(snap(inst("i", InstanceState.idle, since=30), rate_per_h=rate_per_h), pool)
    assert bool(of(actions, Drain)) is drained, case
    assert not of(actions, Terminate)  # drain first, always


@pytest.mark.parametrize("case, rate_per_h, drained", [
    # one busy, one idle, 60 s tasks: at 30/h the busy one keeps up and an arrival that finds it busy
    # waits ~120 s on average (Erlang C, exponential prior), within the 300 s target; at 120/h one
    # instance cannot keep up, so such arrivals would need a replacement, and they are frequent
    ("beside a busy one, waiting for it stays within the target", 30.0, True),
    ("beside a busy one that cannot keep up, frequent arrivals keep it", 120.0, False),
])
def test_a_second_instance_is_kept_only_when_waiting_for_the_first_would_pass_the_target(
        case: str, rate_per_h: float, drained: bool) -> None:
    actions = run(snap(busy("a"), inst("i", InstanceState.idle, since=30), rate_per_h=rate_per_h))
    assert [a.instance_id for a in of(actions, Drain)] == (["i"] if drained else []), case


def test_the_only_instance_is_worth_a_replacement() -> None:
    """Alone, the same idle instance at 60/h is kept: the next arrival would wait for a cold boot."""
    assert not of(run(snap(inst("i", InstanceState.idle, since=30), rate_per_h=60.0)), Drain)


def test_scale_out_counts_arrivals_expected_before_new_capacity_is_ready() -> None:
    counts = [launched(run(snap(pending=1, rate_per_h=r))) for r in (0.0, 60.0, 240.0)]
    assert counts[0] == 1 and counts == sorted(counts) and counts[2] > counts[0]
    assert counts[2] < 240 * POOL.expected_boot_s / 3600 + 1  # never one per expected arrival


def test_idle_past_idle_timeout_is_drained_even_when_arrivals_are_frequent() -> None:
    actions = run(snap(inst("i", InstanceState.idle, since=1000), rate_per_h=60.0), replace(POOL, idle_timeout_s=900))
    assert [a.instance_id for a in of(actions, Drain)] == ["i"]


def test_only_the_surplus_idle_is_drained_longest_idle_first() -> None:
    idle = [inst("old", InstanceState.idle, since=200), inst("new", InstanceState.idle, since=20)]
    actions = run(snap(*idle, rate_per_h=20.0))
    assert [a.instance_id for a in of(actions, Drain)] == ["old"]


def test_no_drain_while_tasks_are_queued() -> None:
    assert not of(run(snap(inst("i", InstanceState.idle, since=30), pending=2)), Drain)


# -- drain before terminate ---------------------------------------------------------------------
@pytest.mark.parametrize("case, instance, pool, expect", [
    ("acknowledged drain, no task: terminated", inst("d", InstanceState.draining), POOL, Terminate),
    ("draining but took a task: left alone", inst("d", InstanceState.draining, task="t1"), POOL, None),
    ("busy: never terminated", busy("b"), POOL, None),
    ("idle: drained, not terminated", inst("i", InstanceState.idle, since=60), POOL, Drain),
    ("stuck boot: terminated", inst("s", InstanceState.booting, launched=700), replace(POOL, boot_timeout_s=600),
     Terminate),
    ("boot within its timeout: left alone", inst("s", InstanceState.booting, launched=500),
     replace(POOL, boot_timeout_s=600), None),
    ("lost worker: terminated", inst("l", InstanceState.lost, since=200), POOL, Terminate),
    ("lost worker with a task: terminated", inst("l", InstanceState.lost, since=200, task="t"), POOL, Terminate),
    ("drained with the warm pool short: stopped", inst("d", InstanceState.draining), WARM, Stop),
    ("stopped while the warm pool is off: terminated", inst("x", InstanceState.stopped), POOL, Terminate),
])
def test_lifecycle(case: str, instance: Instance, pool: PoolConfig, expect: type | None) -> None:
    actions = [a for a in run(snap(instance), pool) if not isinstance(a, Launch)]
    if expect is None:
        assert actions == [], case
    else:
        assert [type(a) for a in actions] == [expect], case
        a = actions[0]
        assert (a.instance_id if isinstance(a, Drain) else a.instance_ids) in (instance.id, (instance.id,))


# -- warm pool ----------------------------------------------------------------------------------
def test_warm_pool_starts_stopped_instances_before_launching() -> None:
    actions = run(snap(inst("w1", InstanceState.stopped), pending=1), WARM)
    assert [type(a) for a in actions] == [Start]
    assert actions[0].instance_ids == ("w1",)


def test_warm_pool_launches_only_what_stopped_instances_cannot_cover() -> None:
    actions = run(snap(inst("w1", InstanceState.stopped), pending=20, oldest=60), WARM)
    starts, launches = of(actions, Start), of(actions, Launch)
    assert starts and starts[0].instance_ids == ("w1",)
    assert actions.index(starts[0]) < actions.index(launches[0]) if launches else True


def test_warm_pool_stops_while_short_and_terminates_when_full() -> None:
    drained = [inst(f"d{k}", InstanceState.draining) for k in range(2)]
    parked = [inst(f"s{k}", InstanceState.stopped) for k in range(3)]
    actions = run(snap(*drained, *parked, rate_per_h=30.0), WARM)  # max_size 4: room for one more
    assert [a.instance_ids for a in of(actions, Stop)] == [("d0",)]
    assert [a.instance_ids for a in of(actions, Terminate)] == [("d1",)]


def test_warm_pool_is_filled_to_min_size() -> None:
    pool = replace(WARM, warm_pool=WarmPoolConfig(enabled=True, min_size=2, max_size=4))
    assert launched(run(snap(inst("s0", InstanceState.stopped)), pool)) == 1
    assert launched(run(snap(inst("s0", InstanceState.stopped), inst("s1", InstanceState.stopped)), pool)) == 0


def test_warm_pool_above_max_size_is_trimmed() -> None:
    parked = [inst(f"s{k}", InstanceState.stopped, since=100 - k) for k in range(6)]
    (action,) = run(snap(*parked), WARM)
    assert isinstance(action, Terminate) and len(action.instance_ids) == 2


def test_warm_pool_drains_idle_sooner_than_cold() -> None:
    """A warm start is cheap to come back from, so the break-even keeps idle instances for less."""
    idle = inst("i", InstanceState.idle, since=30)
    rate = 24.0  # an arrival every 150 s: less than a cold boot's billing (~200 s), more than a warm start's
    assert not of(run(snap(idle, rate_per_h=rate), POOL), Drain)
    assert of(run(snap(idle, rate_per_h=rate), WARM), Drain)


def test_pools_are_decided_separately_and_unknown_pools_ignored() -> None:
    s = snap(pending=1)
    other = replace(POOL, name="cpu")
    assert decide(Snapshot(now=NOW, pools={**s.pools, "zzz": s.pools["gpu"]}), NOW, {"gpu": POOL, "cpu": other})
    assert decide(s, NOW, {"cpu": other}) == []


# -- slots: instances × slots of capacity, each slot slowed as measured --------------------------
PROFILE_SPH = {1: 1200.0, 2: 2000.0, 4: 2300.0}  # scans per hour by slot count, as a throughput profile says


def slotted(pool: PoolConfig, slots: int, slowdown: float | None = None) -> PoolConfig:
    """``pool`` with ``slots`` slots, slowed as ``PROFILE_SPH`` says unless ``slowdown`` is given."""
    if slots == 1:
        return pool
    if slowdown is None:
        slowdown = slots * PROFILE_SPH[1] / PROFILE_SPH[slots]
    return replace(pool, resources=Resources(slots=slots, slot_slowdown=slowdown))


LONG = replace(POOL, expected_service_s=900.0)  # tasks long enough that a second of capacity is worth a boot


def test_more_slots_need_fewer_instances_for_the_same_backlog() -> None:
    counts = [launched(run(snap(pending=20, oldest=10), slotted(POOL, n))) for n in (1, 2, 4)]
    assert counts[0] > counts[1] >= counts[2] >= 1, counts
    assert counts[1] <= counts[0] / 2 + 1  # two slots at 1.2x each: about half the instances


def test_the_slowdown_is_respected() -> None:
    """Two slots that share the machine so badly that each task takes twice as long add no throughput:
    as many instances as with one slot; a larger slowdown never gets fewer."""
    one = launched(run(snap(pending=20, oldest=10), POOL))
    by_slowdown = [launched(run(snap(pending=20, oldest=10), slotted(POOL, 2, s))) for s in (1.0, 1.2, 1.6, 2.0)]
    assert by_slowdown == sorted(by_slowdown) and by_slowdown[0] < by_slowdown[-1]
    assert by_slowdown[-1] == one


def test_a_free_slot_of_a_busy_instance_takes_a_queued_task() -> None:
    def launches(slots: int) -> int:
        busy_one = inst("a", InstanceState.busy, slots=slots, tasks=("t1",))
        return launched(run(snap(busy_one, pending=1, oldest=10), slotted(LONG, slots)))

    assert launches(1) == 1  # the only slot is busy for ~450 s more: worth a boot
    assert launches(2) == 0  # the second slot takes it now


def test_booting_instances_and_launches_in_flight_bring_all_their_slots() -> None:
    booting = inst("b", InstanceState.booting, launched=30)
    assert launched(run(snap(booting, pending=2), LONG)) == 1
    assert launched(run(snap(replace(booting, slots=2), pending=2), slotted(LONG, 2))) == 0
    assert launched(run(snap(pending=2, in_flight=1), LONG)) == 1
    assert launched(run(snap(pending=2, in_flight=1), slotted(LONG, 2))) == 0


@pytest.mark.parametrize("slots, slowdown, drained", [
    (1, None, False),  # at 80/h one instance of one slot cannot keep up: the second is worth keeping
    (2, None, True),  # two slots at 1.2x keep up, and waits for them stay within the target
    (2, 2.0, False),  # two slots at 2x serve less than one: the second instance is worth keeping again
])
def test_the_break_even_weighs_instances_of_slots(slots: int, slowdown: float | None, drained: bool) -> None:
    busy_one = inst("a", InstanceState.busy, slots=slots, tasks=tuple(f"t{k}" for k in range(slots)))
    idle_one = inst("i", InstanceState.idle, since=30, slots=slots)
    actions = run(snap(busy_one, idle_one, rate_per_h=80.0), slotted(POOL, slots, slowdown))
    assert bool(of(actions, Drain)) is drained


def test_scale_in_drains_every_slot_of_the_instance() -> None:
    (drain,) = of(run(snap(inst("i", InstanceState.idle, since=30, slots=2)), slotted(POOL, 2)), Drain)
    assert (drain.instance_id, drain.worker_ids) == ("i", ("i:0", "i:1"))
    # a slot that has not registered yet is asked too, so that it takes no task when it does
    late = replace(inst("j", InstanceState.idle, since=30, slots=3), worker_ids=("j:0",))
    (drain,) = of(run(snap(late), slotted(POOL, 3, 1.5)), Drain)
    assert drain.worker_ids == ("j:0", "j:1", "j:2")


def test_a_draining_instance_is_terminated_only_when_no_slot_holds_a_task() -> None:
    pool = slotted(POOL, 2)
    one_left = inst("d", InstanceState.draining, slots=2, tasks=("t1",))
    assert [a for a in run(snap(one_left), pool) if not isinstance(a, Launch)] == []
    (end,) = run(snap(inst("d", InstanceState.draining, slots=2)), pool)
    assert isinstance(end, Terminate) and end.instance_ids == ("d",)


def test_the_warm_pool_holds_instances_not_slots() -> None:
    """The warm pool keeps enough stopped instances for the slots a burst needs: half as many with two."""
    pool = replace(WARM, warm_pool=WarmPoolConfig(enabled=True, min_size=0, max_size=8))
    stopped = []
    for slots in (1, 2):
        drained = [inst(f"d{k}", InstanceState.draining, slots=slots) for k in range(6)]
        actions = run(snap(*drained, rate_per_h=30.0), slotted(pool, slots))
        stopped.append(sum(len(a.instance_ids) for a in of(actions, Stop)))
    assert stopped[1] == -(-stopped[0] // 2) and stopped[1] < stopped[0]


# -- the wait target: p95_wait_target_s ----------------------------------------------------------
# 80 scans/h of 80 s tasks, as the daemon measures them (uniform 40-120 s: cv² 1/12). Erlang C with the
# Allen-Cunneen factor (1 + cv²) / 2 = 0.54: three instances wait ~68 s at the 95th percentile, four
# ~18 s; a cold boot (180 s) is no help for a 60 s target, and is for a 600 s one.
MEDIUM = dict(rate_per_h=80.0, service_time_s=80.0, service_time_cv2=1 / 12)
TIGHT, LOOSE = replace(POOL, p95_wait_target_s=60.0), replace(POOL, p95_wait_target_s=600.0)


@pytest.mark.parametrize("case, pool, launches", [
    ("a tight target holds the Erlang C count warm", TIGHT, 4),
    ("a target a cold boot meets holds nothing", LOOSE, 0),
    ("a looser tight target holds fewer", replace(POOL, p95_wait_target_s=75.0), 3),
])
def test_the_warm_floor_is_sized_by_erlang_c(case: str, pool: PoolConfig, launches: int) -> None:
    actions = run(snap(**MEDIUM), pool)
    assert launched(actions) == launches, case
    assert all("warm floor of" in a.reason for a in of(actions, Launch))


def test_the_warm_floor_counts_instances_up_and_keeps_them_idle() -> None:
    up = [busy("a"), inst("b", InstanceState.booting, launched=30), *(inst(f"i{k}", InstanceState.idle, since=60)
                                                                      for k in range(2))]
    assert run(snap(*up, **MEDIUM), TIGHT) == []  # four up: nothing launched, nothing drained
    assert [a.instance_id for a in of(run(snap(*up, **MEDIUM), LOOSE), Drain)] == ["i0", "i1"]


def test_a_fixed_idle_policy_holds_no_floor() -> None:
    """idle_policy = "fixed" keeps its timeout and nothing more: the target drives scale-out only."""
    fixed = replace(TIGHT, idle_policy="fixed")
    assert launched(run(snap(**MEDIUM), fixed)) == 0
    assert launched(run(snap(busy("a"), pending=2, oldest=50, **MEDIUM), fixed)) >= 1


def test_the_floor_outlasts_the_idle_timeout() -> None:
    """An instance the target needs is not drained for idling past idle_timeout_s, which only bounds
    what the break-even keeps."""
    idle = inst("i", InstanceState.idle, since=5000)
    assert not of(run(snap(idle, rate_per_h=2.0, service_time_s=80.0), TIGHT), Drain)
    assert of(run(snap(idle, rate_per_h=2.0, service_time_s=80.0), LOOSE), Drain)


def test_slots_count_as_servers_of_the_floor() -> None:
    """Erlang C counts servers: with two slots, each task 1.2x as long (96 s, as measured on a slot), the
    target needs four servers as with one slot, so two instances."""
    assert launched(run(snap(**{**MEDIUM, "service_time_s": 96.0}), slotted(TIGHT, 2))) == 2


def test_a_last_hour_over_the_target_holds_one_more() -> None:
    over = tuple([10.0] * 90 + [120.0] * 10)  # p95 120 s against a 60 s target
    under = tuple([10.0] * 100)
    assert launched(run(snap(**MEDIUM, recent_waits_s=over), TIGHT)) == 5
    assert launched(run(snap(**MEDIUM, recent_waits_s=under), TIGHT)) == 4
    assert launched(run(snap(**MEDIUM, recent_waits_s=over[:10]), TIGHT)) == 4  # too few waits to say


def test_a_long_silence_bounds_the_rate() -> None:
    """The smoothed rate outlives the arrivals: after an hour without one, 80/h is not believed (at
    most 3/h, which one instance serves within the target)."""
    idle = [inst(f"i{k}", InstanceState.idle, since=60) for k in range(4)]
    assert len(of(run(snap(*idle, **MEDIUM, quiet_s=3600.0), TIGHT), Drain)) == 3
    assert not of(run(snap(*idle, **MEDIUM, quiet_s=60.0), TIGHT), Drain)


@pytest.mark.parametrize("case, pool, launches", [
    ("two 60 s tasks behind a busy one start within 300 s", POOL, 0),
    ("a 60 s target cannot wait for them", replace(POOL, p95_wait_target_s=60.0, expected_boot_s=30.0), 1),
])
def test_a_backlog_waits_as_long_as_the_target_allows(case: str, pool: PoolConfig, launches: int) -> None:
    assert launched(run(snap(busy("a"), pending=2, oldest=10), pool)) == launches, case


def test_a_backlog_already_past_the_target_gets_capacity_sooner_than_it_frees() -> None:
    """Long tasks: the queued ones will start late whatever is done, but not a half-hour task later."""
    s = snap(busy("a"), pending=2, oldest=900, service_time_s=1800.0)
    assert launched(run(s, POOL)) >= 1
    assert launched(run(snap(busy("a"), pending=2, oldest=900, service_time_s=90.0), POOL)) == 0


@pytest.mark.parametrize("case, snapshot, pool, state", [
    ("nothing up, nothing queued", snap(), POOL, "at zero"),
    ("a task at zero", snap(pending=1), POOL, "scaling out (+1)"),
    ("four held for the target", snap(*[inst(f"i{k}", InstanceState.idle, since=60) for k in range(4)], **MEDIUM),
     TIGHT, "holding 4 warm for the target"),
    ("an idle instance not worth its price", snap(inst("i", InstanceState.idle, since=60)), POOL, "draining 1"),
    ("busy, nothing to add", snap(busy("a"), rate_per_h=10.0), POOL, "serving with 1"),
])
def test_the_pool_state_says_what_the_policy_does(case: str, snapshot: Snapshot, pool: PoolConfig,
                                                  state: str) -> None:
    assert pool_state(snapshot.pools["gpu"], NOW, pool) == state, case
