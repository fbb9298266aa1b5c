"""The EC2 provider against the moto server over HTTP, with faults injected through the client seam."""

from __future__ import annotations

import base64
import math
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from autoscaler.daemon import Autoscaler
from autoscaler.model import Action, InstanceOption, InstanceState, Launch, Market, PoolConfig, Snapshot
from autoscaler.policy import decide
from autoscaler.providers.base import CapacityError
from autoscaler.providers.ec2 import TAG_MANAGED, TAG_POOL, Ec2Provider
from autoscaler.providers.ec2_client import Ec2Client, Ec2Error, Ec2Throttled
from autoscaler.providers.ec2_spec import USER_DATA_LIMIT_BYTES, Ec2PoolSpec, render_user_data
from service.backends.embedded import EmbeddedBackend
from service.domain import Template
from service.errors import ConfigError
from tests.autoscaler.moto_server import REGION, Ec2World, MotoServer

POOL = "gpu"
QUEUE = "gpu-scans"
SSM_PREFIX = "/scantide/test"
SPOT = InstanceOption("g5.xlarge", Market.spot, 0.45)
ON_DEMAND = InstanceOption("g5.xlarge", Market.on_demand, 1.006)
CLEARML_PARAMS = ("CLEARML_API_HOST", "CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY")
# For tests that never call AWS: ids in the right shape.
PAPER_WORLD = Ec2World(ami="ami-0abcdef1234567890", vpc="vpc-1", subnets=("subnet-a", "subnet-b"),
                       security_group="sg-1", instance_profile_arn="arn:aws:iam::123456789012:instance-profile/w")


# -- the seam, with faults ----------------------------------------------------------------------
@dataclass
class Fault:
    method: str
    code: str
    message: str
    times: int | None  # None: every matching call
    when: Callable[[Any], bool]


class FaultyClient(Ec2Client):
    """Wraps the real client (talking to moto), records every call and raises scripted
    ``ClientError``s for matching calls before they reach moto."""

    def __init__(self, inner: Ec2Client) -> None:
        self.inner = inner
        self.calls: list[tuple[str, Any]] = []
        self.faults: list[Fault] = []

    @property
    def region(self) -> str | None:
        return self.inner.region

    def inject(self, method: str, code: str, *, times: int | None = None, message: str = "injected",
               when: Callable[[Any], bool] = lambda _: True) -> None:
        self.faults.append(Fault(method, code, message, times, when))

    def _enter(self, method: str, arg: Any) -> None:
        self.calls.append((method, arg))
        for f in self.faults:
            if f.method == method and f.times != 0 and f.when(arg):
                if f.times is not None:
                    f.times -= 1
                raise ClientError({"Error": {"Code": f.code, "Message": f.message}}, method)

    def run_instances(self, **params: Any) -> list[dict[str, Any]]:
        self._enter("run_instances", params)
        return self.inner.run_instances(**params)

    def describe_instances(self, filters: Any) -> list[dict[str, Any]]:
        self._enter("describe_instances", filters)
        return self.inner.describe_instances(filters)

    def terminate_instances(self, instance_ids: Any) -> None:
        self._enter("terminate_instances", list(instance_ids))
        self.inner.terminate_instances(instance_ids)

    def stop_instances(self, instance_ids: Any) -> None:
        self._enter("stop_instances", list(instance_ids))
        self.inner.stop_instances(instance_ids)

    def start_instances(self, instance_ids: Any) -> list[dict[str, Any]]:
        self._enter("start_instances", list(instance_ids))
        return self.inner.start_instances(instance_ids)

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.calls if m == method)


# -- fixtures -----------------------------------------------------------------------------------
def make_spec(world: Ec2World, **overrides: Any) -> Ec2PoolSpec:
    fields: dict[str, Any] = dict(ami=world.ami, subnets=list(world.subnets), security_group_ids=[world.security_group],
                                  queue=QUEUE, region=REGION, ssm_prefix=SSM_PREFIX,
                                  instance_profile_arn=world.instance_profile_arn,
                                  extra_tags={"team": "scans"}, volume_size_gb=120)
    return Ec2PoolSpec(**{**fields, **overrides})


@pytest.fixture
def ec2(moto: MotoServer, world: Ec2World) -> Any:
    return moto.client("ec2")


@pytest.fixture
def client(moto: MotoServer, world: Ec2World) -> FaultyClient:
    return FaultyClient(Ec2Client.create(REGION, endpoint_url=moto.url))


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def provider(world: Ec2World, client: FaultyClient, sleeps: Sleeps) -> Ec2Provider:
    specs = {POOL: make_spec(world), "other": make_spec(world, queue="other-scans")}
    return Ec2Provider(specs, client, throttle_attempts=4, backoff_base_s=0.5, backoff_cap_s=4.0, sleep=sleeps)


def describe(ec2: Any, ids: list[str]) -> list[dict[str, Any]]:
    return [i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]]


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def subnet_of(ec2: Any, instance_id: str) -> str:
    return describe(ec2, [instance_id])[0]["SubnetId"]


# -- launch -------------------------------------------------------------------------------------
def test_launch_tags_instance_and_volume_imdsv2_user_data_and_spot(provider: Ec2Provider, client: FaultyClient,
                                                                   ec2: Any, world: Ec2World) -> None:
    spot_ids = provider.launch(POOL, SPOT, 2)
    (od_id,) = provider.launch(POOL, ON_DEMAND, 1)

    assert len(spot_ids) == 2
    instances = {i["InstanceId"]: i for i in describe(ec2, [*spot_ids, od_id])}
    for iid, inst in instances.items():
        tags = tags_of(inst)
        assert tags[TAG_POOL] == POOL and tags[TAG_MANAGED] == "true" and tags["Name"] == f"scantide-{POOL}"
        assert tags["team"] == "scans"
        meta = inst["MetadataOptions"]
        assert (meta["HttpTokens"], meta["HttpEndpoint"], meta["HttpPutResponseHopLimit"]) == ("required", "enabled", 2)
        volumes = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [iid]}])["Volumes"]
        assert volumes and all(tags_of(v)[TAG_POOL] == POOL and tags_of(v)[TAG_MANAGED] == "true" for v in volumes)
        assert any(v["Size"] == 120 for v in volumes)
        user_data = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"]["Value"]
        assert base64.b64decode(user_data).decode() == render_user_data(make_spec(world), POOL)
    assert all(instances[i].get("InstanceLifecycle") == "spot" for i in spot_ids)
    assert instances[od_id].get("InstanceLifecycle") is None

    sent = [params for method, params in client.calls if method == "run_instances"]
    assert sent[0]["InstanceMarketOptions"]["SpotOptions"] == {"SpotInstanceType": "one-time",
                                                              "InstanceInterruptionBehavior": "terminate"}
    assert "InstanceMarketOptions" not in sent[-1]
    assert all(p["MinCount"] == 1 and p["InstanceInitiatedShutdownBehavior"] == "terminate" for p in sent)
    tokens = [p["ClientToken"] for p in sent]
    assert len(set(tokens)) == len(tokens) and all(len(t) <= 64 for t in tokens)


def test_launch_fills_the_count_across_calls_and_subnets(provider: Ec2Provider, client: FaultyClient,
                                                         ec2: Any, world: Ec2World) -> None:
    """MinCount=1: what a subnet gives is kept; the rest is asked of the next subnet."""
    first, second = world.subnets
    in_first = iter([False, True, True])  # the first subnet gives one instance, then runs dry
    client.inject("run_instances", "InsufficientInstanceCapacity",
                  when=lambda p: p["SubnetId"] == first and next(in_first))

    ids = provider.launch(POOL, SPOT, 3)

    assert len(ids) == 3
    assert sorted(subnet_of(ec2, i) for i in ids) == sorted([first, second, second])


def test_partial_launch_returns_what_was_launched(provider: Ec2Provider, client: FaultyClient) -> None:
    calls = iter(range(100))
    client.inject("run_instances", "InsufficientInstanceCapacity", when=lambda p: next(calls) > 0)

    ids = provider.launch(POOL, SPOT, 3)

    assert len(ids) == 1
    assert [i.id for i in provider.list_instances(POOL)] == ids


def test_capacity_in_first_subnet_falls_back_to_second(provider: Ec2Provider, client: FaultyClient, ec2: Any,
                                                       world: Ec2World) -> None:
    client.inject("run_instances", "InsufficientInstanceCapacity", when=lambda p: p["SubnetId"] == world.subnets[0])

    (iid,) = provider.launch(POOL, SPOT, 1)

    assert subnet_of(ec2, iid) == world.subnets[1]
    assert [p["SubnetId"] for m, p in client.calls if m == "run_instances"] == list(world.subnets)


@pytest.mark.parametrize(("code", "message"), [
    ("InsufficientInstanceCapacity", "We currently do not have sufficient g5.xlarge capacity"),
    ("SpotMaxPriceTooLow", "Your Spot request price is lower than the minimum required"),
    ("Unsupported", "Your requested instance type (g5.xlarge) is not supported in your requested AZ"),
    ("InvalidParameterCombination", "The specified instance type is not supported in this Availability Zone"),
])
def test_no_capacity_in_any_subnet_raises_capacity_error(provider: Ec2Provider, client: FaultyClient, code: str,
                                                         message: str) -> None:
    client.inject("run_instances", code, message=message)

    with pytest.raises(CapacityError, match=code):
        provider.launch(POOL, SPOT, 2)

    assert client.count("run_instances") == 2  # each subnet once
    assert provider.list_instances(POOL) == []


def test_quota_errors_skip_the_other_subnets(provider: Ec2Provider, client: FaultyClient) -> None:
    client.inject("run_instances", "MaxSpotInstanceCountExceeded")

    with pytest.raises(CapacityError):
        provider.launch(POOL, SPOT, 1)

    assert client.count("run_instances") == 1


def test_pinned_subnet_is_the_only_one_tried(provider: Ec2Provider, client: FaultyClient, world: Ec2World) -> None:
    pinned = InstanceOption("g5.xlarge", Market.on_demand, 1.0, subnet=world.subnets[1])
    client.inject("run_instances", "InsufficientInstanceCapacity")

    with pytest.raises(CapacityError):
        provider.launch(POOL, pinned, 1)

    assert [p["SubnetId"] for m, p in client.calls if m == "run_instances"] == [world.subnets[1]]


def test_throttling_is_retried_with_jittered_backoff(provider: Ec2Provider, client: FaultyClient,
                                                     sleeps: Sleeps) -> None:
    client.inject("run_instances", "RequestLimitExceeded", times=2)

    ids = provider.launch(POOL, SPOT, 1)

    assert len(ids) == 1 and len(provider.list_instances(POOL)) == 1
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.5 and 0 <= sleeps[1] <= 1.0
    tokens = {p["ClientToken"] for m, p in client.calls if m == "run_instances"}
    assert len(tokens) == 1  # retries of one request reuse its token: EC2 never launches it twice


def test_throttling_that_persists_raises_a_clear_error(provider: Ec2Provider, client: FaultyClient,
                                                       sleeps: Sleeps) -> None:
    client.inject("run_instances", "RequestLimitExceeded")

    with pytest.raises(Ec2Throttled, match="still throttled") as err:
        provider.launch(POOL, SPOT, 1)

    assert err.value.code == "ec2_throttled"
    assert client.count("run_instances") == 4 and len(sleeps) == 3 and max(sleeps) <= 4.0


def test_other_errors_surface_as_project_errors(provider: Ec2Provider, client: FaultyClient) -> None:
    client.inject("run_instances", "InvalidParameterCombination", message="Network interfaces and an instance-level "
                  "security groups may not be specified on the same request")
    client.inject("describe_instances", "UnauthorizedOperation", message="You are not authorized")

    with pytest.raises(Ec2Error, match="RunInstances failed: InvalidParameterCombination"):
        provider.launch(POOL, SPOT, 1)
    with pytest.raises(Ec2Error, match="UnauthorizedOperation") as err:
        provider.list_instances(POOL)
    assert err.value.code == "ec2_error"
    assert client.count("run_instances") == 1


# -- list ---------------------------------------------------------------------------------------
def test_list_finds_only_this_pools_managed_instances(provider: Ec2Provider, client: FaultyClient, ec2: Any,
                                                      world: Ec2World) -> None:
    ours = provider.launch(POOL, SPOT, 2)
    pinned = InstanceOption("g6.xlarge", Market.on_demand, 0.805, subnet=world.subnets[1])
    (ours_pinned,) = provider.launch(POOL, pinned, 1)
    provider.launch("other", ON_DEMAND, 1)
    ec2.run_instances(ImageId=world.ami, MinCount=1, MaxCount=1, SubnetId=world.subnets[0])  # untagged
    ec2.run_instances(ImageId=world.ami, MinCount=1, MaxCount=1, SubnetId=world.subnets[0],  # not managed
                      TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": TAG_POOL, "Value": POOL}]}])
    (gone,) = provider.launch(POOL, ON_DEMAND, 1)
    provider.terminate([gone])

    listed = {i.id: i for i in provider.list_instances(POOL)}

    assert set(listed) == {*ours, ours_pinned}
    # The option rebuilt from EC2's fields and our tags equals the one launched.
    assert all(listed[i].option == SPOT for i in ours)
    assert listed[ours_pinned].option == pinned
    assert all(i.pool == POOL and i.provider_state in ("pending", "running") for i in listed.values())
    assert all(abs(i.launched_at - time.time()) < 300 for i in listed.values())
    (filters,) = [f for m, f in client.calls if m == "describe_instances"]  # EC2 filters; we check again
    assert {"Name": f"tag:{TAG_POOL}", "Values": [POOL]} in filters
    assert {"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]} in filters


def test_list_skips_bad_records(world: Ec2World, client: FaultyClient) -> None:
    good_tags = [{"Key": TAG_POOL, "Value": POOL}, {"Key": TAG_MANAGED, "Value": "true"}]
    records = [
        {"InstanceId": "i-00000000000000001", "InstanceType": "g5.xlarge", "State": {"Name": "running"},
         "LaunchTime": "2026-01-01T00:00:00Z", "Tags": [*good_tags, {"Key": "scantide:price", "Value": "nan"}]},
        {"InstanceId": "i-00000000000000002", "State": {"Name": "running"}, "Tags": good_tags},  # no type
        {"InstanceId": "i-00000000000000003", "InstanceType": "g5.xlarge", "State": {"Name": "terminated"},
         "LaunchTime": "2026-01-01T00:00:00Z", "Tags": good_tags},
        {"InstanceId": "i-00000000000000004", "InstanceType": "g5.xlarge", "State": {"Name": "running"},
         "LaunchTime": "2026-01-01T00:00:00Z", "Tags": [{"Key": TAG_POOL, "Value": "other"}]},
        "not a record",
    ]

    class BadData(FaultyClient):
        def describe_instances(self, filters: Any) -> list[dict[str, Any]]:
            return records  # type: ignore[return-value]

    provider = Ec2Provider({POOL: make_spec(world)}, BadData(client.inner))
    (only,) = provider.list_instances(POOL)

    assert only.id == "i-00000000000000001" and only.option.price_per_hour == 0.0
    assert math.isclose(only.launched_at, 1767225600.0)


# -- terminate, stop, start ---------------------------------------------------------------------
def test_terminate_is_idempotent(provider: Ec2Provider, client: FaultyClient) -> None:
    ids = provider.launch(POOL, SPOT, 2)
    unknown = "i-0123456789abcdef0"

    provider.terminate([*ids, unknown])
    provider.terminate([*ids, unknown])
    provider.terminate([unknown])
    provider.terminate([])

    assert provider.list_instances(POOL) == []


def test_terminate_splits_a_batch_when_the_error_names_no_id(provider: Ec2Provider, client: FaultyClient) -> None:
    ids = provider.launch(POOL, ON_DEMAND, 2)
    client.inject("terminate_instances", "InvalidInstanceID.Malformed", message='Invalid id: "bogus"',
                  when=lambda batch: "bogus" in batch)

    provider.terminate([ids[0], "bogus", ids[1]])

    assert provider.list_instances(POOL) == []


def test_warm_pool_stop_then_start(provider: Ec2Provider) -> None:
    ids = provider.launch(POOL, ON_DEMAND, 2)

    provider.stop(ids)
    provider.stop(ids)  # already stopped: nothing to do
    assert {i.provider_state for i in provider.list_instances(POOL)} == {"stopped"}

    assert sorted(provider.start(ids)) == sorted(ids)
    assert {i.provider_state for i in provider.list_instances(POOL)} <= {"pending", "running"}
    provider.stop(["i-0123456789abcdef0"])  # unknown ids are ignored
    assert provider.start(["i-0123456789abcdef0"]) == []


def test_start_without_capacity_raises_capacity_error(provider: Ec2Provider, client: FaultyClient) -> None:
    a, b = provider.launch(POOL, ON_DEMAND, 2)
    provider.stop([a, b])
    client.inject("start_instances", "InsufficientInstanceCapacity", message="Insufficient capacity.",
                  when=lambda batch: b in batch)

    assert provider.start([a, b]) == [a]  # the batch fails, one by one only b lacks capacity

    with pytest.raises(CapacityError):
        provider.start([b])
    assert {i.id: i.provider_state for i in provider.list_instances(POOL)}[b] == "stopped"


def test_stopping_a_one_time_spot_instance_terminates_it(provider: Ec2Provider, client: FaultyClient) -> None:
    (spot,) = provider.launch(POOL, SPOT, 1)
    (od,) = provider.launch(POOL, ON_DEMAND, 1)
    client.inject("stop_instances", "UnsupportedOperation", when=lambda batch: spot in batch,
                  message=f"The instance '{spot}' is a spot instance and cannot be stopped.")

    provider.stop([spot, od])

    assert {i.id: i.provider_state for i in provider.list_instances(POOL)} == {od: "stopped"}


# -- user data ----------------------------------------------------------------------------------
def test_user_data_fetches_credentials_at_boot_and_shuts_down_after_the_agent(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = "s3cr3t-from-the-environment"
    for name in CLEARML_PARAMS:
        monkeypatch.setenv(name, secret)

    text = render_user_data(make_spec(PAPER_WORLD), POOL)

    assert len(text.encode()) < USER_DATA_LIMIT_BYTES
    assert text.startswith("#!/bin/bash\n")
    assert f"QUEUE={QUEUE}\n" in text and f"SSM_PREFIX={SSM_PREFIX}\n" in text and f"REGION={REGION}\n" in text
    assert "IMDS=http://169.254.169.254\n" in text
    assert 'curl -fsS --retry 10 --retry-connrefused -X PUT "$IMDS/latest/api/token"' in text
    assert '-H "X-aws-ec2-metadata-token-ttl-seconds: 21600"' in text
    assert "aws ssm get-parameter" in text and "--with-decryption" in text
    assert secret not in text
    for name in CLEARML_PARAMS:  # every assignment reads SSM, none carries a value
        assignments = re.findall(rf"^{name}=(.*)$", text, flags=re.M)
        assert assignments == [f'"$(ssm_param "$SSM_PREFIX/{name}")" || exit 1']
    # the worker id is the instance id, or <instance id>:<k> for slot k of several (SLOTS from the spec)
    assert "\nSLOTS=1\n" in text
    assert 'worker_id() { if [ "$SLOTS" -gt 1 ]; then echo "$INSTANCE_ID:$1"; else echo "$INSTANCE_ID"; fi; }' in text
    assert 'CLEARML_WORKER_ID="$(worker_id "$K")" clearml-agent daemon "$@"' in text
    assert "command -v clearml-agent" in text and "pip install --quiet --upgrade clearml-agent" in text
    agent = text.index('start_agents "" --queue "$QUEUE" --foreground')
    assert text.index('power_off "clearml-agent exited', agent) > agent
    assert "shutdown -h now" in text[text.index("power_off() {"):agent]
    assert "systemctl enable --now --no-block scantide-agent.service" in text  # the agent comes back on start
    script = tmp_path / "user_data.sh"
    script.write_text(text)
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_user_data_names_the_ssm_parameters_but_holds_no_value(moto: MotoServer, world: Ec2World) -> None:
    ssm = moto.client("ssm")
    values = {name: f"value-of-{name.lower()}-7f3a" for name in CLEARML_PARAMS}
    for name, value in values.items():
        ssm.put_parameter(Name=f"{SSM_PREFIX}/{name}", Value=value, Type="SecureString")

    text = render_user_data(make_spec(world), POOL)

    stored = ssm.get_parameters_by_path(Path=SSM_PREFIX, WithDecryption=True)["Parameters"]
    assert len(stored) == 3
    expanded = text.replace("$SSM_PREFIX", SSM_PREFIX)  # the runner's own variable, as bash expands it
    for p in stored:
        assert f'"{p["Name"]}"' in expanded
        assert p["Value"] not in text


@pytest.mark.parametrize("bad", [
    {"queue": "gpu; rm -rf /"}, {"ssm_prefix": "scantide/no-leading-slash"}, {"ssm_prefix": "/a b"},
    {"subnets": []}, {"instance_profile_arn": None}, {"instance_profile_name": "also-a-name"},
    {"extra_tags": {"scantide:pool": "other"}}, {"region": "us-east-1; echo"},
])
def test_bad_specs_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        make_spec(PAPER_WORLD, **bad)


def test_a_spec_for_another_region_is_refused(world: Ec2World, client: FaultyClient) -> None:
    with pytest.raises(ConfigError, match="us-west-2"):
        Ec2Provider({POOL: make_spec(world, region="us-west-2")}, client)


# -- the daemon on EC2 --------------------------------------------------------------------------
def one_per_task(snapshot: Snapshot, now: float, config: dict[str, PoolConfig]) -> list[Action]:
    """A tiny policy: one live instance per queued or running task, up to max_instances."""
    actions: list[Action] = []
    for name, ps in snapshot.pools.items():
        pool = config[name]
        live = len(ps.instances) - len(ps.in_state(InstanceState.stopped, InstanceState.stopping))
        want = min(pool.max_instances, ps.pending + ps.running) - live - ps.launches_in_flight
        if want > 0:
            actions.append(Launch(name, "one instance per task", pool.options[0], want))
    return actions


def the_default_policy(snapshot: Snapshot, now: float, config: dict[str, PoolConfig]) -> list[Action]:
    return decide(snapshot, now, config)


@pytest.mark.parametrize("policy", [one_per_task, the_default_policy], ids=["one_per_task", "policy.decide"])
def test_scale_out_then_restart_sees_the_fleet_by_tags(world: Ec2World, moto: MotoServer, tmp_path: Path,
                                                       policy: Any) -> None:
    backend = EmbeddedBackend(tmp_path / "tasks.db")
    backend.register_template(Template(name="video_summary", queue=QUEUE))
    for n in range(3):
        backend.submit("video_summary", f"scan-{n}", {"scan_uri": f"file:///scans/{n}.mp4"}, f"file:///out/{n}")
    pool = PoolConfig(name=POOL, queue=QUEUE, options=(SPOT, ON_DEMAND), max_instances=5)
    ec2 = moto.client("ec2")
    now = time.time()

    def daemon() -> Autoscaler:
        client = Ec2Client.create(REGION, endpoint_url=moto.url)
        return Autoscaler([pool], Ec2Provider({POOL: make_spec(world)}, client), backend, policy, clock=lambda: now)

    first = daemon().tick()
    launched = [i for r in ec2.describe_instances(Filters=[{"Name": f"tag:{TAG_POOL}", "Values": [POOL]}])[
        "Reservations"] for i in r["Instances"]]

    assert any(isinstance(a, Launch) for a in first)
    assert 1 <= len(launched) <= 3
    assert {i.get("InstanceLifecycle") for i in launched} == {"spot"}

    second = daemon().tick()  # a fresh daemon, as after a restart: nothing in memory
    after = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]

    assert not any(isinstance(a, Launch) for a in second)
    assert sorted(i["InstanceId"] for i in after) == sorted(i["InstanceId"] for i in launched)
    backend.close()
