"""Autoscaler vocabulary: pool configuration, the fleet snapshot the policy decides on, and actions.

Times are unix seconds (the daemon's clock, or the simulator's virtual clock); prices are US
dollars per hour.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum

MAX_SLOTS = 16  # tasks one instance may run at once
HOURLY_WINDOW_S = 3600.0  # time constant of PoolSnapshot.hourly_arrival_rate_per_s, seconds


class Market(str, Enum):
    spot = "spot"
    on_demand = "on_demand"


class InstanceState(str, Enum):
    """An instance as the daemon sees it, joining the provider's view with the worker registry.

    With several slots, an instance is idle only when every slot's worker is idle, busy when any
    slot holds a task, draining when every live slot is draining, lost when every slot is silent.
    """

    booting = "booting"  # launched or started; no worker of its slots has registered yet
    idle = "idle"  # worker(s) registered, holding no task
    busy = "busy"  # a slot's worker holds a task
    draining = "draining"  # asked to drain; terminated once no slot holds a task
    stopped = "stopped"  # in the warm pool: stopped, pre-initialised, billed for storage only
    stopping = "stopping"  # on its way to stopped or terminated
    lost = "lost"  # running, but its workers stopped heartbeating


# -- slots: several tasks at once on one instance ------------------------------------------------
def slot_worker_ids(instance_id: str, slots: int) -> tuple[str, ...]:
    """The worker ids an instance's slots register under: the instance id itself for one slot
    (as before slots existed), else ``<instance id>:<k>`` for k = 0 … slots-1. The worker side
    (``scantide worker`` with ``SCANTIDE_WORKER_SLOTS``, user data's agents) names them the same."""
    if slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    return (instance_id,) if slots == 1 else tuple(f"{instance_id}:{k}" for k in range(slots))


def instance_of(worker_id: str, instance_ids: Collection[str]) -> str | None:
    """The instance among ``instance_ids`` whose slot registered as ``worker_id`` (the instance id
    itself or ``<instance id>:<k>``, whatever the pool's slot count is now, so instances launched
    before a change of ``slots`` still join); None for a worker of none of them."""
    if worker_id in instance_ids:
        return worker_id
    head, sep, k = worker_id.rpartition(":")
    return head if sep and k.isdigit() and head in instance_ids else None


@dataclass(frozen=True)
class InstanceOption:
    """One way to get capacity; a pool lists them in order of preference."""

    instance_type: str
    """The EC2 instance type (``g5.xlarge``); a label for a local process."""
    market: Market = Market.spot
    """``spot`` or ``on_demand``. Spot instances are one-time requests: never stopped into the warm pool."""
    price_per_hour: float = 1.0
    """What one instance bills, US dollars an hour: the cost cap and the policy's costs count it."""
    subnet: str | None = None
    """Launch this option in this subnet only; unset: the pool's ``subnets``, in order."""

    @property
    def stoppable(self) -> bool:
        """Whether its instances can be stopped into the warm pool: on-demand ones only. Spot instances
        are one-time requests (``providers/ec2.py``), which EC2 refuses to stop."""
        return self.market is Market.on_demand


@dataclass(frozen=True)
class WarmPoolConfig:
    """Stopped, initialised instances a pool starts instead of booting new ones (``[pools.warm_pool]``)."""

    enabled: bool = False
    """Keep a warm pool; it fills with the pool's first on_demand option, which it needs."""
    max_size: int = 4
    """Stopped instances kept at most; those beyond are terminated."""
    min_size: int = 0
    """Stopped instances kept at least: below it, instances are launched, initialised and stopped."""


@dataclass(frozen=True)
class Resources:
    """What one instance runs at once (``[pools.resources]``).

    slots: tasks at once, 1 to ``MAX_SLOTS``. slot_slowdown: one task's run time with ``slots``
    tasks running, over its run time alone, ``slots × sph[1] / sph[slots]`` from the measured scans
    per hour (``benchmarks/throughput.py``); ``autoscaler.config`` reads it from ``slot_profile``,
    never assumes it. slot_profile: the file it was read from (None for one slot).
    """

    slots: int = 1
    slot_slowdown: float = 1.0
    slot_profile: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.slots, bool) or not isinstance(self.slots, int) or not 1 <= self.slots <= MAX_SLOTS:
            raise ValueError(f"resources.slots must be an integer from 1 to {MAX_SLOTS}, got {self.slots!r}")
        if not (isinstance(self.slot_slowdown, (int, float)) and 0 < self.slot_slowdown < float("inf")):
            raise ValueError(f"resources.slot_slowdown must be a positive number, got {self.slot_slowdown!r}")
        if self.slots == 1 and self.slot_slowdown != 1.0:
            raise ValueError("resources.slot_slowdown must be 1 for one slot")


@dataclass(frozen=True)
class PoolConfig:
    """One pool of instances serving one queue (a ``[[pools]]`` table); attribute docstrings are the
    configuration reference's descriptions (``autoscaler.config_reference``)."""

    name: str
    """The pool's name, and its instances' ``scantide:pool`` tag."""
    queue: str
    """The queue its workers serve."""
    options: tuple[InstanceOption, ...]
    """Ways to get an instance, in order of preference: the first is launched, the next ones are the
    fallback when capacity or the cost cap refuses it."""
    min_instances: int = 0
    """Never fewer running."""
    max_instances: int = 10
    """Never more running or booting."""
    max_cost_per_hour: float | None = None
    """The running fleet's price stays under this, US dollars an hour, each instance at the price of the
    option it launched with; unset: no cap."""
    boot_timeout_s: float = 600.0
    """An instance whose worker has not registered by then is terminated, seconds."""
    lost_after_s: float = 120.0
    """An instance whose worker is silent this long is terminated, seconds."""
    expected_service_s: float = 60.0
    """Prior for one task's run time alone on an instance, until measured, seconds."""
    expected_boot_s: float = 180.0
    """How long a cold boot takes, as the policy assumes it, seconds."""
    idle_policy: str = "breakeven"
    """``breakeven`` (keep an idle instance while the replacements it saves are worth more than its
    idling) or ``fixed`` (drain it after ``idle_timeout_s``)."""
    idle_timeout_s: float = 900.0
    """The fixed policy's timeout, and the longest the break-even keeps an instance idle, seconds."""
    warm_pool: WarmPoolConfig = field(default_factory=WarmPoolConfig)
    """Stopped instances to start instead of booting; off by default."""
    expected_start_s: float = 60.0
    """Prior for a warm start (stopped → worker registered), seconds."""
    p95_wait_target_s: float = 300.0
    """The wait target, seconds: the policy keeps the 95th percentile of queue waits (enqueued →
    started) at or under it, at the least cost (``autoscaler.policy``)."""
    arrival_window_s: float = 600.0
    """Time constant of the daemon's arrival-rate smoothing, seconds."""
    resources: Resources = field(default_factory=Resources)
    """Slots per instance and their slowdown."""

    @property
    def slots(self) -> int:
        """Tasks one instance runs at once."""
        return self.resources.slots

    def __post_init__(self) -> None:
        if not self.options:
            raise ValueError(f"pool {self.name!r} needs at least one instance option")
        if not 0 <= self.min_instances <= self.max_instances:
            raise ValueError(f"pool {self.name!r}: need 0 <= min_instances <= max_instances")
        if self.idle_policy not in ("breakeven", "fixed"):
            raise ValueError(f"pool {self.name!r}: idle_policy must be 'breakeven' or 'fixed'")
        if self.arrival_window_s <= 0:
            raise ValueError(f"pool {self.name!r}: need arrival_window_s > 0")
        if not (isinstance(self.p95_wait_target_s, (int, float)) and 0 <= self.p95_wait_target_s < float("inf")):
            raise ValueError(f"pool {self.name!r}: p95_wait_target_s must be a number of seconds >= 0, "
                             f"got {self.p95_wait_target_s!r}")


@dataclass(frozen=True)
class Instance:
    id: str
    pool: str
    option: InstanceOption
    state: InstanceState
    launched_at: float  # when the provider launched (or last started) it
    state_since: float  # when it entered ``state`` (idle since, busy since, …)
    worker_ids: tuple[str, ...] = ()  # its slots' registered workers
    task_ids: tuple[str, ...] = ()  # the tasks its live slots hold
    slots: int = 1  # tasks it runs at once

    @property
    def holds_task(self) -> bool:
        return bool(self.task_ids)

    @property
    def free_slots(self) -> int:
        """Slots that could take a task now (of an idle or busy instance)."""
        return max(0, self.slots - len(self.task_ids))

    def drain_ids(self) -> tuple[str, ...]:
        """Every worker id to ask to drain: its registered workers and each of its slots' ids (a slot
        that registers late must not take a task either)."""
        return tuple(dict.fromkeys((*self.worker_ids, *slot_worker_ids(self.id, self.slots))))


@dataclass(frozen=True)
class PoolSnapshot:
    pool: str
    pending: int  # tasks queued
    running: int  # tasks running
    oldest_queued_age_s: float
    arrival_rate_per_s: float  # recent arrivals per second, smoothed over the pool's arrival_window_s
    instances: tuple[Instance, ...]
    launches_in_flight: int = 0  # launch calls made but not yet visible in the provider's list
    # $/h those launches will bill, at the option each is trying now (a fallback's, not the first
    # option's); None: at the pool's first option
    launches_in_flight_price: float | None = None
    service_time_s: float | None = None  # measured mean run time of recent tasks
    service_time_cv2: float | None = None  # their squared coefficient of variation (variance / mean²)
    # queue waits (enqueued → started), seconds, of the tasks that started in the last hour
    recent_waits_s: tuple[float, ...] = ()
    hourly_arrival_rate_per_s: float | None = None  # the same over HOURLY_WINDOW_S (None: unknown)
    quiet_s: float | None = None  # seconds since the daemon last saw a task arrive (None: not since it started)

    def in_state(self, *states: InstanceState) -> list[Instance]:
        return [i for i in self.instances if i.state in states]


@dataclass(frozen=True)
class Snapshot:
    now: float
    pools: dict[str, PoolSnapshot]


# -- actions --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    pool: str
    reason: str  # journaled: why the policy wants this


@dataclass(frozen=True)
class Launch(Action):
    option: InstanceOption
    count: int
    # $/h this launch may add under the pool's max_cost_per_hour (None: no cap): a fallback to a
    # pricier option launches only as many as fit
    budget_per_hour: float | None = None


@dataclass(frozen=True)
class Start(Action):
    """Start stopped instances from the warm pool."""

    instance_ids: tuple[str, ...]


@dataclass(frozen=True)
class Drain(Action):
    """Ask an instance's workers (one per slot) to finish their tasks and take no new one."""

    instance_id: str
    worker_ids: tuple[str, ...]


@dataclass(frozen=True)
class Stop(Action):
    """Stop drained instances into the warm pool."""

    instance_ids: tuple[str, ...]


@dataclass(frozen=True)
class Terminate(Action):
    instance_ids: tuple[str, ...]
