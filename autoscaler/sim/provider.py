"""A simulated ``ComputeProvider``: instances that take time to boot, start and stop, and a bill.

Boot model (seconds, drawn per launch or start from seeded streams): an instance is ``pending``
for ``pending_s`` and then ``running``; its worker registers ``cold_boot_s`` after a launch (the
AMI boots, the agent installs and starts) or ``warm_start_s`` after a start of a stopped,
pre-initialised instance. A stop takes ``stopping_s``. Each launch or start call fails with
``CapacityError`` with probability ``capacity_error_p``.

Spot: an instance launched with a ``spot`` option is interrupted at ``spot_interruptions_per_hour``
per hour it runs (a Poisson process from its own stream; on-demand instances never are). The
interruption notice comes ``notice_s`` (two minutes, as EC2 gives) before EC2 takes the instance
back: from the notice the provider lists it ``interrupted`` and ``on_notice(instance_id)`` tells the
queue, whose workers hand their tasks back (``SimQueue.hand_back``); at the notice's end the
instance is terminated, unless the autoscaler terminated it first. ``market_options`` turns a
pool's options into one market: spot at ``SPOT_PRICE_FRACTION`` of the on-demand price.

Billing follows EC2 Linux, on demand and spot alike, each at its option's ``price_per_hour``: per
second from the moment the instance is ``running``
(after a launch or a start) until the stop or terminate call, with a 60 s minimum each time;
``pending``, ``stopping`` and ``stopped`` instances bill no compute. A stopped instance bills its
volume, ``storage_per_hour`` (100 GB of gp3 at $0.08 per GB-month is about $0.011/h), kept apart
from the GPU bill (``Bill.storage_cost``).

Each random quantity has its own stream, so the n-th launch draws the same boot time whichever
policy drives the provider (common random numbers: two policies see the same machines).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from autoscaler.model import InstanceOption, Market
from autoscaler.providers.base import CapacityError, ComputeProvider, ProviderInstance
from autoscaler.sim.clock import EventLoop

MIN_BILLED_S = 60
# Spot at this fraction of the on-demand price: docs/autoscaler.md's example pool, g5.xlarge at $0.45/h spot
# against $1.006/h on demand.
SPOT_PRICE_FRACTION = 0.45


@dataclass(frozen=True)
class BootModel:
    """The simulated machines: uniform ranges in seconds, capacity errors, storage and spot interruptions.

    ``spot_interruptions_per_hour``: notices per running spot instance-hour. 0.05 (one every 20
    running hours) is on the pessimistic side of EC2's usual rates, so that runs exercise the
    hand-back; ``notice_s``: from the notice to the instance's termination.
    """

    cold_boot_s: tuple[float, float] = (90.0, 240.0)
    warm_start_s: tuple[float, float] = (30.0, 90.0)
    pending_s: tuple[float, float] = (10.0, 30.0)
    stopping_s: float = 20.0
    capacity_error_p: float = 0.0
    storage_per_hour: float = 0.011  # $ per stopped instance (its volume)
    spot_interruptions_per_hour: float = 0.05
    notice_s: float = 120.0


@dataclass
class _Instance:
    id: str
    pool: str
    option: InstanceOption
    state: str  # pending | running | stopping | stopped
    launched_at: float
    generation: int = 0  # bumped on every state change that cancels scheduled events
    billed_from: float | None = None
    stopped_since: float | None = None  # storage billing
    interrupted: bool = False  # a spot interruption notice came; terminated at its end


@dataclass
class Bill:
    billed_s: int = 0
    cost: float = 0.0
    storage_cost: float = 0.0  # $ for the volumes of stopped instances
    cold_launches: int = 0
    warm_starts: int = 0
    capacity_errors: int = 0
    interruptions: int = 0  # spot interruption notices


class SimProvider(ComputeProvider):
    def __init__(self, loop: EventLoop, seed: int, boot: BootModel,
                 on_ready: Callable[[str, str], None], on_gone: Callable[[str], None],
                 on_change: Callable[[], None] = lambda: None,
                 on_notice: Callable[[str], None] = lambda _id: None) -> None:
        """``on_ready(instance_id, pool)`` registers the worker; ``on_gone(instance_id)`` removes it;
        ``on_notice(instance_id)``: a spot interruption notice came for it."""
        self.loop = loop
        self.boot = boot
        self.bill = Bill()
        self._on_ready, self._on_gone, self._on_change, self._on_notice = on_ready, on_gone, on_change, on_notice
        self._streams = {name: random.Random(f"{seed}:{name}")
                         for name in ("cold", "warm", "pending", "capacity", "interrupt")}
        self._instances: dict[str, _Instance] = {}
        self._ids = 0

    # -- the ComputeProvider interface -----------------------------------------------------
    def list_instances(self, pool: str) -> list[ProviderInstance]:
        return [ProviderInstance(id=i.id, pool=i.pool, option=i.option, provider_state=i.state,
                                 launched_at=i.launched_at, interrupted=i.interrupted)
                for i in self._instances.values() if i.pool == pool]

    def launch(self, pool: str, option: InstanceOption, count: int) -> list[str]:
        self._maybe_capacity_error(f"launch of {count} {option.instance_type}")
        ids = []
        for _ in range(count):
            self._ids += 1
            inst = _Instance(id=f"i-{self._ids:05d}", pool=pool, option=option, state="pending",
                             launched_at=0.0)
            self._instances[inst.id] = inst
            self._boot(inst, self._draw("cold", self.boot.cold_boot_s))
            self.bill.cold_launches += 1
            ids.append(inst.id)
        return ids

    def start(self, instance_ids: list[str]) -> list[str]:
        ready = [i for i in instance_ids if i in self._instances and self._instances[i].state == "stopped"]
        if ready:
            self._maybe_capacity_error(f"start of {len(ready)} stopped instance(s)")
        for iid in ready:
            self._boot(self._instances[iid], self._draw("warm", self.boot.warm_start_s))
            self.bill.warm_starts += 1
        return ready

    def stop(self, instance_ids: list[str]) -> None:
        now = self.loop.now
        for iid in instance_ids:
            inst = self._instances.get(iid)
            if inst is None or inst.state in ("stopping", "stopped"):
                continue
            self._end_billing(inst, now)
            inst.state, inst.generation = "stopping", inst.generation + 1
            self._on_gone(iid)
            self._at(now + self.boot.stopping_s, inst, self._stopped)
        self._on_change()

    def terminate(self, instance_ids: list[str]) -> None:
        now = self.loop.now
        for iid in instance_ids:
            inst = self._instances.pop(iid, None)
            if inst is None:
                continue
            self._end_billing(inst, now)
            self._end_storage(inst, now)
            inst.generation += 1
            self._on_gone(iid)
        self._on_change()

    # -- what the simulator reads ----------------------------------------------------------
    def billed_count(self) -> int:
        """Instances launched or started and not yet stopping, stopped or terminated."""
        return sum(1 for i in self._instances.values() if i.state in ("pending", "running"))

    def close(self, now: float) -> Bill:
        """End every open billing segment at ``now`` (the end of the simulation)."""
        for inst in self._instances.values():
            self._end_billing(inst, now)
            self._end_storage(inst, now)
        return self.bill

    # -- internals -------------------------------------------------------------------------
    def _boot(self, inst: _Instance, boot_s: float) -> None:
        now = self.loop.now
        self._end_storage(inst, now)
        pending = min(self._draw("pending", self.boot.pending_s), boot_s)
        inst.state, inst.launched_at = "pending", now
        inst.generation += 1
        self._at(now + pending, inst, self._running)
        self._at(now + boot_s, inst, self._ready)
        self._on_change()

    def _at(self, t: float, inst: _Instance, fn: Callable[[_Instance], None]) -> None:
        gen = inst.generation

        def fire() -> None:
            if self._instances.get(inst.id) is inst and inst.generation == gen:
                fn(inst)

        self.loop.at(t, fire)

    def _running(self, inst: _Instance) -> None:
        inst.state, inst.billed_from = "running", self.loop.now
        rate = self.boot.spot_interruptions_per_hour
        if inst.option.market is Market.spot and rate > 0:  # memoryless: one draw per run is the process
            self._at(self.loop.now + self._streams["interrupt"].expovariate(rate / 3600.0), inst, self._notice)
        self._on_change()

    def _ready(self, inst: _Instance) -> None:
        if not inst.interrupted:  # the boot script kills the agents on a notice: none registers after it
            self._on_ready(inst.id, inst.pool)

    def _notice(self, inst: _Instance) -> None:
        inst.interrupted = True
        self.bill.interruptions += 1
        self._on_notice(inst.id)
        self.loop.after(self.boot.notice_s, self._reclaim, inst)  # whatever state it is in by then
        self._on_change()

    def _reclaim(self, inst: _Instance) -> None:
        if self._instances.get(inst.id) is inst:
            self.terminate([inst.id])

    def _stopped(self, inst: _Instance) -> None:
        inst.state, inst.stopped_since = "stopped", self.loop.now
        self._on_change()

    def _end_billing(self, inst: _Instance, now: float) -> None:
        if inst.billed_from is None:
            return
        seconds = max(MIN_BILLED_S, math.ceil(now - inst.billed_from))
        self.bill.billed_s += seconds
        self.bill.cost += seconds * inst.option.price_per_hour / 3600.0
        inst.billed_from = None

    def _end_storage(self, inst: _Instance, now: float) -> None:
        if inst.stopped_since is not None:
            self.bill.storage_cost += (now - inst.stopped_since) * self.boot.storage_per_hour / 3600.0
            inst.stopped_since = None

    def _draw(self, stream: str, bounds: tuple[float, float]) -> float:
        return self._streams[stream].uniform(*bounds)

    def _maybe_capacity_error(self, what: str) -> None:
        if self.boot.capacity_error_p > 0 and self._streams["capacity"].random() < self.boot.capacity_error_p:
            self.bill.capacity_errors += 1
            raise CapacityError(f"InsufficientInstanceCapacity (simulated) for {what}")


def market_options(options: tuple[InstanceOption, ...], market: str) -> tuple[InstanceOption, ...]:
    """A pool's options in one market. ``"on-demand"``: its on-demand options. ``"spot"``: its spot
    options, or, when it has none, each on-demand option as spot at ``SPOT_PRICE_FRACTION`` of its
    price; then its on-demand options, the fallback when spot has no capacity (and the warm pool's)."""
    on_demand = tuple(o for o in options if o.market is Market.on_demand)
    if market == "on-demand":
        if not on_demand:
            raise ValueError("the pool has no on-demand option")
        return on_demand
    if market != "spot":
        raise ValueError(f"market must be spot or on-demand, got {market!r}")
    spot = tuple(o for o in options if o.market is Market.spot) or tuple(
        replace(o, market=Market.spot, price_per_hour=round(o.price_per_hour * SPOT_PRICE_FRACTION, 4))
        for o in on_demand)
    return spot + on_demand
