"""A moto server on a free loopback port, and the AWS world the EC2 provider tests launch into.

Only 127.0.0.1: every client built here names the server's ``endpoint_url`` and dummy
credentials, so nothing can reach AWS even if the environment were wrong.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from dataclasses import dataclass
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
INSTANCE_PROFILE = "scantide-worker"  # the instance profile build_world creates
DUMMY_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
                     "aws_session_token": "testing"}
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """moto's server in a thread of this process, spoken to over HTTP like AWS."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    def start(self) -> MotoServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def reset(self) -> None:
        """Forget every resource (moto's own reset endpoint)."""
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def client(self, service: str, **kwargs: Any) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=self.url, **DUMMY_CREDENTIALS, **kwargs)


@dataclass(frozen=True)
class Ec2World:
    """What a pool needs in the account: an AMI, two subnets in two AZs, a security group and an
    instance profile."""

    ami: str
    vpc: str
    subnets: tuple[str, str]
    security_group: str
    instance_profile_arn: str

    def ec2_toml(self, moto: MotoServer, ssm_prefix: str) -> str:
        """The ``[pools.ec2]`` table of an autoscaler config that launches into this world on ``moto``."""
        return f"""\
[pools.ec2]
endpoint_url = "{moto.url}"
region = "{REGION}"
ami = "{self.ami}"
subnets = {json.dumps(list(self.subnets))}
security_group_ids = ["{self.security_group}"]
ssm_prefix = "{ssm_prefix}"
instance_profile_name = "{INSTANCE_PROFILE}"
"""


def build_world(moto: MotoServer) -> Ec2World:
    ec2 = moto.client("ec2")
    # One of moto's bundled public AMIs; a name filter keeps the lookup fast.
    images = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["*ubuntu*"]}])["Images"]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = tuple(
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{n}.0/24", AvailabilityZone=f"{REGION}{az}")["Subnet"]["SubnetId"]
        for n, az in ((1, "a"), (2, "b"))
    )
    sg = ec2.create_security_group(GroupName="scantide-workers", Description="workers", VpcId=vpc)["GroupId"]
    iam = moto.client("iam")
    iam.create_role(RoleName="scantide-worker", AssumeRolePolicyDocument="{}")
    profile = iam.create_instance_profile(InstanceProfileName=INSTANCE_PROFILE)["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=INSTANCE_PROFILE, RoleName="scantide-worker")
    return Ec2World(ami=images[0]["ImageId"], vpc=vpc, subnets=subnets, security_group=sg,  # type: ignore[arg-type]
                    instance_profile_arn=profile["Arn"])
