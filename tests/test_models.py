"""The model registry's use cases over the embedded store, enqueue pinning (the one enqueue path
and the Lambda runtime), and ``scantide models`` run as a real command on real weight files."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from algorithms.video_summary import DEFAULT_WEIGHTS
from lambda_enqueue.handler import Runtime
from service.backends.base import TaskBackend
from service.domain import ScanRequest
from service.enqueue import Enqueuer, submit_scan
from service.errors import InvalidModelFile, InvalidRequest, ModelVersionExists
from service.models import register_model
from service.settings import Settings
from service.supervisor import cli_argv, settings_env

ALGO = "video_summary"


def weights(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_register_stores_the_file_once_under_the_state_dir(settings: Settings, backend: TaskBackend,
                                                           tmp_path: Path) -> None:
    source = weights(tmp_path, "net.pt", b"weights one" * 1000)
    model, created = register_model(backend, settings, ALGO, "1", source, notes="first", by="ana")

    stored = settings.state_dir.resolve() / "models" / ALGO / "1" / "net.pt"
    assert created and model.uri == str(stored)
    assert stored.read_bytes() == source.read_bytes()
    assert (model.sha256, model.size) == (hashlib.sha256(source.read_bytes()).hexdigest(), 11000)
    assert (model.notes, model.registered_by, model.promoted) == ("first", "ana", False)

    again, created = register_model(backend, settings, ALGO, "1", source, by="ben")
    assert not created and again == model  # the same file again: nothing changes

    other = weights(tmp_path, "net.pt.new", b"weights two")
    with pytest.raises(ModelVersionExists) as info:
        register_model(backend, settings, ALGO, "1", other, by="ben")
    assert "new version" in info.value.message
    assert stored.read_bytes() == source.read_bytes()  # the registered file was not touched
    with pytest.raises(InvalidRequest):
        register_model(backend, settings, ALGO, "../1", source, by="ana")
    with pytest.raises(InvalidModelFile):
        register_model(backend, settings, ALGO, "2", tmp_path / "missing.pt", by="ana")
    assert [e.action for e in backend.model_history(ALGO)] == ["register"]


def test_enqueue_pins_the_promoted_version_and_queued_tasks_keep_theirs(
        settings: Settings, backend: TaskBackend, make_video, tmp_path: Path) -> None:
    make_video("scan.mp4", frames=12)
    for v in ("1", "2"):
        register_model(backend, settings, ALGO, v, weights(tmp_path, f"w{v}.pt", v.encode() * 64), by="ana")

    def submit(scan_id: str) -> dict:
        return submit_scan(backend, settings, ScanRequest(scan_id=scan_id, scan_uri="scan.mp4")).task.params

    assert submit("a")["model_version"] is None
    backend.promote_model(ALGO, "1", by="ana")
    assert submit("b")["model_version"] == "1"
    backend.promote_model(ALGO, "2", by="ana")
    pinned = submit("c")
    assert (pinned["model_version"], pinned["model_uri"]) == ("2", backend.model_version(ALGO, "2").uri)
    backend.rollback_model(ALGO, by="ana")
    assert submit("d")["model_version"] == "1"
    assert submit("c")["model_version"] == "2"  # a repeat returns the task as it was created
    assert [backend.tasks_for_scan(s)[0].params["model_version"] for s in "abcd"] == [None, "1", "2", "1"]

    # The Lambda runtime goes through the same enqueue path.
    runtime = Runtime(settings, backend, Enqueuer.from_settings(settings))
    body, created = runtime.submit(ScanRequest(scan_id="e", scan_uri="scan.mp4"))
    assert created and backend.get_task(body["task_id"]).params["model_version"] == "1"


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings_env(settings), "COLUMNS": "300"}  # one table row per line
    return subprocess.run(cli_argv("models", *args), env=env,
                          capture_output=True, text=True, check=False, timeout=180)


def test_cli_refuses_files_that_do_not_load(settings: Settings, backend: TaskBackend, tmp_path: Path) -> None:
    broken = weights(tmp_path, "broken.pt", b"\x00not a torch file" * 50)
    truncated = weights(tmp_path, "truncated.pt", DEFAULT_WEIGHTS.read_bytes()[:5000])
    for path in (broken, truncated):
        done = run_cli(settings, "register", str(path), "--algorithm", ALGO, "--version", "1")
        assert done.returncode == 4, done.stdout + done.stderr  # invalid
        assert "invalid_model" in done.stderr and str(path.name) in done.stderr
    assert backend.list_models() == [] and backend.model_history() == []
    assert not (settings.state_dir / "models").exists()

    unknown = run_cli(settings, "register", str(broken), "--algorithm", "no_such_algo", "--version", "1")
    assert unknown.returncode == 4 and "unknown_algorithm" in unknown.stderr


def test_cli_registers_promotes_rolls_back_and_lists(settings: Settings, backend: TaskBackend,
                                                     tmp_path: Path) -> None:
    first = run_cli(settings, "register", "--bundled", "--algorithm", ALGO, "--version", "1", "--promote",
                    "--notes", "bundled", "--by", "ana")
    assert first.returncode == 0, first.stderr
    again = run_cli(settings, "register", "--bundled", "--algorithm", ALGO, "--version", "1", "--promote")
    assert again.returncode == 0, again.stderr
    assert "already registered" in again.stdout and "already the promoted" in again.stdout

    copy = weights(tmp_path, "retrained.pt", DEFAULT_WEIGHTS.read_bytes())
    for args in (("register", str(copy), "-a", ALGO, "-v", "2", "--by", "ben"), ("promote", ALGO, "2", "--by", "ben"),
                 ("rollback", ALGO, "--by", "cy")):
        done = run_cli(settings, *args)
        assert done.returncode == 0, done.stderr
    assert "2 → 1" in done.stdout
    assert backend.promoted_model(ALGO).version == "1"
    assert backend.promoted_model(ALGO).sha256 == hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()

    listing = run_cli(settings, "list", ALGO)
    assert listing.returncode == 0, listing.stderr
    rows = [line for line in listing.stdout.splitlines() if ALGO in line]
    assert any("*" in r and " 1 " in r and "bundled" in r for r in rows), listing.stdout
    for action, move, by in (("register", "- → 1", "ana"), ("promote", "- → 1", "ana"), ("promote", "1 → 2", "ben"),
                             ("rollback", "2 → 1", "cy")):
        assert any(action in r and move in r and by in r for r in rows), (action, listing.stdout)

    nothing = run_cli(settings, "rollback", ALGO)
    assert nothing.returncode == 5 and "nothing_to_roll_back" in nothing.stderr  # conflict


def test_cli_says_what_to_install_when_torch_is_missing(settings: Settings, tmp_path: Path) -> None:
    """A control-plane install (the service image) has no torch: registration says how to get it."""
    blocker = tmp_path / "no-torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(blocker.parent)}
    done = subprocess.run(cli_argv("models", "register", "--bundled", "-a", ALGO, "-v", "1"), env=env,
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 7, done.stdout + done.stderr  # config
    assert "config_error" in done.stderr and "algorithms extra" in done.stderr and "torch" in done.stderr


def test_demo_registers_changed_bundled_weights_beside_an_older_version_1(
        settings: Settings, backend: TaskBackend, tmp_path: Path) -> None:
    """A state dir from before the bundled weights changed holds other weights as version 1: the
    demo registers the shipped ones under a new name and promotes them, so its tasks run them."""
    import torch
    from rich.console import Console

    from algorithms.video_summary.model import FrameQualityNet
    from service.demo import register_bundled_model

    torch.manual_seed(1)
    older = tmp_path / "older.pt"
    torch.save(FrameQualityNet().state_dict(), older)
    assert run_cli(settings, "register", str(older), "-a", ALGO, "-v", "1", "--promote").returncode == 0
    console = Console(record=True, width=200)
    register_bundled_model(settings, console, "ab12")
    promoted = backend.promoted_model(ALGO)
    assert promoted.version == "1-ab12"
    assert promoted.sha256 == hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    assert "holds earlier bundled weights" in console.export_text()
