"""Fixtures the EC2 tests share: the AWS account on the moto server, fresh for each test."""

from __future__ import annotations

import pytest

from tests.autoscaler.moto_server import AWS_TEST_ENV, Ec2World, MotoServer, build_world


@pytest.fixture
def world(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Ec2World:
    """An emptied moto with the pool's AMI, subnets, security group and instance profile; this
    process's AWS environment points at it."""
    for key, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)  # a backstop: any stray client lands on moto too
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    moto.reset()
    return build_world(moto)
