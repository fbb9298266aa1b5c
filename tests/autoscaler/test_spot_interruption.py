"""A spot interruption seen from the autoscaler: the real daemon, policy and EC2 provider against the
moto server, the test playing the agent as in ``test_scenarios_ec2``.

moto cannot interrupt an instance. The seam answers ``DescribeInstances`` as EC2 does while it
takes a spot instance back (``shutting-down``, ``StateReason`` ``Server.SpotInstanceTermination``)
and then the test terminates the instance on moto, as EC2 finishes. The agent's side, handing its
task back on the notice, is the backend call the worker makes (``tests/test_spot.py`` runs the
worker itself)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoscaler.model import Launch, Market
from service.domain import JobState, TaskError
from service.spot import INTERRUPTION_CODE
from tests.autoscaler.moto_server import Ec2World, MotoServer
from tests.autoscaler.test_scenarios_ec2 import ON_DEMAND, POOL, SPOT, Fleet, SeamClient, launched, make_pool

SPOT_TERMINATION = {"Code": "Server.SpotInstanceTermination",
                    "Message": "Server.SpotInstanceTermination: Spot instance termination"}


class Interrupting(SeamClient):
    """The seam, describing the instances in ``taken`` as EC2 does while it reclaims them."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(fleet.client.inner)
        self.taken: set[str] = set()

    def describe_instances(self, filters: Any) -> list[dict[str, Any]]:
        found = self.inner.describe_instances(filters)
        for item in found:
            if item["InstanceId"] in self.taken:
                item["State"] = {"Code": 32, "Name": "shutting-down"}
                item["StateReason"] = SPOT_TERMINATION
        return found


@pytest.fixture
def fleet(moto: MotoServer, world: Ec2World, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(moto, world, tmp_path)
    f.client = Interrupting(f)
    f.provider.client = f.client
    yield f
    f.backend.close()


def test_an_interrupted_instance_is_replaced_on_the_next_tick_and_leaves_no_orphan(fleet: Fleet) -> None:
    daemon = fleet.daemon(make_pool(SPOT, ON_DEMAND, max_instances=2, expected_service_s=900.0))
    (task_id,) = fleet.submit(1)
    assert launched(daemon.tick()) == 1
    (first,) = fleet.live()
    fleet.boot(first)
    task = fleet.take(first)
    assert task is not None and task.task_id == task_id
    assert launched(daemon.tick()) == 0, "busy with the one task"

    # the notice: the worker hands its task back; then EC2 starts shutting the instance down
    fleet.backend.hand_back(task_id, first, TaskError.make(INTERRUPTION_CODE, "EC2 reclaims this spot instance"))
    fleet.client.taken.add(first)  # type: ignore[attr-defined]
    (listed,) = fleet.provider.list_instances(POOL)
    assert listed.interrupted and listed.provider_state == "shutting-down"

    actions = daemon.tick()

    (launch,) = [a for a in actions if isinstance(a, Launch)]
    assert launch.count == 1 and launch.option.market is Market.spot, "capacity replaced at once, spot first"
    (noted,) = fleet.entries("interrupted")
    assert noted["instances"] == [first]
    replacement = [i for i in fleet.live() if i != first]
    assert len(replacement) == 1

    fleet.ec2.terminate_instances(InstanceIds=[first])  # EC2 finishes taking it
    fleet.backend.unregister_worker(first)  # its agent went with it
    daemon.tick()
    assert fleet.entries("interrupted") == [noted], "journaled once"

    assert fleet.live() == replacement, "the interrupted instance is gone; its replacement is the pool"
    states = {iid: i["State"]["Name"] for iid, i in fleet.ec2_instances().items()}
    assert states[first] == "terminated" and states[replacement[0]] == "running"
    assert len(states) == 2, "no orphan: two instances ever launched, one of them alive"
    fleet.boot(*replacement)
    again = fleet.take(replacement[0])
    assert again is not None and again.task_id == task_id and again.attempt == 2
    fleet.finish(replacement[0], again)
    done = fleet.backend.get_task(task_id)
    assert done.state is JobState.completed
    assert [(h["state"], h["error"]["code"]) for h in done.history] == [("stopped", INTERRUPTION_CODE)]
