"""``scantide clearml register-template`` as a real subprocess against the wire-level ClearML
stand-in: the template a stock agent can run, its queue, updates that keep what operators set."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from service.backends.clearml_tasks import TEMPLATE_TAG
from service.supervisor import cli_argv
from tests.backends.conftest import clearml_backend, clearml_server  # noqa: F401 - the stand-in fixture
from tests.fakes.clearml_server import FakeClearMLServer

REPO = Path(__file__).resolve().parents[1]


def clearml_cli(server: FakeClearMLServer, tmp_path: Path, *args: str,
                backend: str = "clearml") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCANTIDE_", "CLEARML_"))}
    env.update(server.env(), CLEARML_CONFIG_FILE=str(tmp_path / "no-clearml.conf"), SCANTIDE_BACKEND=backend,
               SCANTIDE_CLEARML_PROJECT="scantide-tests", SCANTIDE_STATE_DIR=str(tmp_path / "state"),
               SCANTIDE_CONFIG=str(tmp_path / "absent.toml"), COLUMNS="250")
    return subprocess.run(cli_argv("clearml", *args), cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def register(server: FakeClearMLServer, tmp_path: Path, *args: str,
             backend: str = "clearml") -> subprocess.CompletedProcess[str]:
    return clearml_cli(server, tmp_path, "register-template", *args, backend=backend)


def template_doc(server: FakeClearMLServer) -> dict:
    (doc,) = [t for t in server.app.tasks.values() if TEMPLATE_TAG in t["tags"]]
    return doc


def test_register_template_makes_a_template_an_agent_can_run(clearml_server: FakeClearMLServer,  # noqa: F811
                                                              tmp_path: Path) -> None:
    out = register(clearml_server, tmp_path, "--algorithm", "video_summary", "--queue", "gpu-scans",
                   "--max-runtime", "900", "--param", "keyframes=4", "--image", "registry.example/scantide-worker:1")

    assert out.returncode == 0, out.stderr
    assert "template video_summary registered" in out.stdout and "'gpu-scans'" in out.stdout
    doc = template_doc(clearml_server)
    assert doc["script"] == {"binary": "python3", "entry_point": "-m algorithms.entry", "working_dir": "."}
    assert doc["container"] == {"image": "registry.example/scantide-worker:1"}
    assert "gpu-scans" in {q["name"] for q in clearml_server.app.queues.values()}
    backend = clearml_backend()
    template = backend.get_template("video_summary")
    assert (template.queue, template.max_runtime_s, template.params) == ("gpu-scans", 900.0,
                                                                         {"keyframes": 4})
    # every scan task is a clone: it carries the script and the image to the agent
    task = backend.submit("video_summary", "s-1", {"scan_id": "s-1", "scan_uri": "s3://b/s-1.mp4"}, "s3://b/out").task
    clone = clearml_server.app.tasks[task.task_id]
    assert (clone["script"], clone["container"]) == (doc["script"], doc["container"])
    backend.close()


def test_update_keeps_what_operators_set(clearml_server: FakeClearMLServer, tmp_path: Path) -> None:  # noqa: F811
    assert register(clearml_server, tmp_path, "--image", "img:1").returncode == 0
    doc = template_doc(clearml_server)
    doc["script"].update(repository="https://git.example/scantide.git", requirements={"pip": "scantide"})
    doc["container"]["arguments"] = "--ipc=host"

    out = register(clearml_server, tmp_path, "--queue", "q-two", "--commit", "abc123")

    assert out.returncode == 0, out.stderr
    after = template_doc(clearml_server)
    assert after["id"] == doc["id"]  # updated in place, not a second template
    assert after["script"] == {"binary": "python3", "entry_point": "-m algorithms.entry", "working_dir": ".",
                               "repository": "https://git.example/scantide.git", "version_num": "abc123",
                               "requirements": {"pip": "scantide"}}
    assert after["container"] == {"image": "img:1", "arguments": "--ipc=host"}
    assert clearml_backend().get_template("video_summary").queue == "q-two"


def test_refuses_without_the_clearml_backend(clearml_server: FakeClearMLServer, tmp_path: Path) -> None:  # noqa: F811
    out = register(clearml_server, tmp_path, backend="embedded")
    assert out.returncode == 7  # config
    assert "config_error" in out.stderr and "SCANTIDE_BACKEND=clearml" in out.stderr
    assert not clearml_server.app.tasks


def test_register_template_and_templates_print_json(clearml_server: FakeClearMLServer,  # noqa: F811
                                                    tmp_path: Path) -> None:
    out = register(clearml_server, tmp_path, "--queue", "gpu-scans", "--param", "keyframes=4", "--json")
    assert out.returncode == 0, out.stderr
    registered = json.loads(out.stdout)
    assert registered == {"name": "video_summary", "entry_point": "algorithms.entry", "queue": "gpu-scans",
                          "params": {"keyframes": 4}, "max_runtime_s": registered["max_runtime_s"]}
    listed = clearml_cli(clearml_server, tmp_path, "templates", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [registered]
