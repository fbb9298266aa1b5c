"""The README stays a short front page whose links resolve, no module cites a design document
outside the project, and the documentation site builds with ``mkdocs build --strict`` (which fails
on a broken link or anchor between the pages of docs/, and on a page left out of the navigation)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.ci import skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_BYTES = 12 * 1024
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    """The anchor GitHub and mkdocs give a heading: lower case, punctuation dropped, spaces → -."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", text))


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    found = [a or b for a, b in LINK.findall(text)]
    return [t for t in found if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto: …


def test_the_readme_is_at_most_12_kb() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes: move content into docs/ (at most {README_MAX_BYTES})"


def test_every_relative_link_of_the_readme_resolves() -> None:
    links = relative_links(README)
    assert any(t.startswith("docs/") for t in links), "the README links the docs"
    broken = []
    for target in links:
        path, _, anchor = target.partition("#")
        page = (README.parent / path).resolve() if path else README
        if not page.exists():
            broken.append(f"{target}: no such file")
        elif anchor and page.suffix == ".md" and anchor not in anchors(page):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken


def test_no_module_cites_a_design_document_outside_the_project() -> None:
    citing = [str(p.relative_to(ROOT)) for top in ("service", "algorithms", "autoscaler", "monitor", "conductor",
                                                     "lambda_enqueue", "scantide", "tests", "benchmarks")
              for p in (ROOT / top).rglob("*.py") if "DESIGN.md" in p.read_text() and p != Path(__file__)]
    assert not citing, f"cite docs/architecture.md instead: {citing}"


def test_the_site_builds_with_strict_links(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        skip_or_fail("mkdocs-material is not installed (the docs extra: pip install -e '.[docs]')")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert all((tmp_path / "site" / page / "index.html").exists() for page in ("architecture", "autoscaler"))
