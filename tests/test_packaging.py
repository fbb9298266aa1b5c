"""Static checks of the container images and the deployment guide.

No Docker engine runs here, so the Dockerfile is parsed and everything it names is checked
against the code: its stages, the paths it copies, the modules, handler and ``scantide``
commands it runs, the extras it installs and the torch pin. ``docs/deploy.md`` is held to the
code the same way: its commands are registered, its ``SCANTIDE_*`` names are settings, its
autoscaler example loads, its IAM policies are the files under ``docs/iam/``. No network.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import typer

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "docs" / "deploy.md"
IAM_DIR = ROOT / "docs" / "iam"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

STAGES = {"service": "python:3.11-slim", "worker": "nvidia/cuda:", "lambda": "public.ecr.aws/lambda/python:3.11"}
TORCH_PIN = "torch==2.13.0"
IAM_FILES = ("autoscaler.json", "lambda.json", "worker-instance-role.json")


# -- the Dockerfile, parsed ------------------------------------------------------------------------
@dataclass(frozen=True)
class Instruction:
    stage: str | None  # the stage's name (AS …), None before the first FROM
    keyword: str  # upper case: FROM, RUN, COPY …
    args: str  # continuation lines joined

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD / ENTRYPOINT, else None."""
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) else None


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[str]]:
    """Instructions (continuations joined, comment lines inside them dropped) and the comments."""
    instructions: list[Instruction] = []
    comments: list[str] = []
    stage: str | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            comments.append(line)
            continue
        if not line and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical, pending = (pending + line).strip(), ""
        if not logical:
            continue
        keyword, _, args = logical.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            stage = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
        instructions.append(Instruction(stage, keyword, args))
    assert not pending, "the Dockerfile ends inside a continuation line"
    return instructions, comments


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[Instruction], list[str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def in_stage(instructions: list[Instruction], stage: str, keyword: str) -> list[Instruction]:
    return [i for i in instructions if i.stage == stage and i.keyword == keyword]


def pip_installs(instructions: list[Instruction]) -> list[Instruction]:
    return [i for i in instructions if i.keyword == "RUN" and re.search(r"\bpip (install|wheel)\b", i.args)]


# -- the CLI, with its plugins -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_group() -> Any:
    """The ``scantide`` command tree as ``main`` builds it, without touching the module's app.
    (Typer's own command classes: recent Typer vendors click, so they are not ``click.Group``.)"""
    from service import cli

    probe = copy.copy(cli.app)
    probe.registered_commands = list(cli.app.registered_commands)
    probe.registered_groups = list(cli.app.registered_groups)
    cli.load_plugins(probe)
    group = typer.main.get_command(probe)
    assert is_group(group)
    return group


def is_group(cmd: Any) -> bool:
    return isinstance(getattr(cmd, "commands", None), dict)


def command_problem(group: Any, words: tuple[str, ...]) -> str | None:
    """Why ``scantide <words…>`` is not a registered command, or None when it is."""
    cmd = group.commands.get(words[0])
    if cmd is None:
        return f"`scantide {words[0]}` is not a command; known: {sorted(group.commands)}"
    if is_group(cmd):
        if len(words) < 2:
            return f"`scantide {words[0]}` needs a subcommand: {sorted(cmd.commands)}"
        if words[1] not in cmd.commands:
            return f"`scantide {words[0]} {words[1]}` is not a command; known: {sorted(cmd.commands)}"
    return None


_COMMAND_AT = re.compile(r"(?<![\w/.:$-])scantide\s+([a-z][\w-]*(?:\|[a-z][\w-]*)*)(?:[ \t]+([a-z][\w-]*))?")
_IMAGE_COMMAND = re.compile(r"scantide-service(?::[\w.-]+)?\s+([a-z][\w-]*)")


def commands_in(text: str) -> set[tuple[str, ...]]:
    """``scantide <command> [<subcommand>]`` and ``scantide-service[:tag] <command>`` in ``text``
    (``a|b|c`` names several commands)."""
    found: set[tuple[str, ...]] = set()
    for m in _COMMAND_AT.finditer(text):
        for first in m.group(1).split("|"):
            found.add((first, m.group(2)) if m.group(2) and "|" not in m.group(1) else (first,))
    for m in _IMAGE_COMMAND.finditer(text):
        found.add((m.group(1),))
    return found


def normalise(words: tuple[str, ...], group: Any) -> tuple[str, ...]:
    """Drop a second word that is an argument of a plain command (``worker --queue`` has none)."""
    cmd = group.commands.get(words[0])
    return words if is_group(cmd) else words[:1]


# -- Dockerfile: stages, bases, files ------------------------------------------------------------------
def test_every_stage_exists_on_its_base(dockerfile):
    instructions, _ = dockerfile
    bases = {i.stage: i.args.split()[0] for i in instructions if i.keyword == "FROM" and i.stage}
    for stage, base in STAGES.items():
        assert stage in bases, f"no `FROM … AS {stage}` stage; stages: {sorted(bases)}"
        assert bases[stage].startswith(base), f"stage {stage} is built on {bases[stage]}, expected {base}…"
    assert "runtime" in bases["worker"], "the worker needs a CUDA runtime image, not devel or base"


def test_every_copy_source_exists_and_is_in_the_build_context(dockerfile):
    instructions, _ = dockerfile
    ignored = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    copies = [i for i in instructions if i.keyword in ("COPY", "ADD")]
    assert copies
    for inst in copies:
        words = shlex.split(inst.args)
        if any(w.startswith("--from=") for w in words):
            continue  # copied from another stage, not from the repository
        sources = [w for w in words if not w.startswith("--")][:-1]
        assert sources, f"{inst.keyword} {inst.args}: no source"
        for src in sources:
            path = ROOT / src
            assert path.exists(), f"{inst.keyword} source {src!r} does not exist in the repository"
            rel = src.rstrip("/")
            if rel != ".":
                hits = [p for p in ignored if fnmatch(rel, p.rstrip("/"))]
                assert not hits, f"{src!r} is copied but .dockerignore excludes it ({hits})"


def test_dockerignore_keeps_local_state_tests_and_caches_out():
    patterns = {p.strip().rstrip("/") for p in DOCKERIGNORE.read_text().splitlines()
                if p.strip() and not p.startswith("#")}
    for needed in (".venv", ".scantide", "tests", ".pytest_cache", "*.egg-info"):
        assert needed in patterns, f".dockerignore must exclude {needed}"
    assert any("__pycache__" in p for p in patterns), ".dockerignore must exclude __pycache__"
    # The wheel build needs these: none may be excluded.
    for kept in ("pyproject.toml", "README.md", *(p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]
                                                  ["packages"]["find"]["include"])):
        assert not any(fnmatch(kept, p) for p in patterns), f".dockerignore excludes {kept}, which the build needs"


def test_service_and_worker_run_as_a_non_root_user(dockerfile):
    instructions, _ = dockerfile
    for stage in ("service", "worker"):
        users = [i.args for i in in_stage(instructions, stage, "USER")]
        assert users, f"stage {stage} has no USER"
        assert users[-1] not in ("root", "0"), f"stage {stage} runs as {users[-1]}"


def test_no_secret_is_baked_into_an_image(dockerfile):
    instructions, _ = dockerfile
    for inst in instructions:
        if inst.keyword not in ("ENV", "ARG", "LABEL"):
            continue
        names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", inst.args) or inst.args.split()[:1]
        for name in names:
            assert not re.search(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY|API_KEY", name, re.I), \
                f"{inst.keyword} {name} in stage {inst.stage}: secrets come from the environment at run time"


def test_the_service_image_listens_on_every_interface_at_the_default_port(dockerfile):
    from service.settings import Settings

    instructions, _ = dockerfile
    env = " ".join(i.args for i in in_stage(instructions, "service", "ENV"))
    assert "SCANTIDE_API_HOST=0.0.0.0" in env
    exposed = [i.args for i in in_stage(instructions, "service", "EXPOSE")]
    assert exposed == [str(Settings.model_fields["api_port"].default)]


# -- Dockerfile: what it runs ---------------------------------------------------------------------------
def test_the_lambda_handler_is_importable_and_callable(dockerfile):
    instructions, _ = dockerfile
    cmds = in_stage(instructions, "lambda", "CMD")
    assert cmds, "the lambda stage has no CMD"
    handler = cmds[-1].exec_form()
    assert handler == ["lambda_enqueue.handler.handler"], handler
    module_name, _, attr = handler[0].rpartition(".")
    assert callable(getattr(importlib.import_module(module_name), attr))


def test_the_lambda_copies_the_packages_its_handler_imports(dockerfile):
    instructions, _ = dockerfile
    sources = {shlex.split(i.args)[0].rstrip("/") for i in in_stage(instructions, "lambda", "COPY")}
    assert {"service", "lambda_enqueue"} <= sources, sources
    for inst in in_stage(instructions, "lambda", "COPY"):
        assert "${LAMBDA_TASK_ROOT}" in inst.args, f"COPY {inst.args}: Lambda imports from ${{LAMBDA_TASK_ROOT}}"


def test_the_service_entrypoint_is_the_console_script(dockerfile):
    instructions, _ = dockerfile
    entry = in_stage(instructions, "service", "ENTRYPOINT")
    assert entry and entry[-1].exec_form() == ["scantide"]
    target = PYPROJECT["project"]["scripts"]["scantide"]
    module_name, _, attr = target.partition(":")
    assert (module_name, attr) == ("service.cli", "main")
    assert callable(getattr(importlib.import_module(module_name), attr))


def test_the_worker_runs_clearml_agent_on_its_queue(dockerfile):
    instructions, _ = dockerfile
    cmd = " ".join(in_stage(instructions, "worker", "CMD")[-1].exec_form() or [])
    assert "clearml-agent daemon" in cmd and "--queue" in cmd and "--foreground" in cmd, cmd


def test_every_scantide_command_the_dockerfile_names_is_registered(dockerfile, cli_group):
    instructions, comments = dockerfile
    named = commands_in("\n".join([*comments, *(i.args for i in instructions if i.keyword in ("RUN", "CMD"))]))
    for stage in {i.stage for i in instructions}:
        entry = in_stage(instructions, stage, "ENTRYPOINT")
        cmd = in_stage(instructions, stage, "CMD")
        if entry and entry[-1].exec_form() == ["scantide"] and cmd:
            args = [a for a in cmd[-1].exec_form() or [] if not a.startswith("-")]
            if args:
                named.add(tuple(args[:2]))
    assert {("api",), ("monitor",), ("conductor",), ("autoscaler",)} <= named, f"the daemons' commands are not documented: {named}"
    for words in sorted(named):
        problem = command_problem(cli_group, normalise(words, cli_group))
        assert problem is None, problem


def test_the_console_entry_points_exist():
    for name, target in PYPROJECT["project"]["entry-points"]["scantide.cli"].items():
        module_name, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module_name), attr)), f"entry point {name}: {target}"


# -- Dockerfile: what it installs -------------------------------------------------------------------------
def test_torch_is_pinned_wherever_it_is_installed(dockerfile):
    instructions, _ = dockerfile
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert TORCH_PIN in extras["algorithms"], "pyproject's [algorithms] must pin torch"
    for group, reqs in [("dependencies", PYPROJECT["project"]["dependencies"]), *extras.items()]:
        for req in reqs:
            if re.match(r"torch\b(?![-\w])", req):
                assert req == TORCH_PIN, f"{group}: {req!r}, expected {TORCH_PIN}"
    installed = []
    for inst in pip_installs(instructions):
        for m in re.finditer(r"(?<![\w./-])torch(?![\w-])([^\s\"']*)", inst.args):
            installed.append((inst.stage, "torch" + m.group(1)))
            assert "torch" + m.group(1) == TORCH_PIN, f"stage {inst.stage} installs {'torch' + m.group(1)!r}"
            assert "download.pytorch.org/whl/cu" in inst.args, "torch comes from the PyTorch CUDA index"
    assert [s for s, _ in installed] == ["worker"], f"torch is installed in exactly the worker: {installed}"


def test_the_extras_installed_exist_and_fit_each_image(dockerfile):
    instructions, _ = dockerfile
    known = set(PYPROJECT["project"]["optional-dependencies"])
    by_stage: dict[str, set[str]] = {}
    for inst in pip_installs(instructions):
        for m in re.finditer(r"\[([a-z][\w-]*(?:,[a-z][\w-]*)*)\]", inst.args):
            named = set(m.group(1).split(","))
            assert named <= known, f"stage {inst.stage} installs unknown extras {sorted(named - known)}"
            by_stage.setdefault(inst.stage, set()).update(named)
    assert by_stage.get("service") == {"aws", "clearml"}, by_stage
    assert by_stage.get("worker") == {"algorithms", "aws", "clearml"}, by_stage
    assert "lambda" not in by_stage, "the Lambda installs its few requirements by name, not extras"


def test_the_lambda_installs_only_light_requirements_pinned_as_in_pyproject(dockerfile):
    instructions, _ = dockerfile
    project = PYPROJECT["project"]
    extras = [r for reqs in project["optional-dependencies"].values() for r in reqs]
    declared = {requirement_name(r): r for r in [*project["dependencies"], *extras]}
    installs = [i for i in pip_installs(instructions) if i.stage == "lambda"]
    assert installs, "the lambda stage installs nothing"
    reqs = [w for i in installs for w in shlex.split(i.args) if re.match(r"^[A-Za-z][\w.-]*[<>=!~]", w)]
    names = {requirement_name(r) for r in reqs}
    assert {"pydantic", "pydantic-settings", "clearml"} <= names, reqs
    assert not names & {"torch", "opencv-python-headless", "numpy", "fastapi", "uvicorn", "boto3"}, reqs
    for req in reqs:
        name = requirement_name(req)
        assert declared.get(name) == req, f"lambda installs {req!r}; pyproject says {declared.get(name)!r}"


def requirement_name(req: str) -> str:
    return re.split(r"[<>=!~\[;]", req, maxsplit=1)[0].strip().lower()


def test_user_data_ships_as_package_data():
    from autoscaler.providers import ec2_spec

    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]
    assert "providers/user_data.sh" in package_data.get("autoscaler", []), package_data
    script = ROOT / "autoscaler" / "providers" / "user_data.sh"
    assert script.is_file()
    assert ec2_spec.USER_DATA_TEMPLATE.resolve() == script.resolve()


# -- docs/deploy.md ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deploy_md() -> str:
    return DEPLOY.read_text()


def fenced_blocks(text: str, lang: str | None = None) -> list[str]:
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)
            if lang is None or m.group(1) == lang]


def autoscaler_examples(text: str) -> list[dict[str, Any]]:
    """The ``toml`` blocks in ``text`` that are complete autoscaler configs (they have ``pools``)."""
    return [e for e in (tomllib.loads(b) for b in fenced_blocks(text, "toml")) if "pools" in e]


def inline_code(text: str) -> list[str]:
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", prose)


def doc_commands(text: str) -> set[tuple[str, ...]]:
    return commands_in("\n".join([*fenced_blocks(text), *inline_code(text)]))


def test_the_guide_names_registered_commands_only(deploy_md, cli_group):
    named = {normalise(w, cli_group) if w[0] in cli_group.commands else w for w in doc_commands(deploy_md)}
    assert ("events", "retry-dead") in named and ("autoscaler",) in named
    for words in sorted(named):
        problem = command_problem(cli_group, words)
        assert problem is None, f"docs/deploy.md: {problem}"


@pytest.mark.parametrize("path", [DOCKERFILE, DEPLOY], ids=lambda p: p.name)
def test_every_scantide_variable_named_is_a_setting(path):
    from service.settings import CONFIG_ENV, ENV_PREFIX, Settings

    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {CONFIG_ENV}
    named = {n.rstrip("_") for n in re.findall(r"\bSCANTIDE_[A-Z0-9_]+", path.read_text())}
    assert named, f"{path.name} names no settings"
    assert named <= known, f"{path.name} names settings that do not exist: {sorted(named - known)}"


def test_every_repository_path_the_guide_names_exists(deploy_md):
    top = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for token in inline_code(deploy_md):
        if re.fullmatch(r"[\w.-]+(?:/[\w.*-]+)+/?", token) and token.split("/")[0] in top:
            assert list(ROOT.glob(token.rstrip("/"))), f"docs/deploy.md names {token}, which does not exist"


def test_the_autoscaler_pages_example_loads_into_an_ec2_provider():
    from autoscaler.config import parse_config
    from autoscaler.providers.ec2 import from_config
    from service.settings import Settings

    page = (ROOT / "docs" / "autoscaler.md").read_text()
    (example,) = autoscaler_examples(page)
    config = parse_config(example, Settings(), source="docs/autoscaler.md")
    assert config.provider == "ec2" and config.pools[0].warm_pool.enabled
    from_config(config, Settings())  # builds the launch specs and renders the user data


def test_the_guides_autoscaler_example_loads_into_an_ec2_provider(deploy_md):
    from autoscaler.config import parse_config
    from autoscaler.providers.ec2 import from_config
    from service.settings import Settings

    examples = autoscaler_examples(deploy_md)
    assert len(examples) == 1, "expected one complete autoscaler example"
    config = parse_config(examples[0], Settings(), source="docs/deploy.md")
    assert config.provider == "ec2"
    (pool,) = config.pools
    markets = [o.market.value for o in pool.options]
    assert markets[0] == "spot" and "on_demand" in markets, markets
    assert pool.warm_pool.enabled and pool.max_cost_per_hour
    provider = from_config(config, Settings())  # builds the launch specs and renders the user data
    spec = provider.specs[pool.name]
    assert len(spec.subnets) == 2
    assert "CLEARML_API_HOST" in provider._user_data[pool.name]


def test_the_guide_shows_the_iam_policies_as_they_are_in_docs_iam(deploy_md):
    shown = [json.loads(b) for b in fenced_blocks(deploy_md, "json")]
    files = sorted(IAM_DIR.glob("*.json"))
    assert {f.name for f in files} >= set(IAM_FILES)
    policies = [json.loads(path.read_text()) for path in files]
    for path, policy in zip(files, policies, strict=True):
        assert policy.get("Version") == "2012-10-17" and policy.get("Statement"), path.name
        assert policy in shown, f"docs/deploy.md does not show docs/iam/{path.name} as it is"
        assert f"docs/iam/{path.name}" in deploy_md
    for block in shown:
        if "Statement" in block:
            assert block in policies, "a policy in the guide has no file"


def _statements(name: str) -> list[dict]:
    return json.loads((IAM_DIR / name).read_text())["Statement"]


def _actions(stmt: dict) -> set[str]:
    actions = stmt["Action"]
    return {actions} if isinstance(actions, str) else set(actions)


def test_the_autoscaler_policy_is_scoped_to_managed_instances():
    from autoscaler.providers.ec2 import TAG_MANAGED, TAG_POOL

    statements = _statements("autoscaler.json")
    for stmt in statements:
        assert stmt["Effect"] == "Allow" and "*" not in _actions(stmt)
        acts = _actions(stmt)
        if acts & {"ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances"}:
            assert stmt["Condition"]["StringEquals"][f"ec2:ResourceTag/{TAG_MANAGED}"] == "true"
        if acts == {"ec2:CreateTags"}:
            assert stmt["Condition"]["StringEquals"]["ec2:CreateAction"] == "RunInstances"
        if acts == {"iam:PassRole"}:
            assert isinstance(stmt["Resource"], str) and ":role/" in stmt["Resource"]
        if stmt["Resource"] == "*":
            assert acts <= {"ec2:DescribeInstances"}, f"{stmt['Sid']}: only Describe may use Resource *"
    tagged = [s for s in statements if _actions(s) == {"ec2:RunInstances"} and "Condition" in s]
    resources = {s["Resource"].rsplit(":", 1)[1] for s in tagged}
    assert {"instance/*", "volume/*"} <= resources, resources
    for stmt in tagged:
        assert stmt["Condition"]["StringEquals"][f"aws:RequestTag/{TAG_MANAGED}"] == "true"
    assert any(f"aws:RequestTag/{TAG_POOL}" in s["Condition"].get("Null", {}) for s in tagged)
    granted = set().union(*(_actions(s) for s in statements))
    # Exactly the calls autoscaler/providers/ec2_client.py makes, plus tagging and passing the role.
    assert granted == {"ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances", "ec2:StopInstances",
                       "ec2:StartInstances", "ec2:DescribeInstances", "iam:PassRole"}, granted


def test_the_worker_role_reads_its_ssm_prefix_and_has_no_ec2_rights():
    statements = _statements("worker-instance-role.json")
    granted = set().union(*(_actions(s) for s in statements))
    assert not any(a.startswith("ec2:") for a in granted), granted
    for stmt in statements:
        if _actions(stmt) & {"ssm:GetParameter", "ssm:GetParameters"}:
            assert re.fullmatch(r"arn:aws:ssm:[^:]+:[^:]+:parameter(/[\w.-]+)+/\*", stmt["Resource"]), stmt
        if "kms:Decrypt" in _actions(stmt):
            assert "kms:ViaService" in stmt["Condition"]["StringEquals"]
    assert {"s3:GetObject", "s3:PutObject"} <= granted
