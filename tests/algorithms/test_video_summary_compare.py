"""Treatment tracking: a scan compared with an earlier scan's summary.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from algorithms.video_summary import InvalidParams, run
from service.synthetic import write_scan_video

SMALL = {"keyframes": 4, "segments": 5}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The first scan of a patient, a repeat of the same video, and a scan of other content."""
    root = tmp_path_factory.mktemp("compare")
    first = write_scan_video(root / "first.mp4", frames=48, blur=None, exposure=None, seed=11)
    other = write_scan_video(root / "other.mp4", frames=48, blur=None, exposure=None, seed=12)
    baseline = run(first["path"], SMALL, root / "baseline")
    previous = str(root / "baseline" / "summary.json")
    same = run(first["path"], {**SMALL, "previous_summary": previous}, root / "same")
    different = run(other["path"], {**SMALL, "previous_summary": previous}, root / "different")
    return {"root": root, "video": first["path"], "previous": previous, "baseline": baseline.summary,
            "same": same.summary, "different": different.summary}


def test_no_comparison_without_previous(runs: dict[str, Any]) -> None:
    assert "comparison" not in runs["baseline"]


def test_same_video_matches_itself(runs: dict[str, Any]) -> None:
    comparison = runs["same"]["comparison"]
    baseline = runs["baseline"]
    assert comparison["previous"]["frame_count"] == baseline["frame_count"]
    assert comparison["previous"]["keyframes"] == len(baseline["keyframes"])
    matches = comparison["keyframe_matches"]
    assert len(matches) == len(runs["same"]["keyframes"])
    for ordinal, match in enumerate(matches):
        assert match["previous_keyframe"] == ordinal and match["previous_index"] == match["index"]
        assert match["similarity"] == pytest.approx(1.0, abs=1e-3)
    regions = comparison["regions"]
    assert [r["segment"] for r in regions] == list(range(len(runs["same"]["segments"])))
    for region in regions:
        assert region["previous_segment"] == region["segment"]
        assert region["change"] <= 1e-3 and region["quality_delta"] == 0.0
    assert comparison["change_score"] <= 1e-3


def test_different_video_changes_more(runs: dict[str, Any]) -> None:
    same, different = runs["same"]["comparison"], runs["different"]["comparison"]
    assert different["change_score"] > same["change_score"] + 0.05
    assert different["keyframe_similarity_mean"] < same["keyframe_similarity_mean"] - 0.05
    for region in different["regions"]:
        assert 0.0 <= region["change"] <= 1.0
        assert region["start_s"] < region["end_s"]


def test_comparison_is_written(runs: dict[str, Any]) -> None:
    written = json.loads((runs["root"] / "different" / "summary.json").read_text())
    assert written["comparison"] == runs["different"]["comparison"]


def _edited(root: Path, runs: dict[str, Any], change: Any) -> str:
    summary = json.loads(json.dumps(runs["baseline"]))
    change(summary)
    path = root / "edited.json"
    path.write_text(json.dumps(summary))
    return str(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root, runs: str(root / "nowhere.json"), "no such file"),
        (lambda root, runs: (root / "bad.json").write_text("{not json") and str(root / "bad.json"), "not JSON"),
        (lambda root, runs: (root / "list.json").write_text("[1, 2]") and str(root / "list.json"),
         "not a video_summary summary.json"),
        (lambda root, runs: _edited(root, runs, lambda s: s.update(algorithm_version="1")), "version '1'"),
        (lambda root, runs: _edited(root, runs, lambda s: s["model"].update(sha256="0" * 64)), "not comparable"),
        (lambda root, runs: _edited(root, runs, lambda s: s["keyframes"][0].update(embedding=[0.1] * 3)),
         "keyframes missing or without"),
        (lambda root, runs: _edited(root, runs, lambda s: s.update(segments=[])), "segments missing"),
    ],
    ids=["missing", "not-json", "not-a-summary", "version-1", "other-model", "short-embedding", "no-segments"],
)
def test_unusable_previous_summary(make: Any, message: str, runs: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(InvalidParams, match=message) as info:
        run(runs["video"], {**SMALL, "previous_summary": make(tmp_path, runs)}, tmp_path / "out")
    assert info.value.code == "invalid_params"
    assert "previous_summary" in info.value.message
    assert not (tmp_path / "out").exists()  # refused before decoding
