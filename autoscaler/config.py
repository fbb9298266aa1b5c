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
    [pools.ec2]                      # provider-specific launch settings (see docs/deploy.md)
    ami = "ami-…"
    subnets = ["subnet-a", "subnet-b"]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from autoscaler.model import InstanceOption, Market, PoolConfig, WarmPoolConfig
from service.errors import ConfigError
from service.settings import Settings, queue_name_problem

LOCAL_TICK_S = 1.0  # local workers start in a second or two: a slow tick would dominate the wait


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
    return PoolConfig(options=options, warm_pool=warm, **raw)


def default_local(settings: Settings) -> AutoscalerConfig:
    """The embedded default: one pool of up to ``SCANTIDE_WORKERS`` local worker processes."""
    pool = PoolConfig(
        name="local", queue=settings.default_queue,
        options=(InstanceOption("local-process", Market.on_demand, 1.0),),
        max_instances=settings.workers, boot_timeout_s=60.0, lost_after_s=max(30.0, 3 * settings.lease_s),
        expected_boot_s=2.0, idle_policy="fixed", idle_timeout_s=settings.local_idle_timeout_s,
    )
    return AutoscalerConfig(tick_s=settings.autoscaler_tick_s or LOCAL_TICK_S, provider="local", pools=[pool])
