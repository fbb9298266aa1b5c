"""Benchmark: cold import of the Lambda handler (``lambda_enqueue.handler``).

A Lambda cold start pays for the interpreter and for importing the handler module before the
first event is handled. Each run starts fresh interpreters (this venv's python, the repository
as working directory, no SCANTIDE_* variables): one that only starts (``python -c pass``, the
anchor) and one that times ``import lambda_enqueue.handler`` from inside (``time.perf_counter``
around the import, so the interpreter's own start-up is not counted twice). Runs alternate so
both see the same machine state; one unmeasured warm-up of each writes the bytecode caches first,
as a deployed package ships them. One more run with ``-X importtime`` attributes the time to the
handler's direct imports.

    python benchmarks/lambda_cold_import.py [--runs 10]

Prints a table, the ratio import p50 / start-up p50 and, last, one JSON object:
``import_ms_p50``, ``python_startup_ms_p50``, ``ratio``, ``modules_loaded`` (modules the import
added), ``heavy_modules`` (heavy packages it pulled in; must be ``[]``). Exits 1 if that list is
not empty.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODULE = "lambda_enqueue.handler"
# Packages the enqueue path must never load: the algorithm stack, cloud SDKs, the HTTP server.
HEAVY = ("torch", "cv2", "numpy", "boto3", "botocore", "s3transfer", "fastapi", "starlette", "uvicorn", "clearml",
         "httpx")

_PROBE = f"""
import json, sys, time
before = set(sys.modules)
t0 = time.perf_counter()
import {MODULE}
t1 = time.perf_counter()
added = set(sys.modules) - before
heavy = sorted({{name.split('.')[0] for name in added}} & set({HEAVY!r}))
print(json.dumps({{"import_ms": (t1 - t0) * 1000, "modules": len(added), "heavy": heavy}}))
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SCANTIDE_") and k != "PYTHONDONTWRITEBYTECODE"}


def _run(args: list[str]) -> tuple[float, str, str]:
    """Run the interpreter with ``args``; returns (wall ms, stdout, stderr)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    wall_ms = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)[:60]} failed:\n{proc.stderr[-2000:]}")
    return wall_ms, proc.stdout, proc.stderr


def direct_imports(importtime: str) -> list[tuple[str, float]]:
    """The handler's direct imports with their cumulative import time (ms), largest first."""
    rows: list[tuple[int, str, float]] = []
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|", 2)
        level = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((level, name.strip(), int(cumulative) / 1000))
    at = next(i for i, (_, name, _) in enumerate(rows) if name == MODULE)
    level = rows[at][0]
    children = []
    for child_level, name, ms in reversed(rows[:at]):  # children are listed before their parent
        if child_level <= level:
            break
        if child_level == level + 1:
            children.append((name, ms))
    return sorted(children, key=lambda r: -r[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="measured runs of each (default 10)")
    args = parser.parse_args(argv)

    _run(["-c", "pass"])  # warm-up: bytecode caches, page cache
    _run(["-c", _PROBE])
    startup_ms: list[float] = []
    import_ms: list[float] = []
    process_ms: list[float] = []
    probe: dict[str, Any] = {}
    for _ in range(args.runs):
        startup_ms.append(_run(["-c", "pass"])[0])
        wall, out, _ = _run(["-c", _PROBE])
        probe = json.loads(out)
        import_ms.append(probe["import_ms"])
        process_ms.append(wall)
    _, _, importtime = _run(["-X", "importtime", "-c", f"import {MODULE}"])

    def row(label: str, values: list[float]) -> str:
        return (f"{label:44}{statistics.median(values):>9.1f}{min(values):>9.1f}{max(values):>9.1f}")

    print(f"{sys.executable} ({sys.version.split()[0]}), {args.runs} runs each, fresh processes")
    print(f"{'':44}{'p50 ms':>9}{'min ms':>9}{'max ms':>9}")
    print(row("anchor: python -c pass (process wall)", startup_ms))
    print(row(f"import {MODULE} (in-process)", import_ms))
    print(row("python -c 'import …' (process wall)", process_ms))
    ratio = statistics.median(import_ms) / statistics.median(startup_ms)
    print(f"ratio import p50 / python start-up p50 = {ratio:.2f}")
    print(f"modules the import added: {probe['modules']}; heavy modules among them: {probe['heavy'] or 'none'}")
    print("direct imports of the handler, cumulative ms (-X importtime, one run):")
    for name, ms in direct_imports(importtime)[:8]:
        print(f"  {name:40}{ms:>8.1f}")
    summary = {
        "import_ms_p50": round(statistics.median(import_ms), 1),
        "python_startup_ms_p50": round(statistics.median(startup_ms), 1),
        "process_with_import_ms_p50": round(statistics.median(process_ms), 1),
        "ratio": round(ratio, 2),
        "modules_loaded": probe["modules"],
        "heavy_modules": probe["heavy"],
        "runs": args.runs,
    }
    print(json.dumps(summary))
    return 1 if probe["heavy"] else 0


if __name__ == "__main__":
    sys.exit(main())
