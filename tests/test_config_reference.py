"""docs/configuration.md is generated from the settings and autoscaler models, and kept current."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from autoscaler.config import FileSpec, parse_config
from autoscaler.config_reference import render
from service.settings import ENV_PREFIX, SECRET_FIELDS, Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "configuration.md"
REGENERATE = "python -m autoscaler.config_reference > docs/configuration.md"


@pytest.fixture(scope="module")
def page() -> str:
    return render()


def rows(page: str) -> list[list[str]]:
    """Every table row's cells, header and rule lines left out."""
    found = []
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| `"):
            found.append(cells)
    return found


def test_the_committed_reference_is_current(page: str) -> None:
    assert PAGE.read_text() == page, f"docs/configuration.md is stale: run `{REGENERATE}`"


def test_the_script_prints_it() -> None:
    out = subprocess.run([sys.executable, "-m", "autoscaler.config_reference"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == PAGE.read_text()


def test_every_setting_is_listed_with_a_description(page: str) -> None:
    listed = {cells[0].strip("`"): cells for cells in rows(page) if cells[0].startswith(f"`{ENV_PREFIX}")}
    assert set(listed) == {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert all(cells[3] for cells in listed.values()), [name for name, cells in listed.items() if not cells[3]]
    for name in SECRET_FIELDS:
        assert "secret" in listed[f"{ENV_PREFIX}{name.upper()}"][1]
    assert listed["SCANTIDE_API_PORT"][1:3] == ["integer from 1 to 65535", "`8700`"]
    assert listed["SCANTIDE_LEASE_S"][1:3] == ["number > 0", "`30`"]
    assert listed["SCANTIDE_DATA_ROOT"][3].endswith("default \\<state_dir>/data.")  # no HTML tag in Markdown


def test_every_autoscaler_key_is_listed_with_a_description(page: str) -> None:
    section = page.split("## Autoscaler pools", 1)[1]
    keys = {cells[0].strip("`") for cells in rows(section)}
    assert set(FileSpec.model_fields) <= keys and {"boot_timeout_s", "instance_type", "max_size", "slot_profile",
                                                    "ami", "endpoint_url"} <= keys
    undescribed = [cells[0] for cells in rows(section) if not cells[3]]
    assert not undescribed, f"give these fields a docstring: {undescribed}"
    for header in ("`[[pools]]`", "`[[pools.options]]`", "`[pools.warm_pool]`", "`[pools.resources]`",
                   "`[pools.ec2]`"):
        assert f"### {header}" in section


def test_the_defaults_listed_are_the_ones_a_minimal_file_loads_with(page: str, tmp_path: Path) -> None:
    minimal = '[[pools]]\nname = "gpu"\nqueue = "scans"\n[[pools.options]]\ninstance_type = "g5.xlarge"\n'
    (pool,) = parse_config(tomllib.loads(minimal), load_settings(state_dir=tmp_path)).pools
    pools = page.split("### `[[pools]]`", 1)[1].split("###", 1)[0]
    listed = {cells[0].strip("`"): cells[2].strip("`") for cells in rows(pools)}
    for key in ("boot_timeout_s", "lost_after_s", "max_instances", "idle_timeout_s", "idle_policy"):
        value = getattr(pool, key)
        assert listed[key] == (str(value).removesuffix(".0") if not isinstance(value, str) else value), key
