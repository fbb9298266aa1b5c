"""The layers of docs/architecture.md#layers hold: every import statement of ours (at the top of a
module or inside a function) points down."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each package → the packages of ours it may import (besides itself).
MAY_IMPORT = {
    "scantide": set(),
    "service": {"scantide"},
    "algorithms": {"service", "scantide"},
    "lambda_enqueue": {"service", "scantide"},
    "autoscaler": {"service", "scantide"},
    "monitor": {"service", "scantide"},
    "conductor": {"monitor", "service", "scantide"},
}
# The one module of service/ at the daemons' level: the worker runs algorithms.entry.
EXCEPTIONS = {("service/worker.py", "algorithms")}


def imports(path: Path) -> set[str]:
    """The top-level package of every absolute import in ``path``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_every_import_points_down() -> None:
    wrong = []
    for package, allowed in MAY_IMPORT.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            for target in imports(path) & MAY_IMPORT.keys() - {package} - allowed:
                if (name, target) not in EXCEPTIONS:
                    wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_a_built_in_algorithm_imports_nothing_of_ours() -> None:
    package = ROOT / "algorithms" / "video_summary"
    wrong = [f"{p.relative_to(ROOT)} imports {t}" for p in package.rglob("*.py")
             for t in imports(p) & MAY_IMPORT.keys()]
    assert not wrong, wrong
