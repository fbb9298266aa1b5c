"""Local provider: each "instance" is a ``scantide worker`` process on this machine (embedded mode).

An instance is a pid file under ``<state_dir>/fleet/<pool>/``: the provider's truth, like EC2 tags,
so a restarted autoscaler finds the workers it started (they run in their own sessions and outlive
it). The worker is started with ``--worker-id <instance id>`` and ``SCANTIDE_WORKER_SLOTS=<the
pool's slots>``: it registers under the instance id (one slot) or one worker per slot,
``<instance id>:<k>`` (``autoscaler.model.slot_worker_ids``), so the daemon can join them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from autoscaler.model import InstanceOption, Market
from autoscaler.providers.base import ComputeProvider, ProviderInstance

log = logging.getLogger(__name__)


class LocalProvider(ComputeProvider):
    def __init__(self, state_dir: Path, queues: dict[str, str], env: dict[str, str] | None = None,
                 kill_after_s: float = 60.0, slots: dict[str, int] | None = None) -> None:
        """``queues`` maps a pool to the queue its workers serve; ``env`` is the workers' environment
        (None: this process's); ``slots`` maps a pool to the tasks each of its workers runs at once
        (1 for a pool not named)."""
        self.root = state_dir / "fleet"
        self.log_dir = state_dir / "logs"
        self.queues = queues
        self.env = env
        self.slots = slots or {}
        self.kill_after_s = kill_after_s
        self._children: dict[str, subprocess.Popen] = {}  # reaped by poll(), so no zombies linger

    def _dir(self, pool: str) -> Path:
        return self.root / pool

    def list_instances(self, pool: str) -> list[ProviderInstance]:
        out = []
        folder = self._dir(pool)
        for path in sorted(folder.glob("*.json")) if folder.exists() else []:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            instance_id = path.stem
            if not self._alive(instance_id, record["pid"]):
                path.unlink(missing_ok=True)
                continue
            terminating = record.get("terminating_at")
            if terminating is not None and time.time() - terminating > self.kill_after_s:
                self._signal(record["pid"], signal.SIGKILL)
            option = InstanceOption(record["instance_type"], Market(record["market"]), record["price_per_hour"])
            out.append(ProviderInstance(id=instance_id, pool=pool, option=option,
                                        provider_state="shutting-down" if terminating else "running",
                                        launched_at=record["launched_at"]))
        return out

    def launch(self, pool: str, option: InstanceOption, count: int) -> list[str]:
        folder = self._dir(pool)
        folder.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Always set, so a SCANTIDE_WORKER_SLOTS in the environment cannot disagree with the pool.
        env = {**(os.environ if self.env is None else self.env), "SCANTIDE_WORKER_SLOTS": str(self.slots.get(pool, 1))}
        ids = []
        for _ in range(count):
            instance_id = f"local-{pool}-{uuid.uuid4().hex[:8]}"
            with open(self.log_dir / f"{instance_id}.log", "wb") as log_file:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "service.cli", "worker", "--queue", self.queues[pool],
                     "--worker-id", instance_id],
                    env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,  # survives an autoscaler restart, like an EC2 instance
                )
            self._children[instance_id] = proc
            record = {"pid": proc.pid, "instance_type": option.instance_type, "market": option.market.value,
                      "price_per_hour": option.price_per_hour, "launched_at": time.time()}
            _write_json(folder / f"{instance_id}.json", record)
            ids.append(instance_id)
            log.info("local_instance_launched pool=%s id=%s pid=%d", pool, instance_id, proc.pid)
        return ids

    def terminate(self, instance_ids: list[str]) -> None:
        """SIGTERM (the worker drains and exits); SIGKILL if it is still there ``kill_after_s`` later."""
        for path in self.root.glob("*/*.json") if self.root.exists() else []:
            if path.stem not in instance_ids:
                continue
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("terminating_at") is None:
                record["terminating_at"] = time.time()
                _write_json(path, record)
                self._signal(record["pid"], signal.SIGTERM)

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Terminate every local instance and wait for them (the embedded stack is stopping)."""
        ids = [p.stem for p in self.root.glob("*/*.json")] if self.root.exists() else []
        self.terminate(ids)
        deadline = time.monotonic() + timeout_s
        pools = [p.name for p in self.root.iterdir()] if self.root.exists() else []
        while time.monotonic() < deadline and any(self.list_instances(pool) for pool in pools):
            time.sleep(0.2)

    def _alive(self, instance_id: str, pid: int) -> bool:
        child = self._children.get(instance_id)
        if child is not None:
            if child.poll() is not None:
                del self._children[instance_id]
                return False
            return True
        # Not our child (we restarted): trust the pid only if it still runs this instance's worker.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return instance_id.encode() in cmdline

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _write_json(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)
