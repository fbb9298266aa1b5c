"""Autoscaler vocabulary: pool configuration, the fleet snapshot the policy decides on, and actions.

Times are unix seconds (the daemon's clock, or the simulator's virtual clock); prices are US
dollars per hour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Market(str, Enum):
    spot = "spot"
    on_demand = "on_demand"


class InstanceState(str, Enum):
    """An instance as the daemon sees it, joining the provider's view with the worker registry."""

    booting = "booting"  # launched or started; its worker has not registered yet
    idle = "idle"  # worker registered, holds no task
    busy = "busy"  # worker holds a task
    draining = "draining"  # asked to drain; terminated once it holds no task
    stopped = "stopped"  # in the warm pool: stopped, pre-initialised, billed for storage only
    stopping = "stopping"  # on its way to stopped or terminated
    lost = "lost"  # running, but its worker stopped heartbeating


@dataclass(frozen=True)
class InstanceOption:
    """One way to get capacity; a pool lists them in order of preference."""

    instance_type: str
    market: Market = Market.spot
    price_per_hour: float = 1.0
    subnet: str | None = None


@dataclass(frozen=True)
class WarmPoolConfig:
    enabled: bool = False
    max_size: int = 4  # stopped instances kept at most
    min_size: int = 0


@dataclass(frozen=True)
class PoolConfig:
    name: str
    queue: str
    options: tuple[InstanceOption, ...]
    min_instances: int = 0
    max_instances: int = 10
    max_cost_per_hour: float | None = None  # the running fleet's price stays under this
    boot_timeout_s: float = 600.0  # a worker that has not registered by then is terminated
    lost_after_s: float = 120.0  # a worker silent this long is terminated
    expected_service_s: float = 60.0  # prior for one task's run time, until measured
    expected_boot_s: float = 180.0  # how long a cold boot takes, as the policy assumes it
    idle_policy: str = "breakeven"  # "breakeven" or "fixed"
    idle_timeout_s: float = 900.0  # for idle_policy="fixed", and the breakeven ceiling
    warm_pool: WarmPoolConfig = field(default_factory=WarmPoolConfig)
    expected_start_s: float = 60.0  # prior for a warm start (stopped → worker registered), seconds
    # What one scan waiting an hour costs, $: the break-even weighs an idle instance's price
    # against the boot it saves plus the wait it saves at this price, and scale-out adds an
    # instance only when the waiting it saves at this price pays for its boot.
    wait_cost_per_hour: float = 1.0
    arrival_window_s: float = 600.0  # time constant of the daemon's arrival-rate smoothing, seconds

    def __post_init__(self) -> None:
        if not self.options:
            raise ValueError(f"pool {self.name!r} needs at least one instance option")
        if not 0 <= self.min_instances <= self.max_instances:
            raise ValueError(f"pool {self.name!r}: need 0 <= min_instances <= max_instances")
        if self.idle_policy not in ("breakeven", "fixed"):
            raise ValueError(f"pool {self.name!r}: idle_policy must be 'breakeven' or 'fixed'")
        if self.arrival_window_s <= 0 or self.wait_cost_per_hour < 0:
            raise ValueError(f"pool {self.name!r}: need arrival_window_s > 0 and wait_cost_per_hour >= 0")


@dataclass(frozen=True)
class Instance:
    id: str
    pool: str
    option: InstanceOption
    state: InstanceState
    launched_at: float  # when the provider launched (or last started) it
    state_since: float  # when it entered ``state`` (idle since, busy since, …)
    worker_id: str | None = None
    task_id: str | None = None


@dataclass(frozen=True)
class PoolSnapshot:
    pool: str
    pending: int  # tasks queued
    running: int  # tasks running
    oldest_queued_age_s: float
    arrival_rate_per_s: float  # recent arrivals, smoothed
    instances: tuple[Instance, ...]
    launches_in_flight: int = 0  # launch calls made but not yet visible in the provider's list
    service_time_s: float | None = None  # measured mean run time of recent tasks

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


@dataclass(frozen=True)
class Start(Action):
    """Start stopped instances from the warm pool."""

    instance_ids: tuple[str, ...]


@dataclass(frozen=True)
class Drain(Action):
    """Ask a worker to finish its task and take no new one."""

    instance_id: str
    worker_id: str


@dataclass(frozen=True)
class Stop(Action):
    """Stop drained instances into the warm pool."""

    instance_ids: tuple[str, ...]


@dataclass(frozen=True)
class Terminate(Action):
    instance_ids: tuple[str, ...]
