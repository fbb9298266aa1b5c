"""``scantide fleet`` shows each pool's wait target, the p95 the running autoscaler measured over the
last hour, and the state the policy is in."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from autoscaler.config import default_local
from autoscaler.fleet_report import fleet_report
from autoscaler.model import Instance, InstanceOption, InstanceState, Market, PoolConfig, PoolSnapshot, Snapshot
from autoscaler.status import daemon_targets, fleet_path, write_fleet
from service.settings import load_settings
from service.supervisor import cli_argv, settings_env

OPTION = InstanceOption("g5.xlarge", Market.on_demand, 1.0)
WAITS = tuple(float(w) for w in range(100))  # p95 94.05 s


def idle(iid: str) -> Instance:
    return Instance(iid, "gpu", OPTION, InstanceState.idle, launched_at=0.0, state_since=950.0, worker_ids=(iid,))


def snapshot(now: float, up: int = 5, **measured) -> Snapshot:
    ps = PoolSnapshot("gpu", pending=0, running=0, oldest_queued_age_s=0.0, arrival_rate_per_s=80 / 3600,
                      instances=tuple(idle(f"i-{k}") for k in range(up)), service_time_s=80.0, **measured)
    return Snapshot(now=now, pools={"gpu": ps})


def test_the_report_has_the_target_the_last_hours_p95_and_the_state() -> None:
    tight = PoolConfig("gpu", "scans", (OPTION,), p95_wait_target_s=60.0, expected_boot_s=180.0)
    (pool,) = fleet_report(snapshot(1000.0, recent_waits_s=WAITS), {"gpu": tight}, []).pools
    assert (pool.p95_wait_target_s, pool.p95_wait_s_last_hour, pool.waits_last_hour) == (60.0, 94.0, 100)
    assert pool.state == "holding 5 warm for the target (last hour over it)"  # Erlang's 4, one more for the p95
    (pool,) = fleet_report(snapshot(1000.0, up=4, recent_waits_s=WAITS), {"gpu": tight}, []).pools
    assert pool.state == "scaling out (+1)"
    (pool,) = fleet_report(snapshot(1000.0), {"gpu": tight}, []).pools
    assert (pool.p95_wait_s_last_hour, pool.waits_last_hour, pool.state) == (None, 0, "draining 1")


def test_only_a_running_daemons_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    pools = {"gpu": PoolConfig("gpu", "scans", (OPTION,))}
    assert daemon_targets(path, 1000.0, max_age_s=60.0) is None
    write_fleet(path, snapshot(1000.0, recent_waits_s=WAITS), pools)
    assert daemon_targets(path, 1030.0, max_age_s=60.0)["gpu"]["p95_wait_s_last_hour"] == 94.0
    assert daemon_targets(path, 1100.0, max_age_s=60.0) is None  # no daemon has ticked for 100 s


def test_the_command_shows_what_the_running_daemon_measured(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path / "state")
    (local,) = default_local(settings).pools
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200"}

    def fleet(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cli_argv("fleet", *args), env=env, capture_output=True, text=True, timeout=60)

    alone = fleet()  # no daemon: the target and the state, no measurement
    assert alone.returncode == 0, alone.stderr
    assert "p95 wait target 10s, last hour: no running autoscaler to measure it; at zero" in alone.stdout

    ps = PoolSnapshot(local.name, pending=0, running=0, oldest_queued_age_s=0.0, arrival_rate_per_s=0.0,
                      instances=(), recent_waits_s=WAITS)
    write_fleet(fleet_path(settings), Snapshot(now=time.time(), pools={local.name: ps}), {local.name: local})
    shown = fleet()
    assert "p95 wait target 10s, last hour: 94s over 100 waits; at zero" in shown.stdout
    (pool,) = json.loads(fleet("--json").stdout)["pools"]
    assert (pool["p95_wait_target_s"], pool["p95_wait_s_last_hour"], pool["state"]) == (10.0, 94.0, "at zero")
