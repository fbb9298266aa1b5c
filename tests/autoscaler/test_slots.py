"""Slots: several tasks at once on one instance (``[pools.resources] slots``).

The configuration and its measured slowdown profile, the worker ids of slots and how the daemon
joins them back to instances, and the local provider's worker environment. The policy's capacity
is in ``test_policy.py``, the simulator's in ``test_simulate.py``, user data's agents in
``test_user_data_boot.py``, the daemon on EC2 with slots in ``test_scenarios_ec2.py``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoscaler import config as config_module
from autoscaler.config import MEASURE_COMMAND, default_local, parse_config, slot_resources
from autoscaler.daemon import Autoscaler, Journal
from autoscaler.model import (
    Drain,
    InstanceOption,
    InstanceState,
    Market,
    PoolConfig,
    Resources,
    Terminate,
    instance_of,
    slot_worker_ids,
)
from autoscaler.policy import decide
from autoscaler.providers.base import ComputeProvider, ProviderInstance
from autoscaler.providers.local import LocalProvider
from autoscaler.runner import make_provider
from service.backends.embedded import EmbeddedBackend
from service.domain import Template
from service.errors import ConfigError
from service.settings import Settings, load_settings
from service.supervisor import settings_env
from tests.conftest import wait_for

PROFILE = {"scans_per_hour": {"1": 1200.0, "2": 2000.0, "4": 2300.0}, "best_slots": 4, "speedup": 1.9,
           "frames": 120, "per_frames": {"120": {"1": 1200.0}}}


def write_profile(path: Path, data: Any = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(PROFILE if data is None else data))
    return path


def pool_toml(resources: dict[str, Any] | None) -> dict[str, Any]:
    pool: dict[str, Any] = {"name": "gpu", "queue": "scans", "options": [{"instance_type": "g5.xlarge"}]}
    if resources is not None:
        pool["resources"] = resources
    return {"provider": "local", "pools": [pool]}


# -- configuration ----------------------------------------------------------------------------
def test_one_slot_is_the_default_and_needs_no_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "PROJECT_ROOT", tmp_path)  # no profile anywhere
    for resources in (None, {}, {"slots": 1}):
        (pool,) = parse_config(pool_toml(resources), load_settings(state_dir=tmp_path)).pools
        assert pool.slots == 1 and pool.resources == Resources()


@pytest.mark.parametrize("slots, slowdown", [(2, 2 * 1200 / 2000), (4, 4 * 1200 / 2300)])
def test_slots_read_their_slowdown_from_the_measured_profile(tmp_path: Path, slots: int, slowdown: float) -> None:
    profile = write_profile(tmp_path / "throughput.json")
    (pool,) = parse_config(pool_toml({"slots": slots, "slot_profile": str(profile)}),
                           load_settings(state_dir=tmp_path)).pools
    assert pool.slots == slots
    assert pool.resources.slot_slowdown == pytest.approx(slowdown)  # N × sph[1] / sph[N]
    assert pool.resources.slot_profile == str(profile)


def test_the_default_profile_is_the_benchmark_result_in_the_project(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "PROJECT_ROOT", tmp_path)
    write_profile(tmp_path / "benchmarks" / "results" / "throughput.json")
    (pool,) = parse_config(pool_toml({"slots": 2}), load_settings(state_dir=tmp_path)).pools
    assert pool.resources.slot_slowdown == pytest.approx(1.2)
    # a relative slot_profile is read from the project root too
    write_profile(tmp_path / "elsewhere.json", {"scans_per_hour": {"1": 100, "2": 150}})
    assert slot_resources(2, "elsewhere.json").slot_slowdown == pytest.approx(2 * 100 / 150)


@pytest.mark.parametrize("slots, problem", [(0, "greater than or equal to 1"), (17, "less than or equal to 16"),
                                             (-1, "greater than"), (2.5, "valid integer"), ("2", "valid integer"),
                                             (True, "valid integer")])
def test_slots_out_of_range_or_not_an_integer_are_refused(tmp_path: Path, slots: Any, problem: str) -> None:
    with pytest.raises(ConfigError, match=rf"^a\.toml: pools\[0\]\.resources\.slots: Input should be .*{problem}"):
        parse_config(pool_toml({"slots": slots}), load_settings(state_dir=tmp_path), source="a.toml")


def test_unknown_resources_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pools\[0\]\.resources\.slot_slowdown: unknown key; known: slots, "
                                          r"slot_profile"):
        parse_config(pool_toml({"slots": 2, "slot_slowdown": 1.0}), load_settings(state_dir=tmp_path))


@pytest.mark.parametrize("case, data, message", [
    ("no file", None, "does not exist"),
    ("not JSON", "{oops", "is not readable JSON"),
    ("no scans_per_hour", {"best_slots": 2}, 'has no "scans_per_hour" object'),
    ("no entry for 2 slots", {"scans_per_hour": {"1": 1200.0, "4": 2300.0}}, "has no scans_per_hour for 2 slot"),
    ("no entry for 1 slot", {"scans_per_hour": {"2": 2000.0}}, "has no scans_per_hour for 1 slot"),
    ("zero", {"scans_per_hour": {"1": 1200.0, "2": 0}}, "must be a positive number"),
])
def test_more_than_one_slot_without_a_measurement_is_refused(tmp_path: Path, case: str, data: Any,
                                                             message: str) -> None:
    path = tmp_path / "throughput.json"
    if isinstance(data, str):
        path.write_text(data)
    elif data is not None:
        write_profile(path, data)
    with pytest.raises(ConfigError) as info:
        parse_config(pool_toml({"slots": 2, "slot_profile": str(path)}), load_settings(state_dir=tmp_path),
                     source="a.toml")
    assert message in info.value.message, case
    assert info.value.message.startswith("a.toml: pools[0]: "), case
    assert MEASURE_COMMAND == "python benchmarks/throughput.py"
    if case != "zero":
        assert f"`{MEASURE_COMMAND}`" in info.value.message, case  # how to get the measurement


def test_the_embedded_pool_takes_scantide_worker_slots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "PROJECT_ROOT", tmp_path)
    assert default_local(load_settings(state_dir=tmp_path)).pools[0].slots == 1
    with pytest.raises(ConfigError, match=r"SCANTIDE_WORKER_SLOTS=2: .*python benchmarks/throughput.py"):
        default_local(load_settings(state_dir=tmp_path, worker_slots=2))
    write_profile(tmp_path / "benchmarks" / "results" / "throughput.json")
    (pool,) = default_local(load_settings(state_dir=tmp_path, worker_slots=2)).pools
    assert pool.slots == 2 and pool.resources.slot_slowdown == pytest.approx(1.2)


# -- worker ids -------------------------------------------------------------------------------
def test_slot_worker_ids() -> None:
    assert slot_worker_ids("i-0abc", 1) == ("i-0abc",)  # one slot: the instance id, as ever
    assert slot_worker_ids("i-0abc", 3) == ("i-0abc:0", "i-0abc:1", "i-0abc:2")
    with pytest.raises(ValueError):
        slot_worker_ids("i-0abc", 0)


@pytest.mark.parametrize("worker_id, expect", [
    ("i-1", "i-1"), ("i-1:0", "i-1"), ("i-1:12", "i-1"),
    ("i-2", None), ("i-2:0", None), ("i-1:x", None), ("i-1:", None), ("i-1:0:1", None),
    ("local-gpu:a-1f:1", "local-gpu:a-1f"),  # pool names may hold colons: the last one splits
    ("pool:b", "pool:b"),  # an exact id wins
])
def test_instance_of_joins_a_worker_to_its_instance(worker_id: str, expect: str | None) -> None:
    assert instance_of(worker_id, {"i-1", "local-gpu:a-1f", "pool:b"}) == expect


# -- the daemon joins slots to instances ---------------------------------------------------------
class FixedProvider(ComputeProvider):
    """Instances that exist because the test says so (the join is under test, not the provider)."""

    def __init__(self, *ids: str) -> None:
        self.ids = list(ids)
        self.terminated: list[str] = []

    def list_instances(self, pool: str) -> list[ProviderInstance]:
        return [ProviderInstance(i, pool, InstanceOption("g5.xlarge", Market.on_demand, 1.0), "running", 0.0)
                for i in self.ids]

    def launch(self, pool: str, option: InstanceOption, count: int) -> list[str]:
        return []

    def terminate(self, instance_ids: list[str]) -> None:
        self.terminated += instance_ids
        self.ids = [i for i in self.ids if i not in instance_ids]


SLOTTED = PoolConfig(name="gpu", queue="scans", options=(InstanceOption("g5.xlarge", Market.on_demand, 1.0),),
                     idle_timeout_s=60.0, idle_policy="fixed", lost_after_s=30.0,
                     resources=Resources(slots=2, slot_slowdown=1.2))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedBackend]:
    backend = EmbeddedBackend(tmp_path / "tasks.db")
    backend.register_template(Template(name="video_summary", queue="scans"))
    yield backend
    backend.close()


def submit(store: EmbeddedBackend, k: int) -> str:
    return store.submit("video_summary", f"scan-{k}", {"scan_uri": f"file:///{k}.mp4"}, f"file:///out/{k}").task.task_id


def test_an_instance_is_idle_only_when_every_slot_is_idle(store: EmbeddedBackend) -> None:
    provider = FixedProvider("i-a", "i-b")
    daemon = Autoscaler([SLOTTED], provider, store, decide, journal=Journal())
    for w in ("i-a:0", "i-a:1", "i-b:0"):  # i-b's slot 1 has not registered yet
        store.register_worker(w, "scans")
    store.register_worker("i-z:0", "scans")  # a worker of no instance of this pool: ignored
    submit(store, 1)
    task = store.claim("scans", "i-a:1", 600.0)
    assert task is not None

    (a, b) = daemon.observe(time.time()).pools["gpu"].instances
    assert (a.id, a.state, a.worker_ids, a.task_ids, a.free_slots) == (
        "i-a", InstanceState.busy, ("i-a:0", "i-a:1"), (task.task_id,), 1)
    assert (b.id, b.state, b.worker_ids, b.slots) == ("i-b", InstanceState.idle, ("i-b:0",), 2)

    store.finish(task.task_id, "i-a:1", result={"summary": "ok"})
    (a, _) = daemon.observe(time.time()).pools["gpu"].instances
    assert a.state is InstanceState.idle and a.task_ids == ()


class ClaimBeforeDrain:
    """The task store, where a scan arrives after the daemon's snapshot and slot ``racer`` claims it
    just before its drain request lands."""

    def __init__(self, store: EmbeddedBackend, racer: str) -> None:
        self.store, self.racer = store, racer
        self.claimed: list[str] = []

    def queue_stats(self, queue: str) -> Any:
        return self.store.queue_stats(queue)

    def workers(self, queue: str | None = None) -> Any:
        return self.store.workers(queue)

    def get_task(self, task_id: str) -> Any:
        return self.store.get_task(task_id)

    def request_drain(self, worker_id: str) -> None:
        if worker_id == self.racer and not self.claimed:
            submit(self.store, 99)
            task = self.store.claim("scans", worker_id, 600.0)
            assert task is not None
            self.claimed.append(task.task_id)
        self.store.request_drain(worker_id)


def test_scale_in_drains_every_slot_and_terminates_once_none_holds_a_task(store: EmbeddedBackend) -> None:
    provider = FixedProvider("i-a")
    clock = [time.time()]
    queues = ClaimBeforeDrain(store, racer="i-a:1")
    daemon = Autoscaler([SLOTTED], provider, queues, decide, journal=Journal(), clock=lambda: clock[0])
    for w in ("i-a:0", "i-a:1"):
        store.register_worker(w, "scans")
    assert daemon.tick() == []  # idle, under the idle timeout

    clock[0] += SLOTTED.idle_timeout_s + 1
    heartbeats_until(store, clock[0])
    (drain,) = [a for a in daemon.tick() if isinstance(a, Drain)]
    assert drain.instance_id == "i-a" and drain.worker_ids == ("i-a:0", "i-a:1")
    assert {w.worker_id: w.draining for w in store.workers("scans")} == {"i-a:0": True, "i-a:1": True}
    (entry,) = [e for e in daemon.journal.recent if e["kind"] == "drain"]
    assert entry["instance"] == "i-a" and entry["workers"] == ["i-a:0", "i-a:1"]

    # every slot is draining, but slot 1 holds the task it took: the instance waits for it
    heartbeats_until(store, clock[0])  # the claim reported at wall time
    (inst,) = daemon.observe(clock[0]).pools["gpu"].instances
    assert inst.state is InstanceState.draining and inst.task_ids == tuple(queues.claimed)
    assert not [a for a in daemon.tick() if isinstance(a, Terminate)] and provider.terminated == []

    store.finish(queues.claimed[0], "i-a:1", result={"summary": "ok"})
    (end,) = [a for a in daemon.tick() if isinstance(a, Terminate)]
    assert end.instance_ids == ("i-a",) and provider.terminated == ["i-a"]


def test_the_last_word_refuses_to_terminate_an_instance_whose_other_slot_holds_a_task(
        store: EmbeddedBackend) -> None:
    provider = FixedProvider("i-a")
    daemon = Autoscaler([SLOTTED], provider, store, decide, journal=Journal())
    for w in ("i-a:0", "i-a:1"):
        store.register_worker(w, "scans")
    submit(store, 1)
    assert store.claim("scans", "i-a:0", 600.0) is not None
    now = time.time()
    daemon.act(Terminate("gpu", "test", ("i-a",)), daemon.observe(now), now)
    assert provider.terminated == []
    assert [e["kind"] for e in daemon.journal.recent] == ["refused"]


def test_an_instance_is_lost_only_when_every_slot_is_silent(store: EmbeddedBackend) -> None:
    provider = FixedProvider("i-a")
    daemon = Autoscaler([SLOTTED], provider, store, decide, journal=Journal())
    for w in ("i-a:0", "i-a:1"):
        store.register_worker(w, "scans")
    later = time.time() + SLOTTED.lost_after_s + 5
    heartbeats_until(store, later, only="i-a:1")  # slot 0's agent died; slot 1 still reports
    (inst,) = daemon.observe(later).pools["gpu"].instances
    assert inst.state is InstanceState.idle
    (inst,) = daemon.observe(later + SLOTTED.lost_after_s + 5).pools["gpu"].instances
    assert inst.state is InstanceState.lost


def heartbeats_until(store: EmbeddedBackend, now: float, only: str | None = None) -> None:
    """The heartbeats the workers (or ``only`` that one) would have sent by ``now``, the daemon's moved clock."""
    with store.db.tx() as db:
        if only is None:
            db.execute("UPDATE workers SET last_seen = ?", (now,))
        else:
            db.execute("UPDATE workers SET last_seen = ? WHERE id = ?", (now, only))


# -- the local provider ------------------------------------------------------------------------
def test_local_workers_get_the_pool_slots_in_their_environment(settings: Settings) -> None:
    env = {**os.environ, **settings_env(settings), "SCANTIDE_WORKER_SLOTS": "7"}  # the pool's value wins
    provider = LocalProvider(settings.state_dir, {"gpu": "scans", "cpu": "small"}, env=env,
                             slots={"gpu": 3}, kill_after_s=5.0)
    try:
        (gpu,) = provider.launch("gpu", InstanceOption("local-process", Market.on_demand, 1.0), 1)
        (cpu,) = provider.launch("cpu", InstanceOption("local-process", Market.on_demand, 1.0), 1)
        for iid, slots in ((gpu, "3"), (cpu, "1")):
            proc = Path(f"/proc/{provider._children[iid].pid}")
            # the kernel fills in a new program's arguments a moment after the exec Popen waits for
            wait_for(lambda: b"--worker-id" in (proc / "cmdline").read_bytes(), 10, interval_s=0.01,
                     what="the worker's command line")
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = dict(line.split(b"=", 1) for line in (proc / "environ").read_bytes().split(b"\0")
                           if b"=" in line)
            assert argv[argv.index(b"--worker-id") + 1] == iid.encode()  # the worker names its slots itself
            assert environ[b"SCANTIDE_WORKER_SLOTS"] == slots.encode()
    finally:
        provider.terminate([p.stem for p in provider.root.glob("*/*.json")])
        for child in list(provider._children.values()):
            try:
                child.wait(timeout=30)
            except Exception:  # noqa: BLE001 - a stuck worker is killed, never left behind
                child.send_signal(signal.SIGKILL)
                child.wait(timeout=10)


def test_the_embedded_autoscaler_gives_its_provider_the_pool_slots(settings: Settings, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "PROJECT_ROOT", tmp_path)
    write_profile(tmp_path / "benchmarks" / "results" / "throughput.json")
    settings = settings.model_copy(update={"worker_slots": 4})
    provider = make_provider(default_local(settings), settings)
    assert isinstance(provider, LocalProvider) and provider.slots == {"local": 4}

