"""Autoscaler scenarios on EC2: the real daemon, policy and EC2 provider against the moto server
over HTTP, with workers in a real SQLite task store.

The test plays each instance's agent: once an instance runs on moto, it registers a worker under
the instance id in the ``EmbeddedBackend`` and claims, finishes and heartbeats on its behalf.
Time that matters moves on the daemon's injectable clock (``Clock.advance``), never by sleeping;
pools that are not about boot or loss get timeouts far beyond any advance.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from autoscaler.config import load_config, parse_config
from autoscaler.daemon import Autoscaler, Journal
from autoscaler.model import (
    Action,
    Drain,
    InstanceOption,
    Launch,
    Market,
    PoolConfig,
    PoolSnapshot,
    Snapshot,
    Start,
    Stop,
    Terminate,
    WarmPoolConfig,
    slot_worker_ids,
)
from autoscaler.policy import decide
from autoscaler.providers.ec2 import TAG_MANAGED, TAG_POOL, Ec2Provider, from_config
from autoscaler.providers.ec2_client import Ec2Client
from autoscaler.providers.ec2_spec import Ec2PoolSpec
from autoscaler.runner import TICKS_FILE
from service.backends.embedded import EmbeddedBackend
from service.domain import TaskInfo, Template, WorkerInfo
from service.settings import load_settings
from service.supervisor import cli_argv
from tests.autoscaler.conftest import wait_ticks
from tests.autoscaler.moto_server import (
    AWS_TEST_ENV,
    INSTANCE_PROFILE,
    REGION,
    Ec2World,
    MotoServer,
)
from tests.conftest import wait_for

POOL = "gpu"
QUEUE = "gpu-scans"
SSM_PREFIX = "/scantide/test"
SPOT = InstanceOption("g5.xlarge", Market.spot, 0.45)
ON_DEMAND = InstanceOption("g5.xlarge", Market.on_demand, 1.006)
OTHER_TYPE = InstanceOption("g6.xlarge", Market.spot, 0.52)
LONG_S = 3600.0  # boot and loss timeouts for scenarios about neither: no clock advance reaches them
LEASE_S = 3600.0  # the agent's task lease, seconds
TICK_S = 0.5  # the subprocess daemon's tick, seconds


# -- the seam, the clock, the executor ----------------------------------------------------------
class SeamClient(Ec2Client):
    """The real client (to moto) with two hooks at the seam: ``refuse`` answers matching
    ``run_instances`` calls with a capacity error; ``hold`` keeps a launch in flight until set."""

    def __init__(self, inner: Ec2Client) -> None:
        self.inner = inner
        self.refuse: Callable[[dict[str, Any]], bool] | None = None
        self.hold: threading.Event | None = None
        self.launching = threading.Event()  # set when a run_instances call has begun
        self.run_calls: list[dict[str, Any]] = []

    @property
    def region(self) -> str | None:
        return self.inner.region

    def run_instances(self, **params: Any) -> list[dict[str, Any]]:
        self.run_calls.append(params)
        self.launching.set()
        if self.refuse is not None and self.refuse(params):
            raise ClientError({"Error": {"Code": "InsufficientInstanceCapacity",
                                         "Message": f"We currently do not have sufficient {params['InstanceType']} "
                                                    f"capacity in the Availability Zone you requested."}},
                              "RunInstances")
        if self.hold is not None:
            assert self.hold.wait(30), "the test never released the held launch"
        return self.inner.run_instances(**params)

    def describe_instances(self, filters: Any) -> list[dict[str, Any]]:
        return self.inner.describe_instances(filters)

    def terminate_instances(self, instance_ids: Any) -> None:
        self.inner.terminate_instances(instance_ids)

    def stop_instances(self, instance_ids: Any) -> None:
        self.inner.stop_instances(instance_ids)

    def start_instances(self, instance_ids: Any) -> list[dict[str, Any]]:
        return self.inner.start_instances(instance_ids)


class Clock:
    """Wall time plus an offset the test moves forward (the backend's and moto's times are wall time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class TrackingExecutor(ThreadPoolExecutor):
    """The daemon's launch threads, with a way to wait for every launch submitted so far."""

    def __init__(self) -> None:
        super().__init__(max_workers=4, thread_name_prefix="test-launch")
        self.futures: list[Future[Any]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        self.futures.append(future)
        return future

    def settle(self, timeout_s: float = 30.0) -> None:
        for future in self.futures:
            future.result(timeout=timeout_s)


# -- fixtures -----------------------------------------------------------------------------------
def make_pool(*options: InstanceOption, **overrides: Any) -> PoolConfig:
    fields: dict[str, Any] = dict(name=POOL, queue=QUEUE, options=options or (SPOT, ON_DEMAND), max_instances=4,
                                  boot_timeout_s=LONG_S, lost_after_s=LONG_S, idle_timeout_s=300.0,
                                  p95_wait_target_s=300.0)
    return PoolConfig(**{**fields, **overrides})


class Fleet:
    """One scenario's world: moto, the task store, the provider, the journal, the clock, and the
    agents the test plays."""

    def __init__(self, moto: MotoServer, world: Ec2World, tmp_path: Path) -> None:
        self.world = world
        self.ec2 = moto.client("ec2")
        self.backend = EmbeddedBackend(tmp_path / "tasks.db")
        self.backend.register_template(Template(name="video_summary", queue=QUEUE))
        self.client = SeamClient(Ec2Client.create(REGION, endpoint_url=moto.url))
        spec = Ec2PoolSpec(ami=world.ami, subnets=world.subnets, security_group_ids=[world.security_group],
                           queue=QUEUE, region=REGION, ssm_prefix=SSM_PREFIX, instance_profile_name=INSTANCE_PROFILE)
        self.provider = Ec2Provider({POOL: spec}, self.client, sleep=lambda _s: None)
        self.journal_path = tmp_path / "autoscaler" / "journal.jsonl"
        self.clock = Clock()
        self._submitted = 0

    def daemon(self, pool: PoolConfig, *, executor: Any = None, queues: Any = None) -> Autoscaler:
        return Autoscaler([pool], self.provider, queues or self.backend, decide, journal=Journal(self.journal_path),
                          clock=self.clock, executor=executor)

    # -- the platform ----------------------------------------------------------------------
    def submit(self, n: int) -> list[str]:
        ids = []
        for _ in range(n):
            self._submitted += 1
            k = self._submitted
            ids.append(self.backend.submit("video_summary", f"scan-{k}", {"scan_uri": f"file:///scans/{k}.mp4"},
                                           f"file:///out/{k}").task.task_id)
        return ids

    # -- the agents ------------------------------------------------------------------------
    def boot(self, *instance_ids: str) -> None:
        for iid in instance_ids:
            self.backend.register_worker(iid, QUEUE)

    def take(self, iid: str) -> TaskInfo | None:
        return self.backend.claim(QUEUE, iid, LEASE_S)

    def finish(self, iid: str, task: TaskInfo) -> None:
        self.backend.finish(task.task_id, iid, result={"summary": "ok"})

    def work_off_queue(self, *instance_ids: str) -> None:
        """Each agent takes and finishes tasks in turn until the queue is empty."""
        while True:
            progressed = False
            for iid in instance_ids:
                task = self.take(iid)
                if task is not None:
                    self.finish(iid, task)
                    progressed = True
            if not progressed:
                return

    def acknowledge(self, iid: str) -> bool:
        """The agent's idle heartbeat; True when it has been asked to drain."""
        return self.backend.heartbeat(iid, None, LEASE_S)

    def worker(self, iid: str) -> WorkerInfo:
        (row,) = [w for w in self.backend.workers(QUEUE) if w.worker_id == iid]
        return row

    # -- what exists -----------------------------------------------------------------------
    def ec2_instances(self) -> dict[str, dict[str, Any]]:
        """Every instance moto knows in the region, terminated ones included, by id."""
        return {i["InstanceId"]: i for r in self.ec2.describe_instances()["Reservations"] for i in r["Instances"]}

    def state(self, iid: str) -> str:
        return self.ec2_instances()[iid]["State"]["Name"]

    def live(self) -> list[str]:
        """The pool's live instances as the provider lists them (the daemon's truth), oldest first."""
        return [i.id for i in self.provider.list_instances(POOL)]

    def entries(self, *kinds: str) -> list[dict[str, Any]]:
        if not self.journal_path.exists():
            return []
        lines = [json.loads(line) for line in self.journal_path.read_text().splitlines()]
        return [e for e in lines if not kinds or e["kind"] in kinds]


@pytest.fixture
def fleet(moto: MotoServer, world: Ec2World, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(moto, world, tmp_path)
    yield f
    f.backend.close()


@pytest.fixture(params=["inline", "threads"])
def executor(request: pytest.FixtureRequest) -> Iterator[TrackingExecutor | None]:
    """The daemon launching inline (as in the simulator) and on launch threads (as in production)."""
    if request.param == "inline":
        yield None
        return
    ex = TrackingExecutor()
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


def settle(executor: TrackingExecutor | None) -> None:
    if executor is not None:
        executor.settle()


def of_type(actions: Sequence[Action], kind: type[Action]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def launched(actions: Sequence[Action]) -> int:
    return sum(a.count for a in of_type(actions, Launch))


def tags_of(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags") or []}


# -- scenarios ----------------------------------------------------------------------------------
def test_activation(fleet: Fleet, executor: TrackingExecutor | None) -> None:
    daemon = fleet.daemon(make_pool(), executor=executor)

    idle_ticks = [daemon.tick() for _ in range(3)]
    settle(executor)

    assert idle_ticks == [[], [], []], "an empty queue launches nothing"
    assert fleet.ec2_instances() == {} and fleet.entries() == []

    fleet.submit(1)
    first = daemon.tick()
    settle(executor)

    assert launched(first) == 1, "the first task at zero capacity gets one instance on the first tick"
    (iid,) = fleet.live()
    tags = tags_of(fleet.ec2_instances()[iid])
    assert tags[TAG_POOL] == POOL and tags[TAG_MANAGED] == "true"
    assert fleet.ec2_instances()[iid].get("InstanceLifecycle") == "spot"  # the pool's first option
    (entry,) = fleet.entries("launch")
    assert entry["count"] == 1 and entry["option"]["market"] == "spot"


def test_scale_out(fleet: Fleet, executor: TrackingExecutor | None) -> None:
    # Tasks long enough that each instance up to the cap clearly pays for its boot.
    pool = make_pool(max_instances=3, expected_service_s=900.0)
    daemon = fleet.daemon(pool, executor=executor)
    fleet.submit(12)

    first = daemon.tick()
    settle(executor)

    assert launched(first) == 3 == len(fleet.live()), "sized from the backlog, capped at max_instances"
    assert len(fleet.ec2_instances()) == 3

    fleet.clock.advance(5)
    again = [daemon.tick() for _ in range(3)]  # still booting: no agent has registered
    settle(executor)

    assert [launched(a) for a in again] == [0, 0, 0], "booting instances count: no duplicate launches"
    assert len(fleet.ec2_instances()) == 3


def test_scale_out_counts_launches_in_flight(fleet: Fleet) -> None:
    """A second tick while the first launch call is still in flight launches nothing more."""
    executor = TrackingExecutor()
    try:
        daemon = fleet.daemon(make_pool(max_instances=3, expected_service_s=900.0), executor=executor)
        fleet.submit(12)
        fleet.client.hold = threading.Event()

        first = daemon.tick()
        assert fleet.client.launching.wait(10)
        during = daemon.tick()  # the launch is held inside run_instances: not yet on moto

        assert launched(first) == 3 and launched(during) == 0
        assert fleet.ec2_instances() == {}

        fleet.client.hold.set()
        executor.settle()
        after = daemon.tick()

        assert launched(after) == 0
        assert len(fleet.live()) == 3
    finally:
        if fleet.client.hold is not None:
            fleet.client.hold.set()
        executor.shutdown(wait=True)


def test_scale_in(fleet: Fleet) -> None:
    pool = make_pool()
    daemon = fleet.daemon(pool)
    fleet.submit(3)
    daemon.tick()
    ids = fleet.live()
    assert ids
    fleet.boot(*ids)
    fleet.work_off_queue(*ids)

    fleet.clock.advance(pool.idle_timeout_s + 1)  # every worker idle past idle_timeout_s
    drain_tick = daemon.tick()

    assert sorted(a.instance_id for a in of_type(drain_tick, Drain)) == sorted(ids)
    assert not of_type(drain_tick, Terminate) and not of_type(drain_tick, Stop), "drain before terminate"
    assert all(fleet.worker(i).draining for i in ids), "the backend's worker rows are marked draining"
    assert {fleet.state(i) for i in ids} == {"running"}
    assert fleet.entries("terminate", "stop") == []

    assert all(fleet.acknowledge(i) for i in ids)  # each agent sees the drain request, idle
    end_tick = daemon.tick()

    assert sorted(i for a in of_type(end_tick, Terminate) for i in a.instance_ids) == sorted(ids)
    assert {fleet.state(i) for i in ids} <= {"shutting-down", "terminated"}
    assert fleet.live() == []
    journal = fleet.entries("drain", "terminate")
    for iid in ids:
        kinds = [e["kind"] for e in journal if e.get("instance") == iid or iid in e.get("instances", ())]
        assert kinds == ["drain", "terminate"], f"{iid}: {kinds}"
    assert [launched(daemon.tick()) for _ in range(2)] == [0, 0], "an empty queue stays at zero"


@pytest.mark.parametrize("kill_at", ["journal", "first_instance"])
def test_restart_rebuilds_from_tags(fleet: Fleet, moto: MotoServer, tmp_path: Path, kill_at: str) -> None:
    """kill -9 as soon as the journal shows the launch (before EC2 has it), or as soon as EC2 has
    its first instance (the launch half done: moto gives one instance per RunInstances call)."""
    state_dir, config_path = write_daemon_config(tmp_path, moto, fleet.world)
    pool = parse_config(read_toml(config_path), load_settings(state_dir=state_dir)).pools[0]
    backend = EmbeddedBackend(state_dir / "scantide.db")
    backend.register_template(Template(name="video_summary", queue=QUEUE))
    for k in range(6):
        backend.submit("video_summary", f"scan-{k}", {"scan_uri": f"file:///scans/{k}.mp4"}, f"file:///out/{k}")
    backend.close()
    # What one daemon launches for this backlog from zero (the policy's own answer, whatever its tuning).
    now = time.time()
    snapshot = Snapshot(now, {POOL: PoolSnapshot(pool=POOL, pending=6, running=0, oldest_queued_age_s=0.0,
                                                 arrival_rate_per_s=0.0, instances=())})
    expected = launched(decide(snapshot, now, {POOL: pool}))
    assert 1 <= expected <= pool.max_instances
    journal = state_dir / "autoscaler" / "journal.jsonl"
    env = daemon_env(state_dir, config_path)

    first = start_daemon(env, tmp_path / "first.log")
    try:
        wait_for(lambda: journal.exists() and '"kind": "launch"' in journal.read_text(), 30, interval_s=0.01,
                 what="the first daemon's launch in the journal")
        if kill_at == "first_instance":
            wait_for(fleet.live, 30, interval_s=0.01, what="the first daemon's first instance")
        first.send_signal(signal.SIGKILL)  # mid-launch, perhaps: it leaves no state but the tags
        first.wait(timeout=10)
    finally:
        stop_process(first)

    second = start_daemon(env, tmp_path / "second.log")
    try:
        wait_for(lambda: len(fleet.live()) >= expected, 30, interval_s=0.1, what="the restarted daemon's fleet")
        # Three more whole ticks of the restarted daemon while the fleet boots: one that failed to
        # see the fleet by its tags would launch a second one there.
        wait_ticks(journal.with_name(TICKS_FILE), 3, pid=second.pid, timeout_s=60)
        assert second.poll() is None, (tmp_path / "second.log").read_text()[-3000:]
        second.send_signal(signal.SIGTERM)  # a launch it started ends before it exits: the count below is final
        assert second.wait(timeout=60) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        stop_process(second)

    live = fleet.live()
    assert len(live) == expected, "the restarted daemon rebuilt its view from tags: no second fleet"
    in_region = {iid: i for iid, i in fleet.ec2_instances().items() if i["State"]["Name"] != "terminated"}
    assert sorted(in_region) == sorted(live), "no orphan: every instance in the region is the pool's"
    assert all(tags_of(i)[TAG_POOL] == POOL and tags_of(i)[TAG_MANAGED] == "true" for i in in_region.values())


@pytest.mark.parametrize(("second", "refuse"), [
    (ON_DEMAND, lambda params: "InstanceMarketOptions" in params),  # no spot capacity: the same type on demand
    (OTHER_TYPE, lambda params: params["InstanceType"] == SPOT.instance_type),  # no g5 at all: another type
], ids=["on_demand", "another_type"])
def test_capacity_fallback(fleet: Fleet, second: InstanceOption, refuse: Callable[[dict[str, Any]], bool]) -> None:
    fleet.client.refuse = refuse
    daemon = fleet.daemon(make_pool(SPOT, second))
    fleet.submit(1)

    actions = daemon.tick()

    (launch,) = of_type(actions, Launch)
    assert launch.option == SPOT, "the policy asks for the first option; the daemon falls back"
    (listed,) = fleet.provider.list_instances(POOL)
    assert listed.option == second
    raw = fleet.ec2_instances()[listed.id]
    assert raw["InstanceType"] == second.instance_type
    assert raw.get("InstanceLifecycle") == ("spot" if second.market is Market.spot else None)
    assert len(fleet.ec2_instances()) == 1
    failed = fleet.entries("launch_failed")
    assert failed and all(e["fallback"] is True for e in failed)
    assert {(e["option"]["instance_type"], e["option"]["market"]) for e in failed} == {
        (SPOT.instance_type, SPOT.market.value)}
    assert "InsufficientInstanceCapacity" in failed[0]["reason"]
    assert launched(daemon.tick()) == 0, "the fallback instance counts as booting"


def test_stuck_boot_terminated(fleet: Fleet) -> None:
    pool = make_pool(boot_timeout_s=120.0, expected_service_s=900.0)
    daemon = fleet.daemon(pool)
    fleet.submit(3)
    daemon.tick()
    stuck, *healthy = fleet.live()
    fleet.boot(*healthy)  # every agent but the stuck one registers and takes a task
    for iid in healthy:
        assert fleet.take(iid) is not None

    fleet.clock.advance(pool.boot_timeout_s / 2)
    assert not of_type(daemon.tick(), Terminate), "still within boot_timeout_s"

    fleet.clock.advance(pool.boot_timeout_s / 2 + 1)
    actions = daemon.tick()

    assert [a.instance_ids for a in of_type(actions, Terminate)] == [(stuck,)]
    assert fleet.state(stuck) in ("shutting-down", "terminated")
    assert all(fleet.state(i) == "running" for i in healthy)
    (entry,) = fleet.entries("terminate")
    assert entry["instances"] == [stuck] and "boot" in entry["reason"]  # the journal says why


class RacyQueue:
    """The task store as the daemon sees it, where the agent claims a task in the instant between
    the daemon's snapshot (idle) and its drain request."""

    def __init__(self, backend: EmbeddedBackend, before_drain: Callable[[str], None]) -> None:
        self.backend = backend
        self.before_drain = before_drain

    def queue_stats(self, queue: str) -> Any:
        return self.backend.queue_stats(queue)

    def workers(self, queue: str | None = None) -> list[WorkerInfo]:
        return self.backend.workers(queue)

    def get_task(self, task_id: str) -> Any:
        return self.backend.get_task(task_id)

    def request_drain(self, worker_id: str) -> None:
        self.before_drain(worker_id)
        self.backend.request_drain(worker_id)


def test_drain_race(fleet: Fleet) -> None:
    held: list[TaskInfo] = []

    def race(worker_id: str) -> None:
        fleet.submit(1)
        task = fleet.take(worker_id)
        assert task is not None
        held.append(task)

    pool = make_pool()
    daemon = fleet.daemon(pool, queues=RacyQueue(fleet.backend, race))
    fleet.submit(1)
    daemon.tick()
    (iid,) = fleet.live()
    fleet.boot(iid)
    fleet.work_off_queue(iid)

    fleet.clock.advance(pool.idle_timeout_s + 1)
    assert [a.instance_id for a in of_type(daemon.tick(), Drain)] == [iid]
    row = fleet.worker(iid)
    assert row.draining and row.task_id == held[0].task_id, "asked to drain while holding the task it just took"

    for _ in range(3):
        actions = daemon.tick()
        assert not of_type(actions, Terminate) and not of_type(actions, Stop)
    # Even a policy that asks too early is refused by the daemon.
    now = fleet.clock()
    daemon.act(Terminate(POOL, "a policy asking too early", (iid,)), daemon.observe(now), now)

    assert fleet.state(iid) == "running"
    (refused,) = fleet.entries("refused")
    assert refused["instances"] == [iid]
    assert fleet.entries("terminate") == []

    fleet.finish(iid, held[0])
    assert fleet.acknowledge(iid) and fleet.take(iid) is None, "a draining worker takes no new task"
    actions = daemon.tick()

    assert [a.instance_ids for a in of_type(actions, Terminate)] == [(iid,)]
    assert fleet.state(iid) in ("shutting-down", "terminated")


def test_warm_pool_stops_then_starts_before_launching(fleet: Fleet) -> None:
    # On demand: one-time spot instances cannot be stopped. min_size=max_size=2: two stopped instances.
    pool = make_pool(ON_DEMAND, expected_service_s=900.0, warm_pool=WarmPoolConfig(enabled=True, min_size=2,
                                                                                     max_size=2))
    daemon = fleet.daemon(pool)
    fleet.submit(3)
    daemon.tick()  # activation, and enough instances to initialise the warm pool
    ids = fleet.live()
    assert len(ids) >= 2
    fleet.boot(*ids)
    fleet.work_off_queue(*ids)

    fleet.clock.advance(pool.idle_timeout_s + 1)
    assert sorted(a.instance_id for a in of_type(daemon.tick(), Drain)) == sorted(ids)
    assert all(fleet.acknowledge(i) for i in ids)
    actions = daemon.tick()

    (stop,) = of_type(actions, Stop)
    assert len(stop.instance_ids) == 2, "drained instances fill the warm pool up to its size"
    ended = [i for a in of_type(actions, Terminate) for i in a.instance_ids]
    assert sorted([*stop.instance_ids, *ended]) == sorted(ids), "the rest are terminated"
    assert {fleet.state(i) for i in stop.instance_ids} == {"stopped"}
    for iid in ids:
        fleet.backend.unregister_worker(iid)  # each agent exits cleanly as its instance shuts down
    assert daemon.tick() == [], "a full warm pool and an empty queue: nothing to do"
    stopped = set(stop.instance_ids)

    fleet.submit(12)  # a backlog bigger than the warm pool, of tasks long enough to want the whole cap
    actions = daemon.tick()
    started = warm_starts_first(actions, stopped)

    assert started == stopped, "a new backlog starts the stopped instances"
    assert launched(actions) >= 1, "and cold-launches the rest, after the starts"
    assert all(fleet.state(i) in ("pending", "running") for i in started)
    assert len(fleet.live()) <= pool.max_instances
    assert sorted(i for e in fleet.entries("start") for i in e["instances"]) == sorted(stopped)
    for iid in started:  # each agent comes back on start and works again
        fleet.boot(iid)
        assert fleet.take(iid) is not None
    assert not of_type(daemon.tick(), Stop)


def warm_starts_first(actions: list[Action], stopped: set[str]) -> set[str]:
    """The stopped instances ``actions`` start, checking that a cold launch comes only once every
    stopped instance is started, and after the starts."""
    assert not of_type(actions, Stop) and not of_type(actions, Terminate)
    started = {i for a in of_type(actions, Start) for i in a.instance_ids}
    assert started <= stopped
    launches = [n for n, a in enumerate(actions) if isinstance(a, Launch)]
    if launches:
        assert started == stopped, "a cold launch while the warm pool still holds stopped instances"
        assert max(n for n, a in enumerate(actions) if isinstance(a, Start)) < min(launches)
    return started


def test_fleet_command_shows_instances_and_decisions(fleet: Fleet, moto: MotoServer, tmp_path: Path) -> None:
    state_dir, config_path = write_daemon_config(tmp_path, moto, fleet.world)
    settings = load_settings(state_dir=state_dir, autoscaler_config=config_path)
    pool = parse_config(read_toml(config_path), settings).pools[0]
    backend = EmbeddedBackend(settings.db_path)
    try:
        backend.register_template(Template(name="video_summary", queue=QUEUE))
        backend.submit("video_summary", "scan-1", {"scan_uri": "file:///scans/1.mp4"}, "file:///out/1")
        daemon = Autoscaler([pool], fleet.provider, backend, decide,
                            journal=Journal(state_dir / "autoscaler" / "journal.jsonl"))
        daemon.tick()
        (iid,) = fleet.live()
        backend.register_worker(iid, QUEUE)
        task = backend.claim(QUEUE, iid, LEASE_S)
        assert task is not None
    finally:
        backend.close()

    # 80 columns, as when the output goes to a pipe or a log: ids must still print whole.
    out = subprocess.run(cli_argv("fleet"), env={**daemon_env(state_dir, config_path), "COLUMNS": "80"},
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    assert out.returncode == 0, out.stderr[-3000:]
    assert f"pool {POOL}" in out.stdout and "0 queued, 1 running" in out.stdout, out.stdout
    (row,) = [line for line in out.stdout.splitlines() if iid in line]
    assert "busy" in row and "spot" in row
    instances_table = out.stdout.split("recent decisions")[0]
    task_cells = [line.split("│")[-2].strip() for line in instances_table.splitlines() if line.startswith("│")]
    assert "".join(task_cells) == task.task_id  # the task column folds long ids onto more lines
    decisions = out.stdout.split("recent decisions")[1]
    assert "launch" in decisions and f"1 × {SPOT.instance_type} spot" in decisions


def test_slots_from_the_config_to_the_instances_and_back(fleet: Fleet, moto: MotoServer, tmp_path: Path) -> None:
    """``[pools.resources] slots = 2``: half the instances for the backlog, user data that starts two
    agents, slot workers joined to their instances, and every slot drained before the instance goes."""
    profile = tmp_path / "throughput.json"
    profile.write_text(json.dumps({"scans_per_hour": {"1": 1200.0, "2": 2000.0}}))
    state_dir, config_path = write_daemon_config(
        tmp_path, moto, fleet.world, pool_extra=f'[pools.resources]\nslots = 2\nslot_profile = "{profile}"\n')
    settings = load_settings(state_dir=state_dir, autoscaler_config=config_path)
    config = load_config(settings)
    (pool,) = config.pools
    assert pool.slots == 2 and pool.resources.slot_slowdown == pytest.approx(1.2)
    provider = from_config(config, settings)  # the launch spec takes the pool's slots, like its queue
    daemon = Autoscaler([pool], provider, fleet.backend, decide, journal=Journal(fleet.journal_path),
                        clock=fleet.clock)
    tasks = fleet.submit(4)

    assert launched(daemon.tick()) == 2, "four long tasks, two slots each: two instances (four with one slot)"
    ids = [i.id for i in provider.list_instances(POOL)]
    for iid in ids:
        user_data = fleet.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"]["Value"]
        assert "\nSLOTS=2\n" in base64.b64decode(user_data).decode()

    slot_ids = {iid: slot_worker_ids(iid, 2) for iid in ids}
    for iid in ids:
        fleet.boot(*slot_ids[iid])
    held = {w: fleet.take(w) for iid in ids for w in slot_ids[iid]}
    assert sorted(t.task_id for t in held.values() if t) == sorted(tasks)
    snapshot = daemon.observe(fleet.clock())
    assert {(i.id, i.state.value, len(i.task_ids)) for i in snapshot.pools[POOL].instances} == {
        (iid, "busy", 2) for iid in ids}
    assert launched(daemon.tick()) == 0

    first = ids[0]
    fleet.finish(slot_ids[first][0], held[slot_ids[first][0]])  # one slot of the first instance frees
    (still,) = [i for i in daemon.observe(fleet.clock()).pools[POOL].instances if i.id == first]
    assert still.state.value == "busy" and still.free_slots == 1, "busy while any slot holds a task"
    for worker, task in held.items():
        if worker != slot_ids[first][0]:
            fleet.finish(worker, task)

    drains = of_type(daemon.tick(), Drain)  # nothing queued, nothing arriving: idle instances drain
    assert sorted((d.instance_id, d.worker_ids) for d in drains) == sorted(slot_ids.items())
    assert all(fleet.worker(w).draining for ws in slot_ids.values() for w in ws)
    assert all(fleet.acknowledge(w) for ws in slot_ids.values() for w in ws)
    ended = of_type(daemon.tick(), Terminate)
    assert sorted(i for t in ended for i in t.instance_ids) == sorted(ids)
    assert [i.id for i in provider.list_instances(POOL)] == []


# -- the daemon as a process --------------------------------------------------------------------
def write_daemon_config(tmp_path: Path, moto: MotoServer, world: Ec2World, pool_extra: str = "") -> tuple[Path, Path]:
    """The state dir and a daemon config for this world; ``pool_extra``: more TOML for the pool (tables)."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "autoscaler.toml"
    config.write_text(f"""\
tick_s = {TICK_S}
provider = "ec2"

[[pools]]
name = "{POOL}"
queue = "{QUEUE}"
max_instances = 4
expected_service_s = 900.0
boot_timeout_s = {LONG_S}
lost_after_s = {LONG_S}

[[pools.options]]
instance_type = "{SPOT.instance_type}"
market = "spot"
price_per_hour = {SPOT.price_per_hour}

[[pools.options]]
instance_type = "{ON_DEMAND.instance_type}"
market = "on_demand"
price_per_hour = {ON_DEMAND.price_per_hour}

{pool_extra}
{world.ec2_toml(moto, SSM_PREFIX)}""")
    return state_dir, config


def read_toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def daemon_env(state_dir: Path, config_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANTIDE_") and k != "AWS_PROFILE"}
    return {**env, **AWS_TEST_ENV, "SCANTIDE_STATE_DIR": str(state_dir),
            "SCANTIDE_AUTOSCALER_CONFIG": str(config_path), "SCANTIDE_CONFIG": str(state_dir / "no-such.toml")}


def start_daemon(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(cli_argv("autoscaler"), env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def test_capacity_exhausted_pages_on_call(fleet: Fleet, settings: Any) -> None:
    """No option has capacity: the launch fails for good, the journal says so, and the monitor
    turns that entry (once, across re-reads) into a signed ``fleet.launch_failed`` webhook."""
    from monitor.daemon import alert_config, delivery_policy, outbox_for
    from monitor.watch import Watcher
    from monitor.webhook import Deliverer
    from tests.monitor.conftest import SECRET, with_settings
    from tests.monitor.receiver import Receiver

    fleet.client.refuse = lambda params: True
    fleet.submit(1)
    fleet.daemon(make_pool(SPOT, ON_DEMAND)).tick()
    assert fleet.ec2_instances() == {}
    final = [e for e in fleet.entries("launch_failed") if e["fallback"] is False]
    assert len(final) == 1 and final[0]["reason"] == "no option had capacity"

    receiver = Receiver(SECRET)
    receiver.up()
    try:
        cfg = with_settings(settings, webhook_url=receiver.url, webhook_secret=SECRET, webhook_backoff_base_s=0.2)
        outbox = outbox_for(cfg)
        watcher = Watcher(fleet.backend, outbox, alert_config(cfg), journal=fleet.journal_path)
        assert watcher.poll_journal() == 1
        assert watcher.poll_journal() == 0, "read once: the position is kept with the event"
        restarted = Watcher(fleet.backend, outbox_for(cfg), alert_config(cfg), journal=fleet.journal_path)
        assert restarted.poll_journal() == 0, "a restarted monitor resumes from the kept position"

        policy = delivery_policy(cfg)
        assert policy is not None
        deliverer = Deliverer(outbox, policy)
        sender = threading.Thread(target=deliverer.run, kwargs={"idle_wait_s": 0.1}, daemon=True)
        sender.start()
        wait_for(lambda: receiver.accepted(), timeout_s=20, what="the launch failure webhook")
        deliverer.stop()
        sender.join(timeout=10)
        (got,) = receiver.accepted()
        assert got.type == "fleet.launch_failed" and got.signature_error is None
        assert got.body["data"]["pool"] == POOL and got.body["data"]["reason"] == "no option had capacity"
    finally:
        receiver.close()
