"""One simulated run: a trace, a scaling policy, the simulated provider and queue, one virtual clock.

The default policy runs through the real daemon (``Autoscaler.tick()`` every ``tick_s`` with the
virtual clock and inline launches); the ClearML baseline runs its own poll loop as a process.
Both meet the same provider (same boot draws for the n-th launch) and the same queue, with the
pool's slots: each instance serves ``pool.slots`` tasks at once, each at the trace's service time
times ``pool.resources.slot_slowdown``.

A run ends when every task has finished and the fleet has wound down to nothing, or
``wind_down_s`` after the last task finished, whichever comes first; instances still up then are
billed until that moment, so a policy pays for the idle tail it leaves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autoscaler.baselines.clearml import ClearMLAutoscaler
from autoscaler.daemon import Autoscaler, Journal
from autoscaler.model import InstanceOption, Market, PoolConfig, Resources, WarmPoolConfig
from autoscaler.policy import decide
from autoscaler.sim.clock import EventLoop, Process
from autoscaler.sim.provider import Bill, BootModel, SimProvider
from autoscaler.sim.queue import SimQueue, SimTask
from autoscaler.sim.traces import Trace

POLICIES = ("default", "clearml")


@dataclass(frozen=True)
class SimSettings:
    tick_s: float = 15.0  # the daemon's tick
    boot: BootModel = field(default_factory=BootModel)
    wind_down_s: float = 3600.0
    overrun_s: float = 12 * 3600.0  # give up on unfinished tasks this long after the trace ends


def default_pool() -> PoolConfig:
    """One g5.xlarge-class on-demand GPU pool (about $1/h), ten instances at most.

    The warm pool is off here (``simulate(warm_pool=True)`` turns it on). With it on, every one of
    the ten is kept pre-initialised (``min_size`` 10, so that a burst of ten starts warm): a stopped
    instance bills only its volume (about $0.011/h for 100 GB of gp3, reported as storage beside
    the GPU bill), and the policy pays for initialising them (a cold launch each) at the start of
    the run.
    """
    return PoolConfig(name="gpu", queue="scans",
                      options=(InstanceOption("g5.xlarge", Market.on_demand, price_per_hour=1.006),),
                      max_instances=10, warm_pool=WarmPoolConfig(enabled=False, min_size=10, max_size=10))


@dataclass
class RunResult:
    policy: str
    warm_pool: bool
    resources: Resources  # the instances' slots and their slowdown
    tasks: list[SimTask]
    bill: Bill
    end_s: float
    series: list[tuple[float, int, int]]  # (time s, tasks queued, instances billed), at each change
    interrupted: int
    journal: Journal

    @property
    def slots(self) -> int:
        return self.resources.slots


def run(trace: Trace, policy: str = "default", pool: PoolConfig | None = None, seed: int = 0,
        settings: SimSettings = SimSettings()) -> RunResult:
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}: use one of {', '.join(POLICIES)}")
    pool = pool or default_pool()
    loop = EventLoop()
    series: list[tuple[float, int, int]] = []

    def sample() -> None:
        point = (loop.now, len(queue.pending), provider.billed_count())
        if not series or series[-1][1:] != point[1:]:
            series.append(point)

    queue = SimQueue(loop, pool.queue, seed, on_change=sample, slots=pool.slots,
                     slowdown=pool.resources.slot_slowdown)
    provider = SimProvider(loop, seed, settings.boot, on_ready=lambda iid, _pool: queue.register(iid),
                           on_gone=queue.deregister, on_change=sample, on_notice=queue.hand_back)
    tasks = [SimTask(index=i, arrival_s=a, service_s=s) for i, (a, s) in enumerate(trace.jobs)]
    for task in tasks:
        loop.at(task.arrival_s, queue.submit, task)
    journal = Journal(keep=100_000)
    if policy == "default":
        scaler = Autoscaler([pool], provider, queue, decide, journal=journal, clock=loop, executor=None)
        loop.spawn(_ticks(scaler, settings.tick_s))
    else:
        loop.spawn(ClearMLAutoscaler(pool, provider, queue, loop, journal=journal).run())

    loop.run(until=lambda: queue.finished == len(tasks), limit=trace.duration_s + settings.overrun_s)
    loop.run(until=lambda: provider.billed_count() == 0, limit=loop.now + settings.wind_down_s)
    return RunResult(policy=policy, warm_pool=pool.warm_pool.enabled, resources=pool.resources, tasks=tasks,
                     bill=provider.close(loop.now), end_s=loop.now, series=series, interrupted=queue.interrupted,
                     journal=journal)


def _ticks(scaler: Autoscaler, tick_s: float) -> Process:
    while True:
        scaler.tick()
        yield tick_s
