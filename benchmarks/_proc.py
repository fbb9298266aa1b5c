"""What the benchmarks share about processes: the fastest uvicorn parts installed, CPU time from
/proc, free loopback ports, waiting for a started API and stopping a child cleanly."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"
LOOP = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
HTTP = "httptools" if importlib.util.find_spec("httptools") else "h11"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, every thread) a process has used; None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_cores_s() -> float | None:
    """CPU seconds every process on the machine has used (from /proc/stat); None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen, timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdin:
        proc.stdin.close()


def wait_healthy(url: str, up: subprocess.Popen | None = None, timeout_s: float = 60.0) -> None:
    """Until ``url``'s /healthz answers 200; exits when ``up`` (the process serving it) dies first."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if up is not None and up.poll() is not None:
            raise SystemExit(f"scantide up exited ({up.returncode}) before the API at {url} came up")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the API at {url} did not come up in {timeout_s:.0f} s")
