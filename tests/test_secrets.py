"""Secrets (``SECRET_FIELDS``) are never printed or logged: not in a repr, a dump, an error, nor in
anything a real `scantide up` run with one scan writes or prints; children still get them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from service.demo_receiver import Receiver
from service.errors import ConfigError
from service.settings import SCOPES, SECRET_FIELDS, Settings, load_settings
from service.supervisor import cli_argv, settings_env
from service.synthetic import write_scan_video
from service.worker import task_env
from tests.conftest import free_port, wait_for

API_TOKEN = "tok-9c1e3f7a5b2d4e6f8a0b"
WEBHOOK_SECRET = "whsec-plain-4f1d9b7e2c5a8d3f6e0b"
CONTROL_PLANE_TOKEN = "cpt-7d2a9e4b1f6c3a8e5d0f"
SECRETS = (API_TOKEN, WEBHOOK_SECRET, CONTROL_PLANE_TOKEN)


def secret_settings(tmp_path: Path, **more) -> Settings:
    return load_settings(**{"state_dir": tmp_path / "state", "api_tokens": {API_TOKEN: list(SCOPES)},
                            "api_port": free_port(), "webhook_url": "http://127.0.0.1:9/hooks",
                            "webhook_secret": WEBHOOK_SECRET, "control_plane_url": "http://127.0.0.1:9",
                            "control_plane_token": CONTROL_PLANE_TOKEN, **more})


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} shows a secret"


def test_every_secret_setting_is_a_secret() -> None:
    assert SECRET_FIELDS == {"api_tokens", "webhook_secret", "control_plane_token"}


def test_a_repr_and_a_dump_mask_them_and_only_a_childs_environment_has_them(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    settings = secret_settings(tmp_path)
    for shown, where in ((repr(settings), "repr"), (str(settings), "str"), (settings.model_dump_json(), "JSON"),
                         (json.dumps(settings.model_dump(mode="json")), "dump")):
        assert_no_secret(shown, where)
    env = settings_env(settings)
    assert json.loads(env["SCANTIDE_API_TOKENS"]) == {API_TOKEN: list(SCOPES)}
    assert env["SCANTIDE_WEBHOOK_SECRET"] == WEBHOOK_SECRET
    assert env["SCANTIDE_CONTROL_PLANE_TOKEN"] == CONTROL_PLANE_TOKEN
    for name, value in env.items():  # the child's view: the same settings
        monkeypatch.setenv(name, value)
    child = load_settings()
    assert child.model_dump() == settings.model_dump()
    assert child.control_plane_token is not None and child.control_plane_token.get_secret_value() == CONTROL_PLANE_TOKEN


def test_a_task_process_gets_none_of_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in settings_env(secret_settings(tmp_path)).items():
        monkeypatch.setenv(name, value)
    assert_no_secret(json.dumps(task_env()), "a task's environment")


@pytest.mark.parametrize("overrides, named", [
    ({"api_tokens": {API_TOKEN: ["read", 5]}}, "api_tokens.<secret>.1: Input should be a valid string"),
    ({"api_tokens": {API_TOKEN: ["root"]}}, "api_tokens: unknown scopes ['root']"),
    ({"webhook_secret": "whsec_" + API_TOKEN}, "webhook_secret: a whsec_ secret"),
    ({"webhook_url": "http://127.0.0.1:9/hooks", "webhook_secret": API_TOKEN[:10]}, "webhook_secret must be set"),
    ({"compute_targets": {"cloud": {"control_plane_token": API_TOKEN}}},
     "compute_targets['cloud'] sets ['control_plane_token']: secrets are the deployment's own"),
], ids=["type in a token's scopes", "unknown scope", "bad whsec", "short secret", "a target's secret"])
def test_a_refusal_names_the_field_but_no_secret(tmp_path: Path, overrides: dict, named: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(state_dir=tmp_path, **overrides)
    assert named in refused.value.message
    assert API_TOKEN not in refused.value.message and API_TOKEN[:10] not in refused.value.message
    assert refused.value.__cause__ is None and refused.value.__context__ is None  # no quoting cause either


def test_an_unparsable_environment_value_is_a_config_error_without_it(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("SCANTIDE_API_TOKENS", f'{{"{API_TOKEN}": [')
    with pytest.raises(ConfigError, match="api_tokens") as refused:
        load_settings(state_dir=tmp_path)
    assert API_TOKEN not in refused.value.message


@pytest.mark.slow
def test_a_real_run_prints_and_logs_no_secret(tmp_path: Path) -> None:
    """`scantide up`, one scan to a signed webhook, a refused token, `scantide status` and `fleet`, the
    status API and page, then a grep of everything printed and every file under the state dir for each
    secret value."""
    with Receiver(WEBHOOK_SECRET) as receiver:
        settings = secret_settings(tmp_path, webhook_url=receiver.url, workers=1)
        assert settings.data_root is not None
        settings.data_root.mkdir(parents=True)
        write_scan_video(settings.data_root / "s1.mp4", frames=24, fps=24.0, size=(96, 72), seed=1)
        env = {**os.environ, **settings_env(settings), "SCANTIDE_LOG_LEVEL": "DEBUG"}
        env.pop("SCANTIDE_SUPERVISOR", None)
        up_log = tmp_path / "up.log"
        with open(up_log, "wb") as log:
            up = subprocess.Popen(cli_argv("up"), env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{settings.api_port}"
        try:
            wait_for(lambda: _healthy(base), timeout_s=60, what="the API")
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10) as http:
                assert http.post("/v1/scans", json={"scan_id": "s1", "scan_uri": "s1.mp4"}).status_code == 202
                wait_for(lambda: any(e["type"] == "scan.completed" for e, _ in receiver.events), timeout_s=120,
                         interval_s=0.3, what="scan.completed at the webhook")
                printed = [http.get(path).text for path in ("/v1/scans/s1", "/v1/status", "/status", "/metrics")]
            refused = httpx.get(f"{base}/v1/scans/s1", headers={"Authorization": f"Bearer {API_TOKEN}x"})
            assert refused.status_code == 401
            for command in (("status",), ("status", "--json"), ("fleet",)):
                done = subprocess.run(cli_argv(*command), env=env, capture_output=True, text=True, timeout=60)
                assert done.returncode == 0, done.stderr
                printed += [done.stdout, done.stderr]
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=90)
        assert all(valid for _, valid in receiver.events)  # signed with the secret, which reached the monitor
        printed.append(json.dumps([event for event, _ in receiver.events]))
    for number, text in enumerate(printed):
        assert_no_secret(text, f"output {number}")
    files = [up_log, *(p for p in (tmp_path / "state").rglob("*") if p.is_file())]
    assert len(files) > 5
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"{path} holds a secret"
    assert b"scan_id" in up_log.read_bytes() or b"s1" in up_log.read_bytes()  # the logs were there to read


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
