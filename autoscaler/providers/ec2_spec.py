"""EC2 launch settings per pool, and the user data that boots an instance's agent."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autoscaler.model import MAX_SLOTS
from service.errors import ConfigError

USER_DATA_LIMIT_BYTES = 16 * 1024  # EC2's limit on raw (pre-base64) user data
USER_DATA_TEMPLATE = Path(__file__).with_name("user_data.sh")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
_SSM_PREFIX = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


@dataclass(frozen=True)
class Ec2PoolSpec:
    """How to launch one pool's instances (``[pools.ec2]``, less ``queue`` and ``slots``, which
    ``from_config`` fills from the pool); attribute docstrings are the configuration reference's."""

    ami: str
    """The image instances boot: clearml-agent and the worker's dependencies installed."""
    subnets: Sequence[str]
    """Tried in order (one per AZ gives capacity fallback across zones), unless an option pins its own."""
    security_group_ids: Sequence[str]
    """The instances' security groups."""
    queue: str
    """The queue its agents serve: the pool's."""
    region: str
    """The AWS region, e.g. ``eu-west-1``; one for every pool of a file."""
    ssm_prefix: str
    """SSM Parameter Store path holding ``CLEARML_API_HOST``, ``CLEARML_API_ACCESS_KEY`` and
    ``CLEARML_API_SECRET_KEY``, readable by the instance profile (the boot script fetches them; no
    secret is in the user data)."""
    instance_profile_arn: str | None = None
    """The instance profile, by ARN; give this or ``instance_profile_name``."""
    instance_profile_name: str | None = None
    """The instance profile, by name; give this or ``instance_profile_arn``."""
    key_name: str | None = None
    """An EC2 key pair for SSH; unset: none."""
    extra_tags: Mapping[str, str] = field(default_factory=dict)
    """More tags on each instance (not ``Name``, ``scantide:*`` or ``aws:*``)."""
    volume_size_gb: int | None = 100
    """Root volume in GiB (gp3, encrypted), at least 8."""
    root_device_name: str = "/dev/sda1"
    """The AMI's root device (``/dev/sda1`` on Ubuntu, ``/dev/xvda`` on AL2023)."""
    slots: int = 1
    """clearml-agent daemons the instance runs (the pool's ``resources.slots``), each taking one task at a
    time."""

    def __post_init__(self) -> None:
        # Accept lists from callers but keep the spec immutable.
        object.__setattr__(self, "subnets", tuple(self.subnets))
        object.__setattr__(self, "security_group_ids", tuple(self.security_group_ids))
        object.__setattr__(self, "extra_tags", dict(self.extra_tags))
        object.__setattr__(self, "ssm_prefix", self.ssm_prefix.rstrip("/"))
        problems = []
        if not self.ami:
            problems.append("ami is empty")
        if not self.subnets:
            problems.append("needs at least one subnet")
        if not _NAME.match(self.queue):
            problems.append(f"queue {self.queue!r} has characters other than letters, digits and _.:@-")
        if not _REGION.match(self.region):
            problems.append(f"region {self.region!r} is not a region name")
        if not _SSM_PREFIX.match(self.ssm_prefix):
            problems.append(f"ssm_prefix {self.ssm_prefix!r} must look like /path/to/params")
        if bool(self.instance_profile_arn) == bool(self.instance_profile_name):
            problems.append("give exactly one of instance_profile_arn and instance_profile_name "
                            "(the instance reads its ClearML credentials from SSM with it)")
        reserved = [k for k in self.extra_tags if k.startswith(("scantide:", "aws:")) or k == "Name"]
        if reserved:
            problems.append(f"extra_tags may not set {reserved}")
        if self.volume_size_gb is not None and self.volume_size_gb < 8:
            problems.append("volume_size_gb must be at least 8")
        if isinstance(self.slots, bool) or not isinstance(self.slots, int) or not 1 <= self.slots <= MAX_SLOTS:
            problems.append(f"slots must be an integer from 1 to {MAX_SLOTS}, got {self.slots!r}")
        if problems:
            raise ConfigError("invalid EC2 pool spec: " + "; ".join(problems))


# -- user data ---------------------------------------------------------------------------------
class _UserDataTemplate(string.Template):
    """``$name`` placeholders are lower-case only, so the script's upper-case shell variables,
    ``$(...)``, ``$1`` and ``$$`` pass through untouched; a misspelt placeholder raises KeyError."""

    flags = 0
    pattern = r"""
        \$(?:
          (?P<escaped>(?!))                     # no escape: "$$" is the shell's, not ours
        | (?P<named>[a-z][a-z0-9_]*)
        | \{(?P<braced>[a-z][a-z0-9_]*)\}
        | (?P<invalid>(?!))
        )
    """


def render_user_data(spec: Ec2PoolSpec, pool: str) -> str:
    """The boot script for ``pool``'s instances: no secrets, only where to fetch them."""
    if not _NAME.match(pool):
        raise ConfigError(f"pool name {pool!r} has characters other than letters, digits and _.:@-")
    text = _UserDataTemplate(USER_DATA_TEMPLATE.read_text()).substitute(
        pool=pool, queue=spec.queue, region=spec.region, ssm_prefix=spec.ssm_prefix, slots=str(spec.slots))
    size = len(text.encode())
    if size > USER_DATA_LIMIT_BYTES:
        raise ConfigError(f"user data for pool {pool!r} is {size} bytes; EC2 accepts {USER_DATA_LIMIT_BYTES}")
    return text
