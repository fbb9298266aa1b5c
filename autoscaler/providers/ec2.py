"""EC2 compute provider: GPU instances that boot a ``clearml-agent`` pulling from the pool's queue.

Every instance carries the tags ``scantide:pool=<pool>``, ``scantide:managed=true`` and
``Name=scantide-<pool>`` (its root volume too), plus ``scantide:price`` (the option's dollars per
hour) and, when the option pins a subnet, ``scantide:subnet``. ``list_instances`` reads only those
tags and EC2's own fields, so a restarted daemon rebuilds the same view, options included:

- ``instance_type`` from ``InstanceType``; ``market`` from ``InstanceLifecycle`` (``"spot"`` →
  spot, absent → on-demand); ``price_per_hour`` from ``scantide:price``; ``subnet`` from
  ``scantide:subnet``. An instance launched from option ``o`` lists with an option equal to ``o``.

Launch policy:

- ``MinCount=1, MaxCount=<still wanted>``: EC2 launches as many as it has capacity for. The
  provider asks the same subnet again for the rest until it answers with a capacity error, then
  moves to the option's next subnet (another AZ). It returns whatever it got, possibly fewer than
  asked for: the instances exist (and are tagged) either way, and the next tick sees the shortfall.
  ``CapacityError`` only when no instance at all could be launched, so the daemon falls back to
  the pool's next option. Quota errors (vCPU, spot instance count) skip the remaining subnets.
- Each ``RunInstances`` call has its own ``ClientToken``, reused by every retry of that call, so a
  retried request never launches twice.
- Throttling is retried with full-jitter exponential back-off a bounded number of times (above
  botocore's own "standard" retries), then raises ``Ec2Throttled``.
- Instances are IMDSv2-only, shut themselves down when their agent exits
  (``InstanceInitiatedShutdownBehavior=terminate``), and spot ones are one-time requests that
  terminate on interruption (so they cannot be stopped into the warm pool). Their tasks read the
  two-minute notice themselves (``service.spot``, turned on by the boot script); a listed instance
  that EC2 is taking back (``StateReason`` ``Server.SpotInstanceTermination``) is ``interrupted``.

``list_instances`` reports ``shutting-down`` instances too (the daemon counts them as stopping:
they still bill and still hold an agent for a few seconds); terminated ones are never listed.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from autoscaler.model import InstanceOption, Market
from autoscaler.providers.base import CapacityError, ComputeProvider, ProviderInstance
from autoscaler.providers.ec2_client import (
    NOT_FOUND_CODES,
    QUOTA_CODES,
    THROTTLING_CODES,
    ZONAL_CAPACITY_CODES,
    Ec2Client,
    Ec2Error,
    Ec2Throttled,
    Ec2Unavailable,
    aws_error_code,
    aws_error_message,
)
from autoscaler.providers.ec2_spec import Ec2PoolSpec, render_user_data
from service.errors import ConfigError
from service.settings import Settings

if TYPE_CHECKING:
    from autoscaler.config import AutoscalerConfig

log = logging.getLogger(__name__)

TAG_POOL = "scantide:pool"
TAG_MANAGED = "scantide:managed"
TAG_PRICE = "scantide:price"
TAG_SUBNET = "scantide:subnet"
LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
SPOT_INTERRUPTION_REASON = "Server.SpotInstanceTermination"  # StateReason.Code of an interrupted spot instance
_INSTANCE_ID = re.compile(r"\bi-[0-9a-f]{8,17}\b")

T = TypeVar("T")


# -- provider ----------------------------------------------------------------------------------
def _is_capacity(exc: ClientError) -> bool:
    code = aws_error_code(exc)
    if code in ZONAL_CAPACITY_CODES or code in QUOTA_CODES:
        return True
    # EC2 answers an instance type the AZ does not offer with this code too; other combinations
    # are configuration mistakes and must surface as errors.
    return code == "InvalidParameterCombination" and "instance type" in aws_error_message(exc).lower()


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


class Ec2Provider(ComputeProvider):
    """``ComputeProvider`` over EC2.

    specs: launch spec per pool name. client: the seam to EC2 (tests wrap it to inject faults).
    throttle_attempts: calls made in all while EC2 throttles. backoff_base_s, backoff_cap_s:
    seconds; the n-th wait is uniform in [0, min(cap, base * 2**n)]. sleep, rand: injectable.
    """

    def __init__(self, specs: Mapping[str, Ec2PoolSpec], client: Ec2Client, *, throttle_attempts: int = 5,
                 backoff_base_s: float = 1.0, backoff_cap_s: float = 20.0,
                 sleep: Callable[[float], None] = time.sleep, rand: Callable[[], float] = random.random) -> None:
        if throttle_attempts < 1:
            raise ConfigError("throttle_attempts must be at least 1")
        region = getattr(client, "region", None)
        for name, spec in specs.items():
            if region and spec.region != region:
                raise ConfigError(f"pool {name!r} is in {spec.region} but the EC2 client talks to {region}")
        self.specs = dict(specs)
        self.client = client
        self.throttle_attempts = throttle_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._sleep = sleep
        self._rand = rand
        self._user_data = {name: render_user_data(spec, name) for name, spec in self.specs.items()}

    # -- calls -----------------------------------------------------------------------------
    def _call(self, op: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One EC2 call, retried while throttled. ``ClientError``s other than throttling are the
        caller's to classify; connection failures become ``Ec2Unavailable``."""
        for attempt in range(self.throttle_attempts):
            try:
                return fn(*args, **kwargs)
            except ClientError as exc:
                code = aws_error_code(exc)
                if code not in THROTTLING_CODES:
                    raise
                if attempt + 1 == self.throttle_attempts:
                    raise Ec2Throttled(f"EC2 {op} was still throttled ({code}) after {self.throttle_attempts} "
                                       "attempts: the account's EC2 API rate limit is exhausted; retry later") from exc
                delay = self._rand() * min(self.backoff_cap_s, self.backoff_base_s * 2 ** attempt)
                log.warning("ec2_throttled op=%s code=%s attempt=%d wait_s=%.2f", op, code, attempt + 1, delay)
                self._sleep(delay)
            except BotoCoreError as exc:
                raise Ec2Unavailable(f"EC2 {op}: cannot reach the EC2 endpoint: {exc}") from exc
        raise AssertionError("unreachable")

    @staticmethod
    def _error(op: str, exc: ClientError) -> Ec2Error:
        return Ec2Error(f"EC2 {op} failed: {aws_error_code(exc) or 'unknown'}: {aws_error_message(exc)}")

    def _apply(self, op: str, fn: Callable[[list[str]], Any], ids: Sequence[str],
               tolerated: Collection[str]) -> tuple[list[str], dict[str, str]]:
        """Call ``fn`` on ``ids`` as one batch. EC2 fails a whole batch for one bad id: ids that it
        rejects with a ``tolerated`` code are set aside and the rest sent again (one by one when
        the error does not name them). Returns (accepted ids, rejected id → code)."""
        remaining = list(dict.fromkeys(ids))
        rejected: dict[str, str] = {}
        while remaining:
            try:
                self._call(op, fn, remaining)
                return remaining, rejected
            except ClientError as exc:
                code = aws_error_code(exc)
                if code not in tolerated:
                    raise self._error(op, exc) from exc
                named = set(_INSTANCE_ID.findall(aws_error_message(exc))) & set(remaining)
                if not named and len(remaining) == 1:
                    named = set(remaining)
                if not named:
                    accepted: list[str] = []
                    for one in remaining:
                        ok, rej = self._apply(op, fn, [one], tolerated)
                        accepted += ok
                        rejected.update(rej)
                    return accepted, rejected
                rejected.update(dict.fromkeys(sorted(named), code))
                remaining = [i for i in remaining if i not in named]
        return [], rejected

    def _spec(self, pool: str) -> Ec2PoolSpec:
        try:
            return self.specs[pool]
        except KeyError:
            raise ConfigError(f"no EC2 launch spec for pool {pool!r}") from None

    # -- ComputeProvider -------------------------------------------------------------------
    def launch(self, pool: str, option: InstanceOption, count: int) -> list[str]:
        if count <= 0:
            return []
        spec = self._spec(pool)
        subnets = (option.subnet,) if option.subnet else tuple(spec.subnets)
        ids: list[str] = []
        refusals: list[str] = []
        for subnet in subnets:
            while len(ids) < count:
                params = self._run_params(pool, spec, option, subnet, count - len(ids))
                try:
                    instances = self._call("RunInstances", self.client.run_instances, **params)
                except ClientError as exc:
                    if not _is_capacity(exc):
                        return self._partial_or_raise(pool, ids, count, self._error("RunInstances", exc))
                    refusals.append(f"{subnet}: {aws_error_code(exc)}")
                    log.info("ec2_no_capacity pool=%s type=%s market=%s subnet=%s code=%s", pool,
                             option.instance_type, option.market.value, subnet, aws_error_code(exc))
                    if aws_error_code(exc) in QUOTA_CODES:
                        return self._capacity_result(pool, option, ids, count, refusals)
                    break
                except Ec2Error as exc:
                    return self._partial_or_raise(pool, ids, count, exc)
                got = [i["InstanceId"] for i in instances if isinstance(i, dict) and i.get("InstanceId")]
                if not got:
                    refusals.append(f"{subnet}: launched none")
                    break
                ids += got
            if len(ids) >= count:
                break
        return self._capacity_result(pool, option, ids, count, refusals)

    @staticmethod
    def _partial_or_raise(pool: str, ids: list[str], count: int, exc: Ec2Error) -> list[str]:
        if not ids:
            raise exc
        # The launched instances exist and are tagged: report them and let the next tick retry.
        log.error("ec2_launch_partial pool=%s launched=%d wanted=%d error=%s", pool, len(ids), count, exc)
        return ids

    @staticmethod
    def _capacity_result(pool: str, option: InstanceOption, ids: list[str], count: int,
                         refusals: list[str]) -> list[str]:
        if not ids:
            raise CapacityError(f"pool {pool}: no EC2 capacity for {option.instance_type} "
                                f"({option.market.value}): {'; '.join(refusals) or 'no subnet'}")
        if len(ids) < count:
            log.warning("ec2_launch_partial pool=%s launched=%d wanted=%d refusals=%s", pool, len(ids), count,
                        refusals)
        return ids

    def _tags(self, pool: str, spec: Ec2PoolSpec, option: InstanceOption) -> list[dict[str, str]]:
        tags = {**spec.extra_tags, TAG_POOL: pool, TAG_MANAGED: "true", "Name": f"scantide-{pool}",
                TAG_PRICE: repr(float(option.price_per_hour))}
        if option.subnet:
            tags[TAG_SUBNET] = option.subnet
        return [{"Key": k, "Value": v} for k, v in tags.items()]

    def _run_params(self, pool: str, spec: Ec2PoolSpec, option: InstanceOption, subnet: str,
                    count: int) -> dict[str, Any]:
        tags = self._tags(pool, spec, option)
        params: dict[str, Any] = {
            "ImageId": spec.ami,
            "InstanceType": option.instance_type,
            "MinCount": 1,
            "MaxCount": count,
            "SubnetId": subnet,
            "SecurityGroupIds": list(spec.security_group_ids),
            "IamInstanceProfile": ({"Arn": spec.instance_profile_arn} if spec.instance_profile_arn
                                   else {"Name": spec.instance_profile_name}),
            "UserData": self._user_data[pool],
            "ClientToken": f"scantide-{uuid.uuid4().hex}",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2},
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "volume", "Tags": tags}],
        }
        if spec.key_name:
            params["KeyName"] = spec.key_name
        if spec.volume_size_gb is not None:
            params["BlockDeviceMappings"] = [{"DeviceName": spec.root_device_name, "Ebs": {
                "VolumeSize": spec.volume_size_gb, "VolumeType": "gp3", "DeleteOnTermination": True,
                "Encrypted": True}}]
        if option.market is Market.spot:
            # No MaxPrice: pay the spot price, capped at the on-demand price.
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        return params

    def list_instances(self, pool: str) -> list[ProviderInstance]:
        filters = [{"Name": f"tag:{TAG_POOL}", "Values": [pool]},
                   {"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]},
                   {"Name": "instance-state-name", "Values": list(LIVE_STATES)}]
        try:
            raw = self._call("DescribeInstances", self.client.describe_instances, filters)
        except ClientError as exc:
            raise self._error("DescribeInstances", exc) from exc
        found: dict[str, ProviderInstance] = {}
        for item in raw:
            inst = self._to_provider_instance(pool, item)
            if inst is not None:
                found[inst.id] = inst
        return sorted(found.values(), key=lambda i: (i.launched_at, i.id))

    @staticmethod
    def _to_provider_instance(pool: str, item: Any) -> ProviderInstance | None:
        try:
            tags = {t["Key"]: t["Value"] for t in item.get("Tags") or []}
            instance_id, state = item["InstanceId"], item["State"]["Name"]
            # The filters ran server-side; check again so a stray record never joins the pool.
            if tags.get(TAG_POOL) != pool or tags.get(TAG_MANAGED) != "true" or state not in LIVE_STATES:
                return None
            instance_type, launched_at = str(item["InstanceType"]), _epoch(item["LaunchTime"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.error("ec2_bad_instance_record pool=%s error=%r record=%.300r", pool, exc, item)
            return None
        try:
            price = float(tags[TAG_PRICE])
            if not math.isfinite(price) or price < 0:
                raise ValueError(price)
        except (KeyError, ValueError):
            log.warning("ec2_price_tag_missing pool=%s instance=%s value=%r", pool, instance_id, tags.get(TAG_PRICE))
            price = 0.0
        market = Market.spot if item.get("InstanceLifecycle") == "spot" else Market.on_demand
        option = InstanceOption(instance_type=instance_type, market=market, price_per_hour=price,
                                subnet=tags.get(TAG_SUBNET))
        why = item.get("StateReason")
        interrupted = isinstance(why, dict) and why.get("Code") == SPOT_INTERRUPTION_REASON
        return ProviderInstance(id=instance_id, pool=pool, option=option, provider_state=state,
                                launched_at=launched_at, interrupted=interrupted)

    def terminate(self, instance_ids: list[str]) -> None:
        if not instance_ids:
            return
        done, gone = self._apply("TerminateInstances", self.client.terminate_instances, instance_ids,
                                 NOT_FOUND_CODES)
        log.info("ec2_terminate ids=%s already_gone=%s", done, sorted(gone))

    def stop(self, instance_ids: list[str]) -> None:
        if not instance_ids:
            return
        done, rejected = self._apply("StopInstances", self.client.stop_instances, instance_ids,
                                     NOT_FOUND_CODES | {"IncorrectInstanceState", "UnsupportedOperation"})
        # One-time spot instances cannot be stopped: they leave instead of joining the warm pool.
        unstoppable = [i for i, code in rejected.items() if code == "UnsupportedOperation"]
        log.info("ec2_stop ids=%s skipped=%s", done, {i: c for i, c in rejected.items() if i not in unstoppable})
        if unstoppable:
            log.info("ec2_stop_unsupported_terminating ids=%s", unstoppable)
            self.terminate(unstoppable)

    def start(self, instance_ids: list[str]) -> list[str]:
        if not instance_ids:
            return []
        capacity = ZONAL_CAPACITY_CODES | QUOTA_CODES
        started, rejected = self._apply("StartInstances", self.client.start_instances, instance_ids,
                                        NOT_FOUND_CODES | {"IncorrectInstanceState"} | capacity)
        if rejected:
            log.info("ec2_start_rejected ids=%s", rejected)
        if not started and any(code in capacity for code in rejected.values()):
            raise CapacityError(f"EC2 has no capacity to start {sorted(rejected)}: "
                                f"{sorted(set(rejected.values()))}")
        return started


def from_config(config: AutoscalerConfig, settings: Settings) -> Ec2Provider:
    """The provider for an autoscaler config whose pools each have an ``[pools.ec2]`` table."""
    specs, endpoints = {}, set()
    for pool in config.pools:
        raw = dict(config.provider_specs.get(pool.name) or {})
        endpoints.add(raw.pop("endpoint_url", None))
        try:
            specs[pool.name] = Ec2PoolSpec(queue=pool.queue, slots=pool.slots, **raw)
        except TypeError as exc:
            raise ConfigError(f"pool {pool.name!r}: bad [pools.ec2] table: {exc}") from exc
    regions = {s.region for s in specs.values()}
    if len(regions) != 1 or len(endpoints) != 1:
        raise ConfigError(f"one autoscaler serves one region and endpoint; pools name {sorted(regions)}")
    return Ec2Provider(specs, Ec2Client.create(regions.pop(), endpoint_url=endpoints.pop()))
