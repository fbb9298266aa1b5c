"""The pipeline part of ``scantide demo``: the example ``triage`` pipeline (``frame_stats`` on every
scan, ``video_summary`` only for scans its ``when`` lets through, ``scan_report`` of both) run on
the demo scans and on one short scan whose summary step is skipped."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from service.errors import ScantideError
from service.settings import Settings
from service.synthetic import write_scan_video

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TRIAGE = EXAMPLES / "pipelines" / "triage" / "scantide-pipeline.yaml"
REPORT = EXAMPLES / "algorithms" / "scan_report"


def register_triage(settings: Settings, console: Console) -> str | None:
    """Register ``scan_report`` and the ``triage`` pipeline (a re-run changes nothing); the
    pipeline's name, or None where the examples are not there or cannot register."""
    from service.algorithms import register_folder
    from service.backends import open_backend
    from service.pipelines.runs import register
    from service.pipelines.store import PipelineStore
    from service.pipelines.targets import targets_for
    from service.pipelines_cli import _read

    if not TRIAGE.is_file() or not REPORT.is_dir():
        return None
    backend = open_backend(settings)
    store = PipelineStore(settings.pipelines_db)
    try:
        register_folder(backend, settings, REPORT, by="scantide demo")
        version, created = register(store, targets_for(settings, backend), _read(TRIAGE), "scantide demo")
    except ScantideError as exc:
        console.print(f"[yellow]could not register the triage pipeline, going on without it: {exc.message}[/yellow]")
        return None
    finally:
        store.close()
        backend.close()
    steps = " → ".join(s["name"] for s in version.descriptor["steps"])
    console.print(f"pipeline {version.name} {version.version} ({steps}) {'registered' if created else 'already registered'}")
    return version.name


def short_scan(folder: Path, run_id: str) -> tuple[str, Path]:
    """A one-second scan: too short for the triage pipeline's summary step."""
    path = folder / f"short-{run_id[:4]}.mp4"
    write_scan_video(path, frames=24, fps=24.0, size=(320, 240), seed=7)
    return path.stem, path


def submit_runs(http: httpx.Client, pipeline: str, scans: list[tuple[str, str]], console: Console) -> list[str]:
    """``POST /v1/scans`` with ``pipeline`` for each (scan_id, scan_uri); the run ids."""
    run_ids = []
    for scan_id, uri in scans:
        r = http.post("/v1/scans", json={"scan_id": scan_id, "scan_uri": uri, "pipeline": pipeline,
                                         "metadata": {"source": "demo"}})
        r.raise_for_status()
        run_ids.append(r.json()["run_id"])
        console.print(f"POST /v1/scans {scan_id} pipeline {pipeline} → {r.status_code} run {r.json()['run_id']}")
    return run_ids


def wait_runs(http: httpx.Client, run_ids: list[str], timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        runs = [http.get(f"/v1/runs/{run_id}").json() for run_id in run_ids]
        if all(r["state"] in ("completed", "failed") for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def show_runs(console: Console, runs: list[dict]) -> None:
    table = Table(title="triage pipeline runs (examples/pipelines/triage)")
    for col in ("scan", "run", "state", "stats", "summary", "report"):
        table.add_column(col)
    for run in runs:
        cells = []
        for name in ("stats", "summary", "report"):
            step = run["steps"].get(name, {})
            note = ""
            if name == "stats" and step.get("result"):
                note = f" ({step['result'].get('duration_s')} s)"
            elif step.get("state") == "skipped":
                note = " (when: false)"
            elif name == "report" and step.get("result"):
                note = f" ({'with' if step['result'].get('analysed') else 'without'} summary)"
            cells.append(f"{step.get('state', '')}{note}")
        table.add_row(run["scan_id"], run["run_id"], run["state"], *cells)
    console.print(table)
