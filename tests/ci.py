"""Tests that need a tool from the system (chromium, promtool): skipped with the reason where it is
missing, failed instead under ``CI=true`` (``.ci/run`` installs them, so there a missing tool is a
broken CI image, not a reason to pass). Where CI keeps files from a run: ``artifacts_dir()``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ARTIFACTS_ENV = "SCANTIDE_TEST_ARTIFACTS"  # a folder CI keeps after the run (.ci/run sets it)


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing tool fails the run)", pytrace=False)
    pytest.skip(reason)


def artifacts_dir() -> Path | None:
    """The folder named by ``SCANTIDE_TEST_ARTIFACTS`` (created), or None when unset."""
    raw = os.environ.get(ARTIFACTS_ENV)
    if not raw:
        return None
    path = Path(raw)
    path.mkdir(parents=True, exist_ok=True)
    return path
