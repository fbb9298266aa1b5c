"""``scantide demo``: the whole embedded pipeline on synthetic scans, shown to a person.

Writes a few scan videos (a moving textured scene with a blurred stretch and an exposure
change), registers the algorithm's bundled weights as model version 1 and promotes it (through
``scantide models``, which checks the file in the algorithm; a re-run changes nothing), registers
the example algorithm ``frame_stats`` (a standalone script run as a command) from its folder and
the example ``triage`` pipeline (``service.demo_pipeline``), starts ``scantide up`` as a child
process, submits the scans over HTTP with the API token for both algorithms and the pipeline,
follows their progress and prints what each analysis and run found and the webhook events. True
only if every task and run completed.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import subprocess
import time
import uuid
from pathlib import Path

import httpx
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from service.backends import open_backend
from service.console import follow
from service.demo_pipeline import register_triage, short_scan, show_runs, submit_runs, wait_runs
from service.demo_receiver import Receiver, free_port
from service.domain import JobState, TaskInfo
from service.processes import terminate
from service.settings import Settings, with_local_token
from service.supervisor import cli_argv, settings_env
from service.synthetic import write_scan_video

log = logging.getLogger(__name__)

# (frames, blurred frames, badly exposed frames): each demo scan hides its defects elsewhere.
SCENARIOS = [(144, (40, 70), (100, 120)), (120, (10, 35), (80, 95)), (168, (110, 150), (20, 40))]


def wait_healthy(base_url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the API at {base_url} did not become healthy in {timeout_s:.0f} s")
        time.sleep(0.2)


def write_demo_scans(folder: Path, count: int, run_id: str) -> list[tuple[str, Path, dict]]:
    folder.mkdir(parents=True, exist_ok=True)
    scans = []
    for i in range(count):
        frames, blur, exposure = SCENARIOS[i % len(SCENARIOS)]
        path = folder / f"demo{i + 1}-{run_id[:4]}.mp4"
        info = write_scan_video(path, frames=frames, fps=24.0, size=(480, 360), blur=blur, exposure=exposure, seed=i)
        scans.append((path.stem, path, info))
    return scans


def run_demo(settings: Settings, console: Console, *, scans: int = 3, workers: int = 2,
             timeout_s: float = 600.0) -> bool:
    with Receiver("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()) as receiver:
        return _run(settings, console, receiver, scans, workers, timeout_s)


def _run(settings: Settings, console: Console, receiver: Receiver, scans: int, workers: int,
         timeout_s: float) -> bool:
    settings = with_local_token(settings).model_copy(update={
        "api_port": free_port(), "workers": workers, "webhook_url": receiver.url,
        "webhook_secret": SecretStr(receiver.secret)})
    token = next(iter(settings.api_tokens)).get_secret_value()
    base_url = f"http://{settings.api_host}:{settings.api_port}"
    run_id = uuid.uuid4().hex[:6]
    written = write_demo_scans(settings.data_root / "demo", scans, run_id)  # type: ignore[operator]
    console.print(f"[bold]scantide demo[/bold]: wrote {len(written)} synthetic scans to {settings.data_root}/demo")

    log_path = settings.state_dir / "logs" / f"demo-{run_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    register_bundled_model(settings, console, run_id)
    extra = register_example(settings, console)
    pipeline = register_triage(settings, console) if extra else None
    short = short_scan(settings.data_root / "demo", run_id) if pipeline else None  # type: ignore[operator]
    with open(log_path, "wb") as log_file:
        up = subprocess.Popen(cli_argv("up"), env={**os.environ, **settings_env(settings)}, stdout=log_file,
                              stderr=log_file, stdin=subprocess.DEVNULL)
        try:
            wait_healthy(base_url, 60.0)
            console.print(f"started the API on {base_url} and {workers} workers (log: {log_path})")
            task_ids: list[str] = []
            extra_ids: list[str] = []
            with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
                for scan_id, path, _ in written:
                    # Relative paths are resolved against the data root, as a platform would send them.
                    uri = str(path.relative_to(settings.data_root))  # type: ignore[arg-type]
                    r = http.post("/v1/scans", json={"scan_id": scan_id, "scan_uri": uri,
                                                     "metadata": {"source": "demo"}})
                    if r.status_code not in (200, 202):
                        console.print(f"[red]POST /v1/scans {scan_id} → {r.status_code}: {r.text}[/red]")
                        return False
                    task_ids.append(r.json()["task_id"])
                    console.print(f"POST /v1/scans {scan_id} → {r.status_code} task {r.json()['task_id'][:12]}")
                for scan_id, path, _ in written if extra else []:
                    r = http.post("/v1/scans", json={"scan_id": scan_id, "algorithm": extra,
                                                     "scan_uri": str(path.relative_to(settings.data_root)),  # type: ignore[arg-type]
                                                     "params": {"min_brightness": 60}})
                    if r.status_code not in (200, 202):
                        console.print(f"[red]POST /v1/scans {scan_id} ({extra}) → {r.status_code}: {r.text}[/red]")
                        return False
                    extra_ids.append(r.json()["task_id"])
                    console.print(f"POST /v1/scans {scan_id} algorithm {extra} → {r.status_code} task "
                                  f"{r.json()['task_id'][:12]}")
                run_ids = []
                if pipeline and short:
                    scans = [(scan_id, str(path.relative_to(settings.data_root)))  # type: ignore[arg-type]
                             for scan_id, path, _ in [*written, (short[0], short[1], {})]]
                    run_ids = submit_runs(http, pipeline, scans, console)
                backend = open_backend(settings)
                every = follow(task_ids + extra_ids, backend.get_task, console, timeout_s=timeout_s)
                final, extra_final = every[:len(task_ids)], every[len(task_ids):]
                runs = wait_runs(http, run_ids, timeout_s)
            _wait_events(receiver, len(every) + len(runs), timeout_s=15.0)
        finally:
            terminate(up, grace_s=90)
    _show_results(console, final, written)
    _show_frame_stats(console, extra_final)
    if runs:
        show_runs(console, runs)
    _show_events(console, receiver)
    ok = all(t.state is JobState.completed for t in final + extra_final) and \
        all(r["state"] == "completed" for r in runs)
    console.print("[green]every demo scan completed[/green]" if ok else "[red]some demo scans did not complete[/red]")
    return ok


DEMO_MODEL_VERSION = "1"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "algorithms" / "frame_stats"


def register_example(settings: Settings, console: Console) -> str | None:
    """Register the example ``frame_stats`` from its folder (a re-run changes nothing); its name, or
    None where the folder is not there (an installed package without the repository's examples)."""
    from service.algorithms import register_folder
    from service.errors import ScantideError

    if not EXAMPLE.is_dir():
        return None
    backend = open_backend(settings)
    try:
        version, created = register_folder(backend, settings, EXAMPLE, by="scantide demo")
    except ScantideError as exc:
        console.print(f"[yellow]could not register {EXAMPLE.name}, going on without it: {exc.message}[/yellow]")
        return None
    finally:
        backend.close()
    what = "registered" if created else "already registered"
    console.print(f"algorithm {version.name} {version.version} ({version.spec.runner}: "
                  f"{' '.join(version.spec.command)}) {what}")
    return version.name


def register_bundled_model(settings: Settings, console: Console, run_id: str) -> None:
    """``scantide models register --bundled … --promote`` in a child process (the CLI that loads the
    file in the algorithm lives above ``service``). When version 1 of this state dir holds other
    weights (made before the bundled ones changed) they are registered as ``1-<run_id>``
    instead, so the demo runs the weights it ships. On failure the demo goes on with the bundled
    weights and tasks show no model version."""
    done = _register_bundled(settings, DEMO_MODEL_VERSION)
    version = DEMO_MODEL_VERSION
    if done.returncode != 0 and "model_version_exists" in done.stderr:
        version = f"{DEMO_MODEL_VERSION}-{run_id}"
        console.print(f"[yellow]version {DEMO_MODEL_VERSION} in {settings.state_dir} holds earlier bundled weights; "
                      f"registering these as {version}[/yellow]")
        done = _register_bundled(settings, version)
    if done.returncode == 0:
        console.print(f"model {settings.default_algorithm} {version} (bundled weights) is promoted")
    else:
        console.print(f"[yellow]could not register the bundled model, going on without one: "
                      f"{(done.stderr or done.stdout).strip()[-500:]}[/yellow]")


def _register_bundled(settings: Settings, version: str) -> subprocess.CompletedProcess[str]:
    argv = cli_argv("models", "register", "--bundled", "--algorithm", settings.default_algorithm, "--version",
                    version, "--promote", "--notes", "weights bundled with the algorithm", "--by", "scantide demo")
    return subprocess.run(argv, env={**os.environ, **settings_env(settings)}, capture_output=True, text=True,
                          check=False, timeout=300)


def _show_frame_stats(console: Console, tasks: list[TaskInfo]) -> None:
    if not tasks:
        return
    table = Table(title="frame_stats (a command algorithm registered from examples/algorithms/frame_stats)")
    for col in ("scan", "state", "duration s", "fps", "size", "mean brightness", "seconds below 60"):
        table.add_column(col)
    for t in tasks:
        r = t.result or {}
        table.add_row(t.scan_id, t.state.value if not t.error else f"{t.state.value} ({t.error.code})",
                      str(r.get("duration_s", "")), str(r.get("fps", "")),
                      f"{r.get('width', '')}x{r.get('height', '')}" if r else "", str(r.get("mean_brightness", "")),
                      str(r.get("dark_seconds", "")))
    console.print(table)


OUTCOMES = ("scan.completed", "scan.failed", "pipeline.completed", "pipeline.failed")


def _wait_events(receiver: Receiver, outcomes: int, timeout_s: float) -> None:
    """Give the monitor time to post one completion/failure event per task and per pipeline run."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(e["type"] in OUTCOMES for e, _ in receiver.events) >= outcomes:
            return
        time.sleep(0.1)


def _show_events(console: Console, receiver: Receiver) -> None:
    table = Table(title=f"webhook events received at {receiver.url}")
    for col in ("event id", "type", "scan", "attempt / steps", "signature"):
        table.add_column(col)
    for event, valid in receiver.events:
        data = event["data"]
        detail = " ".join(f"{n}:{s['state']}" for n, s in data["steps"].items()) if "steps" in data \
            else str(data.get("attempt", ""))
        table.add_row(event["id"][:16], event["type"], data.get("scan_id", data.get("queue", "")), detail,
                      "[green]valid[/green]" if valid else "[red]INVALID[/red]")
    console.print(table)


def flagged_ranges(segments: list[dict], min_poor: float = 0.5) -> str:
    """Frame ranges of the segments where most frames are poor, adjacent ones merged."""
    ranges: list[list[int]] = []
    for seg in segments:
        if seg["poor_fraction"] < min_poor:
            continue
        if ranges and seg["start_frame"] == ranges[-1][1] + 1:
            ranges[-1][1] = seg["end_frame"]
        else:
            ranges.append([seg["start_frame"], seg["end_frame"]])
    return ", ".join(f"{a}-{b}" for a, b in ranges) or "none"


def _show_results(console: Console, tasks: list[TaskInfo], written: list[tuple[str, Path, dict]]) -> None:
    table = Table(title="results")
    for col in ("scan", "state", "model", "frames", "keyframes", "quality", "known defects", "flagged frames"):
        table.add_column(col)
    sheets = []
    for task, (_, _, info) in zip(tasks, written, strict=True):
        if task.state is not JobState.completed or not task.result:
            table.add_row(task.scan_id, task.state.value, str(task.params.get("model_version")), "", "", "", "",
                          task.error.code if task.error else "")
            continue
        out = Path(task.result["output_uri"])
        summary = json.loads((out / "summary.json").read_text())
        known = ", ".join(f"{name} {a}-{b - 1}" for name in ("blur", "exposure") if info.get(name)
                          for a, b in [info[name]])
        table.add_row(task.scan_id, task.state.value, str(task.params.get("model_version")), str(summary["frame_count"]), str(len(summary["keyframes"])),
                      f"{summary['quality']['score']:.2f}", known, flagged_ranges(summary["segments"]))
        sheets.append(out / summary["contact_sheet"])
    console.print(table)
    for sheet in sheets:
        console.print(f"contact sheet: {sheet}")
