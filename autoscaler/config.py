"""Autoscaler configuration: pools from a TOML file, or one local pool for the embedded mode.

    tick_s = 15
    provider = "ec2"                 # or "local"

    [[pools]]
    name = "gpu"
    queue = "default"
    max_instances = 8
    max_cost_per_hour = 12.0
    [[pools.options]]                # in order of preference
    instance_type = "g5.xlarge"
    market = "spot"
    price_per_hour = 0.45
    [[pools.options]]
    instance_type = "g5.xlarge"
    market = "on_demand"
    price_per_hour = 1.01
    [pools.warm_pool]
    enabled = true
    max_size = 4
    [pools.resources]                # optional: tasks one instance runs at once
    slots = 2
    slot_profile = "benchmarks/results/throughput.json"   # the default; measured, never assumed
    [pools.ec2]                      # provider-specific launch settings (see docs/deploy.md)
    ami = "ami-…"
    subnets = ["subnet-a", "subnet-b"]
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from autoscaler.model import InstanceOption, Market, PoolConfig, Resources, WarmPoolConfig
from service.errors import ConfigError
from service.settings import Settings, queue_name_problem

LOCAL_TICK_S = 1.0  # local workers start in a second or two: a slow tick would dominate the wait
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SLOT_PROFILE = Path("benchmarks/results/throughput.json")  # relative to PROJECT_ROOT
MEASURE_COMMAND = "python benchmarks/throughput.py"


@dataclass(frozen=True)
class AutoscalerConfig:
    tick_s: float
    provider: str  # "local" or "ec2"
    pools: list[PoolConfig]
    provider_specs: dict[str, dict[str, Any]] = field(default_factory=dict)  # pool → e.g. its [pools.ec2] table


def load_config(settings: Settings) -> AutoscalerConfig:
    path = settings.autoscaler_config
    if path is None:
        return default_local(settings)
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read autoscaler config {path}: {exc}") from exc
    return parse_config(data, settings, source=str(path))


def parse_config(data: dict[str, Any], settings: Settings, source: str = "config") -> AutoscalerConfig:
    provider = data.get("provider", "local")
    if provider not in ("local", "ec2"):
        raise ConfigError(f"{source}: provider must be 'local' or 'ec2', not {provider!r}")
    pools, specs = [], {}
    for i, raw in enumerate(data.get("pools", [])):
        raw = dict(raw)
        specs[raw.get("name", "")] = raw.pop(provider, {}) if provider != "local" else {}
        try:
            pools.append(_pool(raw))
        except (TypeError, ValueError, KeyError) as exc:
            raise ConfigError(f"{source}: pools[{i}]: {exc}") from exc
        except ConfigError as exc:  # the slot profile
            raise ConfigError(f"{source}: pools[{i}]: {exc.message}") from exc
        problem = queue_name_problem(pools[-1].queue) if isinstance(pools[-1].queue, str) else "not a string"
        if problem:
            raise ConfigError(f"{source}: pools[{i}].queue: {problem}")
    if not pools:
        raise ConfigError(f"{source}: no [[pools]] configured")
    tick = float(data.get("tick_s", settings.autoscaler_tick_s or 15.0))
    return AutoscalerConfig(tick_s=tick, provider=provider, pools=pools, provider_specs=specs)


def _pool(raw: dict[str, Any]) -> PoolConfig:
    known = {f.name for f in fields(PoolConfig)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(known)}")
    options = tuple(
        InstanceOption(instance_type=o["instance_type"], market=Market(o.get("market", "spot")),
                       price_per_hour=float(o.get("price_per_hour", 1.0)), subnet=o.get("subnet"))
        for o in raw.pop("options", [])
    )
    warm = WarmPoolConfig(**raw.pop("warm_pool", {}))
    if warm.enabled and not any(o.stoppable for o in options):
        raise ValueError("warm_pool needs an on_demand option to fill it: EC2 cannot stop one-time spot instances")
    resources = _resources(raw.pop("resources", {}))
    return PoolConfig(options=options, warm_pool=warm, resources=resources, **raw)


def _resources(raw: dict[str, Any]) -> Resources:
    """``[pools.resources]``: ``slots`` and, for more than one, the ``slot_profile`` it is measured in."""
    unknown = set(raw) - {"slots", "slot_profile"}
    if unknown:
        raise ValueError(f"resources: unknown keys {sorted(unknown)}; known: ['slot_profile', 'slots']")
    slots = raw.get("slots", 1)
    Resources(slots=slots)  # the range check, before any file is read
    return slot_resources(slots, raw.get("slot_profile"))


def slot_resources(slots: int, profile: str | Path | None = None) -> Resources:
    """``Resources`` for ``slots`` tasks at once, the slowdown read from ``profile`` (a relative path
    is taken from the project root; None: ``benchmarks/results/throughput.json`` there).

    The profile is what ``benchmarks/throughput.py`` writes: ``{"scans_per_hour": {"1": …, "2": …},
    …}``, scans per hour per slot count on one machine. With N slots one task takes
    ``N × sph[1] / sph[N]`` times as long as alone. One slot needs no profile; for more, a missing
    file or entry is a ``ConfigError`` naming the command that measures it: never a guess.
    """
    Resources(slots=slots)  # raises ValueError for an out-of-range count
    if slots == 1:
        return Resources()
    path = Path(profile) if profile is not None else DEFAULT_SLOT_PROFILE
    if not path.is_absolute():
        path = PROJECT_ROOT / path
    hint = f"measure it on the worker machine with `{MEASURE_COMMAND}` (it writes {DEFAULT_SLOT_PROFILE})"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"resources.slots = {slots} needs the measured throughput per slot count, and "
                          f"resources.slot_profile {path} does not exist: {hint}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"resources.slot_profile {path} is not readable JSON ({exc}): {hint}") from None
    per_hour = data.get("scans_per_hour") if isinstance(data, dict) else None
    if not isinstance(per_hour, dict):
        raise ConfigError(f"resources.slot_profile {path} has no \"scans_per_hour\" object: {hint}")
    rates = {}
    for n in (1, slots):
        value = per_hour.get(str(n))
        if value is None:
            raise ConfigError(f"resources.slot_profile {path} has no scans_per_hour for {n} slot(s) (it has "
                              f"{sorted(per_hour, key=str)}): {hint}, {n} slot(s) included")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"resources.slot_profile {path}: scans_per_hour[{n!r}] must be a positive number, "
                              f"got {value!r}")
        rates[n] = float(value)
    return Resources(slots=slots, slot_slowdown=slots * rates[1] / rates[slots], slot_profile=str(path))


def default_local(settings: Settings) -> AutoscalerConfig:
    """The embedded default: one pool of up to ``SCANTIDE_WORKERS`` local worker processes."""
    pool = PoolConfig(
        name="local", queue=settings.default_queue,
        options=(InstanceOption("local-process", Market.on_demand, 1.0),),
        max_instances=settings.workers, boot_timeout_s=60.0, lost_after_s=max(30.0, 3 * settings.lease_s),
        expected_boot_s=2.0, idle_policy="fixed", idle_timeout_s=settings.local_idle_timeout_s,
        resources=_local_resources(settings.worker_slots),
    )
    return AutoscalerConfig(tick_s=settings.autoscaler_tick_s or LOCAL_TICK_S, provider="local", pools=[pool])


def _local_resources(slots: int) -> Resources:
    try:
        return slot_resources(slots)
    except ValueError as exc:
        raise ConfigError(f"SCANTIDE_WORKER_SLOTS: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"SCANTIDE_WORKER_SLOTS={slots}: {exc.message}") from exc
