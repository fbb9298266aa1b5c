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

The file is validated whole when it loads (``FileSpec``, pydantic, strict: ``boot_timeout_s = "600"``
is an error, not 600; unknown keys are errors), with the runtime dataclasses' own fields and
defaults (``PoolConfig``, ``Ec2PoolSpec``); each problem names its field path and line:
``autoscaler.toml:7: pools[0].boot_timeout_s: Input should be a valid number``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autoscaler.model import MAX_SLOTS, InstanceOption, Market, PoolConfig, Resources
from autoscaler.providers.ec2_spec import Ec2PoolSpec
from service.errors import ConfigError
from service.settings import Settings, queue_name_problem
from service.toml_lines import Loc, dotted, key_lines, line_of

LOCAL_TICK_S = 1.0  # local workers start in a second or two: a slow tick would dominate the wait
LOCAL_P95_WAIT_TARGET_S = 10.0  # a local worker starts in seconds: a scan need not wait for a busy one
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SLOT_PROFILE = Path("benchmarks/results/throughput.json")  # relative to PROJECT_ROOT
MEASURE_COMMAND = "python benchmarks/throughput.py"
STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
EC2_FROM_POOL = ("queue", "slots")  # Ec2PoolSpec's fields the pool fills, never [pools.ec2]


@dataclass(frozen=True)
class AutoscalerConfig:
    tick_s: float
    provider: str  # "local" or "ec2"
    pools: list[PoolConfig]
    provider_specs: dict[str, dict[str, Any]] = field(default_factory=dict)  # pool → e.g. its [pools.ec2] table


# -- the file as written: validated by pydantic, strictly, the defaults the runtime dataclasses' own ---------
@dataclass(frozen=True)
class ResourcesSpec:
    """``[pools.resources]`` as written: the slot count and, for more than one, the file its slowdown is
    measured in (``slot_resources`` reads it)."""

    slots: Annotated[int, Field(ge=1, le=MAX_SLOTS)] = Resources.slots
    """Tasks one instance runs at once (its workers register as ``<instance id>:<k>``)."""
    slot_profile: str | None = None
    """For more than one slot, the throughput measured per slot count (``python benchmarks/throughput.py``
    writes it; relative to the project root); unset: ``benchmarks/results/throughput.json``. Never assumed:
    a missing file or entry is an error."""


@dataclass(frozen=True)
class PoolSpec(PoolConfig):
    """A ``[[pools]]`` table as written: ``PoolConfig``'s keys and defaults, ``resources`` as written,
    and ``[pools.ec2]``, the EC2 provider's launch settings (``Ec2PoolSpec`` less the pool's queue and
    slots, plus ``endpoint_url``)."""

    resources: ResourcesSpec = field(default_factory=ResourcesSpec)  # type: ignore[assignment]
    """What one instance runs at once."""
    ec2: dict[str, Any] | None = None
    """The EC2 provider's launch settings: required with provider = "ec2", refused otherwise."""


class FileSpec(BaseModel):
    """The whole file. Strict: a string where a number belongs is an error, never converted; unknown
    keys are errors; numbers are finite."""

    model_config = STRICT  # reaches the dataclasses inside

    tick_s: float | None = Field(None, gt=0)
    """How often the autoscaler decides, seconds; unset: ``SCANTIDE_AUTOSCALER_TICK_S``, else 15."""
    provider: Literal["local", "ec2"] = "local"
    """Where instances come from: worker processes on this machine, or EC2."""
    pools: tuple[PoolSpec, ...] = ()
    """The pools, one table each; at least one."""


class Ec2Table(BaseModel):
    """``[pools.ec2]`` with the pool's queue and slots: ``Ec2PoolSpec``, plus the endpoint."""

    model_config = STRICT

    spec: Ec2PoolSpec
    endpoint_url: str | None = None
    """The EC2 API's endpoint (a moto server in tests); unset: AWS's own for the region. Every pool of one
    file names the same region and endpoint."""


def load_config(settings: Settings) -> AutoscalerConfig:
    path = settings.autoscaler_config
    if path is None:
        return default_local(settings)
    try:
        text = Path(path).read_text()
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read autoscaler config {path}: {exc}") from exc
    return parse_config(data, settings, source=str(path), text=text)


def parse_config(data: dict[str, Any], settings: Settings, source: str = "config",
                 text: str | None = None) -> AutoscalerConfig:
    """Validate the file's ``data`` (``tomllib``'s) into the runtime config. The ``ConfigError`` holds
    every problem found, each as ``<source>:<line>: <field path>: <problem>``, the line read from
    ``text`` (the file's TOML) when given."""
    problems = _Problems(source, text)
    try:  # as JSON: strict JSON mode turns arrays into tuples and strings into enums, and converts nothing else
        spec = FileSpec.model_validate_json(json.dumps(data, default=str))
    except ValidationError as exc:
        problems.add_validation(exc, lambda table: _keys(FileSpec, table))
        raise problems.error() from None
    if not spec.pools:
        problems.add((), "no [[pools]] configured")
    pools, specs = [], {}
    for i, pool in enumerate(spec.pools):
        specs[pool.name] = _provider_table(spec.provider, pool, ("pools", i), problems)
        if problem := queue_name_problem(pool.queue):
            problems.add(("pools", i, "queue"), problem)
        if pool.warm_pool.enabled and not any(o.stoppable for o in pool.options):
            problems.add(("pools", i, "warm_pool"), "needs an on_demand option to fill it: EC2 cannot stop "
                         "one-time spot instances")
        try:
            resources = slot_resources(pool.resources.slots, pool.resources.slot_profile)
        except ConfigError as exc:
            problems.add(("pools", i, "resources"), exc.message, shown=("pools", i))  # it names its keys
            continue
        values = {f.name: getattr(pool, f.name) for f in fields(PoolConfig)}
        pools.append(PoolConfig(**{**values, "resources": resources}))
    if problems.found:
        raise problems.error()
    tick = spec.tick_s or settings.autoscaler_tick_s or 15.0
    return AutoscalerConfig(tick_s=tick, provider=spec.provider, pools=pools, provider_specs=specs)


def _provider_table(provider: str, pool: PoolSpec, at: Loc, problems: _Problems) -> dict[str, Any]:
    """The pool's ``[pools.<provider>]`` table, checked now so that a wrong key or type fails the load,
    not each launch."""
    if provider == "local":
        if pool.ec2 is not None:
            problems.add((*at, "ec2"), 'read only with provider = "ec2"')
        return {}
    table = dict(pool.ec2 or {})
    for key in EC2_FROM_POOL:
        if table.pop(key, None) is not None:
            problems.add((*at, "ec2", key), "set from the pool (its queue and resources.slots), not here")
    data = {"spec": {**table, "queue": pool.queue, "slots": pool.slots}}
    if "endpoint_url" in table:
        data["endpoint_url"] = data["spec"].pop("endpoint_url")
    try:
        Ec2Table.model_validate_json(json.dumps(data, default=str))
    except ValidationError as exc:
        problems.add_validation(exc, lambda _: [*(k for k in _keys(Ec2PoolSpec, ()) if k not in EC2_FROM_POOL),
                                                "endpoint_url"],
                                lambda loc: (*at, "ec2", *(loc[1:] if loc[:1] == ("spec",) else loc)))
    except ConfigError as exc:  # Ec2PoolSpec's own checks
        problems.add((*at, "ec2"), exc.message)
    return dict(pool.ec2 or {})


class _Problems:
    """The problems found in one file, each with its field path and line."""

    def __init__(self, source: str, text: str | None) -> None:
        self.source = source
        self.lines = key_lines(text) if text is not None else {}
        self.found: list[tuple[int, str]] = []  # (line or 0, message)

    def add(self, loc: Loc, problem: str, shown: Loc | None = None) -> None:
        """A problem at ``loc``, named as ``shown`` (default ``loc``)."""
        line = line_of(self.lines, loc)
        where = f"{self.source}:{line}" if line is not None else self.source
        shown = loc if shown is None else shown
        self.found.append((line or 0, f"{where}: {dotted(shown)}: {problem}" if shown else f"{where}: {problem}"))

    def add_validation(self, exc: ValidationError, keys: Callable[[Loc], list[str]],
                       relocate: Callable[[Loc], Loc] = lambda loc: loc) -> None:
        """``exc``'s errors; ``keys``: the keys the table at a path accepts, for an unknown one."""
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            if error["type"] == "value_error":  # a dataclass's own check: its message as written
                problem = str(error["ctx"]["error"])
            elif error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
                problem = f"unknown key; known: {', '.join(keys(loc[:-1]))}"
            else:
                problem = error["msg"]
            self.add(relocate(loc), problem)

    def error(self) -> ConfigError:
        return ConfigError("; ".join(message for _, message in sorted(self.found, key=lambda f: f[0])))


def _keys(root: type, loc: Loc) -> list[str]:
    """The keys of the table at ``loc`` under ``root``'s schema."""
    kind: Any = root
    for part in loc:
        if isinstance(part, int):  # an entry of tuple[X, ...]
            kind = get_args(kind)[0]
        else:
            kind = get_type_hints(kind)[part]
        if type(None) in get_args(kind):  # X | None
            kind = next(a for a in get_args(kind) if a is not type(None))
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return list(kind.model_fields)
    return [f.name for f in dataclasses.fields(kind)] if dataclasses.is_dataclass(kind) else []


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
        p95_wait_target_s=LOCAL_P95_WAIT_TARGET_S, resources=_local_resources(settings.worker_slots),
    )
    return AutoscalerConfig(tick_s=settings.autoscaler_tick_s or LOCAL_TICK_S, provider="local", pools=[pool])


def _local_resources(slots: int) -> Resources:
    try:
        return slot_resources(slots)
    except ValueError as exc:
        raise ConfigError(f"SCANTIDE_WORKER_SLOTS: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"SCANTIDE_WORKER_SLOTS={slots}: {exc.message}") from exc
