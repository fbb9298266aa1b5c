"""What the chaos tests share: the enqueue load and what they check at the end."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict

import httpx

import scantide
from tests.monitor.receiver import Receiver

SCANS = int(os.environ.get("SCANTIDE_CHAOS_SCANS", "24"))


def start_load(client: scantide.Client, acked: dict[str, str]) -> threading.Thread:
    """Submit SCANS scans, one every 50 ms, recording each acknowledged one (scan id → task id)."""
    def load() -> None:
        for i in range(SCANS):
            task = client.submit(f"chaos-{i}", "scan.mp4", "frame_stats")
            acked[task.scan_id] = task.task_id
            time.sleep(0.05)

    loader = threading.Thread(target=load)
    loader.start()
    return loader


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def all_ended(client: scantide.Client, acked: dict[str, str]) -> dict | None:
    try:
        tasks = {scan: client.task(task_id) for scan, task_id in acked.items()}
    except scantide.ScantideError:
        return None
    return tasks if all(t.state in ("completed", "failed", "stopped") for t in tasks.values()) else None


def announced(receiver: Receiver, acked: dict[str, str]) -> dict[str, set[str]] | None:
    """Each scan's distinct completion event ids, once every scan has one."""
    ids: dict[str, set[str]] = defaultdict(set)
    for record in receiver.accepted():
        body = record.body or {}
        if body.get("type") in ("scan.completed", "scan.failed"):
            ids[body["data"]["scan_id"]].add(body["id"])
    return ids if set(acked) <= set(ids) else None
