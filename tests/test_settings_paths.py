"""Local paths in the settings are absolute, whatever the working folder they were read in."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings


def test_relative_state_dir_and_derived_paths_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `make demo` runs with the default ".scantide"; a task's own working folder must still find it.
    monkeypatch.chdir(tmp_path)
    settings = Settings(state_dir=Path(".scantide"), data_root=Path("scans"))
    assert settings.state_dir == tmp_path / ".scantide"
    assert settings.data_root == tmp_path / "scans"
    assert settings.output_root == tmp_path / ".scantide" / "outputs"
    assert settings.input_cache_dir == tmp_path / ".scantide" / "input_cache"


def test_output_url_prefix_stays_a_string() -> None:
    assert Settings(state_dir=Path("/srv/scantide"), output_root="s3://bucket/out").output_root == "s3://bucket/out"
