"""Fixtures the EC2 tests share: the AWS account on the moto server, fresh for each test."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoscaler.runner import read_ticks
from tests.autoscaler.moto_server import AWS_TEST_ENV, Ec2World, MotoServer, build_world
from tests.conftest import wait_for


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


def ticks_of(path: Path, pid: int | None = None) -> int:
    """The ticks the autoscaler daemon has ended, as its ``ticks.json`` at ``path`` says: 0 before its
    first, or while the file is another process's than ``pid``."""
    seen = read_ticks(path)
    if seen is None or (pid is not None and seen.get("pid") != pid):
        return 0
    return int(seen["ticks"])


def wait_ticks(path: Path, more: int, *, pid: int | None = None, timeout_s: float = 60.0) -> int:
    """Wait until the daemon (``pid``, or whichever writes ``path``) has ended ``more`` ticks beyond
    those it has ended now; returns its count then. The way to let a daemon run a while before
    checking that nothing happened, however slow the machine."""
    target = ticks_of(path, pid) + more
    wait_for(lambda: ticks_of(path, pid) >= target, timeout_s, interval_s=0.05,
             what=f"{more} more autoscaler ticks in {path}")
    return ticks_of(path, pid)
