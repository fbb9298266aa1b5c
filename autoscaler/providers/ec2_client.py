"""The narrow seam between the EC2 provider and boto3 (STYLE #5).

``Ec2Client`` wraps a boto3 EC2 client with exactly the five calls the provider makes and hands
back plain dicts. Tests replace or wrap it to inject ``ClientError``s with chosen codes, or bad
data; nothing else in scantide touches boto3's EC2 client. Retries on throttling, error
classification and mapping live in ``ec2.py``; this module only talks to AWS.

Error codes: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from service.errors import ScantideError

# No capacity for this instance type / market in this subnet's availability zone: try the next
# subnet (another AZ), then the pool's next option.
ZONAL_CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "InsufficientFreeAddressesInSubnet",  # the subnet ran out of IP addresses
    "SpotMaxPriceTooLow",  # spot prices differ per AZ
    "Unsupported",  # "instance type not supported in your requested Availability Zone"
})
# Account quotas are regional: another subnet cannot help, another type or market may.
QUOTA_CODES = frozenset({
    "MaxSpotInstanceCountExceeded",
    "VcpuLimitExceeded",
    "InstanceLimitExceeded",
})
THROTTLING_CODES = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException"})
NOT_FOUND_CODES = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})


class Ec2Error(ScantideError):
    """EC2 refused a call for a reason retrying will not fix (configuration, permissions, bad data)."""

    code = "ec2_error"
    status = 502


class Ec2Throttled(Ec2Error):
    """EC2 kept throttling the account's API calls after every retry; try again later."""

    code = "ec2_throttled"
    status = 503


class Ec2Unavailable(Ec2Error):
    """The EC2 endpoint could not be reached (network, DNS, timeouts)."""

    code = "ec2_unavailable"
    status = 503


def aws_error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def aws_error_message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))


class Ec2Client:
    """Exactly the EC2 calls the provider makes. Every method may raise botocore's ``ClientError``
    (classified by the provider) or ``BotoCoreError`` (connection failures)."""

    def __init__(self, boto_client: Any) -> None:
        self._ec2 = boto_client

    @classmethod
    def create(cls, region: str, *, endpoint_url: str | None = None, max_attempts: int = 3,
               connect_timeout_s: float = 5.0, read_timeout_s: float = 30.0) -> Ec2Client:
        """A client for ``region`` (``endpoint_url``: a moto server in tests).

        botocore's "standard" retry mode (``max_attempts`` calls in all, with its retry quota)
        absorbs brief network blips and short throttling bursts; the provider's own jittered
        back-off sits above it for throttling that lasts longer. Credentials come from boto3's chain.
        """
        import boto3
        from botocore.config import Config

        config = Config(region_name=region, retries={"mode": "standard", "max_attempts": max_attempts},
                        connect_timeout=connect_timeout_s, read_timeout=read_timeout_s)
        return cls(boto3.client("ec2", region_name=region, endpoint_url=endpoint_url, config=config))

    @property
    def region(self) -> str | None:
        meta = getattr(self._ec2, "meta", None)
        return getattr(meta, "region_name", None)

    def run_instances(self, **params: Any) -> list[dict[str, Any]]:
        """``RunInstances``; returns the reservation's instances."""
        return list(self._ec2.run_instances(**params).get("Instances", []))

    def describe_instances(self, filters: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """``DescribeInstances`` over every page; returns the instances of all reservations."""
        paginator = self._ec2.get_paginator("describe_instances")
        out: list[dict[str, Any]] = []
        for page in paginator.paginate(Filters=list(filters), PaginationConfig={"PageSize": 500}):
            for reservation in page.get("Reservations", []):
                out.extend(reservation.get("Instances", []))
        return out

    def terminate_instances(self, instance_ids: Sequence[str]) -> None:
        self._ec2.terminate_instances(InstanceIds=list(instance_ids))

    def stop_instances(self, instance_ids: Sequence[str]) -> None:
        self._ec2.stop_instances(InstanceIds=list(instance_ids))

    def start_instances(self, instance_ids: Sequence[str]) -> list[dict[str, Any]]:
        """``StartInstances``; returns ``StartingInstances`` (id, previous and current state)."""
        return list(self._ec2.start_instances(InstanceIds=list(instance_ids)).get("StartingInstances", []))
