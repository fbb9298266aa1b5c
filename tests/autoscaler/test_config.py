"""The autoscaler's TOML: strict types, unknown keys refused, each problem named by field path and line."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from autoscaler.config import load_config, parse_config
from autoscaler.model import InstanceOption, PoolConfig
from service.errors import ConfigError
from service.exit_codes import ExitCode
from service.settings import load_settings
from service.supervisor import cli_argv
from service.toml_lines import dotted, key_lines, line_of

POOL = """\
tick_s = 15
provider = "local"

[[pools]]
name = "gpu"
queue = "default"
boot_timeout_s = 600
[[pools.options]]
instance_type = "g5.xlarge"
market = "on_demand"
price_per_hour = 1.01
[pools.warm_pool]
enabled = true
"""


def refusal(tmp_path: Path, text: str) -> str:
    path = tmp_path / "autoscaler.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_config(load_settings(state_dir=tmp_path, autoscaler_config=path))
    return refused.value.message.replace(f"{path}:", "autoscaler.toml:")


def test_a_string_where_a_number_belongs_is_refused_at_load_with_its_line(tmp_path: Path) -> None:
    assert refusal(tmp_path, POOL.replace("boot_timeout_s = 600", 'boot_timeout_s = "600"')) == (
        "autoscaler.toml:7: pools[0].boot_timeout_s: Input should be a valid number")


@pytest.mark.parametrize("old, new, expected", [
    ("price_per_hour = 1.01", 'price_per_hour = "1.01"',
     "autoscaler.toml:11: pools[0].options[0].price_per_hour: Input should be a valid number"),
    ('market = "on_demand"', 'market = "ondemand"',
     "autoscaler.toml:10: pools[0].options[0].market: Input should be 'spot' or 'on_demand'"),
    ("enabled = true", 'enabled = "true"', "autoscaler.toml:13: pools[0].warm_pool.enabled: Input should be a valid "
                                          "boolean"),
    ("boot_timeout_s = 600", "boot_timeout_s = inf", "autoscaler.toml:7: pools[0].boot_timeout_s: Input should be "
                                                     "a finite number"),
    ("boot_timeout_s = 600", "max_instances = true", "autoscaler.toml:7: pools[0].max_instances: Input should be a "
                                                     "valid integer"),
    ("tick_s = 15", "tick_s = 0", "autoscaler.toml:1: tick_s: Input should be greater than 0"),
    ('provider = "local"', 'provider = "gce"', "autoscaler.toml:2: provider: Input should be 'local' or 'ec2'"),
    ("boot_timeout_s = 600", "boot_timout_s = 600", "autoscaler.toml:7: pools[0].boot_timout_s: unknown key; known: "
                                                    "name, queue, options,"),
    ("enabled = true", "enabled = true\nsize = 3", "autoscaler.toml:14: pools[0].warm_pool.size: unknown key; known: "
                                                   "enabled, max_size, min_size"),
    ('market = "on_demand"', 'market = "spot"', "autoscaler.toml:12: pools[0].warm_pool: needs an on_demand option"),
    ('queue = "default"', 'queue = "q"', "autoscaler.toml:6: pools[0].queue: queue name 'q' is shorter than 3"),
    ("boot_timeout_s = 600", 'idle_policy = "never"', "autoscaler.toml:4: pools[0]: pool 'gpu': idle_policy must "
                                                      "be"),
], ids=["number", "enum", "boolean", "finite", "bool is no integer", "range", "literal", "unknown key",
        "unknown nested key", "warm pool needs on demand", "queue name", "dataclass check"])
def test_each_problem_names_its_field_and_line(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert refusal(tmp_path, POOL.replace(old, new)).startswith(expected)


def test_every_problem_is_reported_in_file_order_and_later_tables_count(tmp_path: Path) -> None:
    text = POOL + """
[[pools]]
name = "cpu"
queue = "cpu-scans"
[[pools.options]]
instance_type = "c7i.large"
[[pools.options]]
instance_type = "c7i.xlarge"
price_per_hour = "0.2"
lost_after_s = "120"
"""
    assert refusal(tmp_path, text) == (
        "autoscaler.toml:22: pools[1].options[1].price_per_hour: Input should be a valid number; "
        "autoscaler.toml:23: pools[1].options[1].lost_after_s: unknown key; known: instance_type, market, "
        "price_per_hour, subnet")


def test_numbers_load_as_the_runtime_dataclasses_with_their_own_defaults(tmp_path: Path) -> None:
    (pool,) = parse_config(tomllib.loads(POOL), load_settings(state_dir=tmp_path)).pools
    default = PoolConfig(name="gpu", queue="default", options=(InstanceOption("g5.xlarge"),))
    assert type(pool) is PoolConfig
    assert pool.boot_timeout_s == 600.0 and isinstance(pool.boot_timeout_s, float)  # an integer is a number
    assert pool.lost_after_s == default.lost_after_s and pool.resources == default.resources
    assert pool.warm_pool.enabled and pool.warm_pool.max_size == default.warm_pool.max_size


def test_the_ec2_table_is_checked_at_load(tmp_path: Path) -> None:
    text = POOL.replace('provider = "local"', 'provider = "ec2"') + """[pools.ec2]
region = "eu-west-1"
ami = "ami-0123456789abcdef0"
subnets = [
    "subnet-a",
]
security_group_ids = ["sg-1"]
instance_profile_name = "scantide-worker"
ssm_prefix = "/scantide/prod"
volume_size_gb = "100"
queue = "other"
"""
    assert refusal(tmp_path, text) == (
        "autoscaler.toml:23: pools[0].ec2.volume_size_gb: Input should be a valid integer; "
        "autoscaler.toml:24: pools[0].ec2.queue: set from the pool (its queue and resources.slots), not here")
    fine = text.replace('volume_size_gb = "100"\nqueue = "other"\n', 'endpoint_url = "http://127.0.0.1:5000"\n')
    config = parse_config(tomllib.loads(fine), load_settings(state_dir=tmp_path))
    assert config.provider_specs["gpu"]["endpoint_url"] == "http://127.0.0.1:5000"
    local = fine.replace('provider = "ec2"', 'provider = "local"')
    assert refusal(tmp_path, local) == 'autoscaler.toml:14: pools[0].ec2: read only with provider = "ec2"'


def test_the_autoscaler_command_refuses_the_file_before_its_first_tick(tmp_path: Path) -> None:
    path = tmp_path / "autoscaler.toml"
    path.write_text(POOL.replace("boot_timeout_s = 600", 'boot_timeout_s = "600"'))
    env = {**os.environ, "SCANTIDE_STATE_DIR": str(tmp_path / "state"), "SCANTIDE_AUTOSCALER_CONFIG": str(path)}
    done = subprocess.run(cli_argv("autoscaler", "--once"), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == ExitCode.CONFIG
    assert f"{path}:7: pools[0].boot_timeout_s: Input should be a valid number" in done.stderr


def test_key_lines_reads_headers_keys_and_skips_multi_line_values() -> None:
    text = """\
top = 1  # a comment
"quoted key" = "x"
[a]
b.c = { d = 1, e = [1,
  2] }
s = '''
[not.a.header]
fake = 1
'''
[[t]]
[t.u]
v = [
  "[x]",
]
[[t]]
w = 2
"""
    lines = key_lines(text)
    assert lines[("top",)] == 1 and lines[("quoted key",)] == 2 and lines[("a", "b", "c")] == 4
    assert ("not", "a") not in lines and ("a", "fake") not in lines and lines[("a", "s")] == 6
    assert lines[("t", 0, "u", "v")] == 12 and lines[("t", 1)] == 15 and lines[("t", 1, "w")] == 16
    assert ("x",) not in lines
    assert line_of(lines, ("a", "b", "c", "d")) == 4  # inside an inline table: the table's key
    assert line_of(lines, ("nowhere",)) is None
    assert dotted(("t", 1, "u", "v")) == "t[1].u.v"
