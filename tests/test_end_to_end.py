"""A scan with a known blurred stretch goes in over HTTP; a real worker analyses it; the outputs
must describe what the video actually contains."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import httpx

from tests.conftest import ApiServer, Workers, wait_for

FRAMES = 144
BLUR = (40, 72)  # half-open frame range [a, b) written heavily blurred


def wait_task_terminal(client: httpx.Client, task_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        response = client.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        return body if body["state"] in ("completed", "failed", "stopped") else None

    return wait_for(done, timeout_s, interval_s=0.2, what=f"task {task_id} to end")  # type: ignore[return-value]


def read_frames_csv(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["index", "timestamp_s", "sharpness", "exposure", "motion", "quality"]
        return [{k: float(v) for k, v in row.items()} for row in reader]


def mean(values: list[float]) -> float:
    assert values
    return sum(values) / len(values)


def test_scan_analysed_end_to_end(api: ApiServer, workers: Workers, make_video: Callable[..., dict]) -> None:
    written = make_video("e2e.mp4", frames=FRAMES, fps=24, size=(320, 240), blur=BLUR, exposure=None)
    assert written["frames"] == FRAMES
    blur_lo, blur_hi = BLUR

    with api.client() as client:
        submitted = client.post("/v1/scans", json={"scan_id": "e2e-scan", "scan_uri": "e2e.mp4",
                                                   "metadata": {"patient": "p-1"}})
        assert submitted.status_code == 202, submitted.text
        task_id = submitted.json()["task_id"]

        workers.start(1)
        task = wait_task_terminal(client, task_id)
        assert task["state"] == "completed", task
        assert task["error"] is None
        assert task["params"]["metadata"] == {"patient": "p-1"}

    result = task["result"]
    out = Path(result["output_uri"])
    assert out.is_dir(), result
    summary = json.loads((out / "summary.json").read_text())

    # What was written is what was analysed.
    assert summary["frame_count"] == FRAMES
    assert result["summary"]["frame_count"] == FRAMES
    assert summary["width"] == 320 and summary["height"] == 240
    assert abs(summary["fps"] - 24) < 0.01
    assert abs(summary["duration_s"] - FRAMES / 24) < 0.01

    # Per-frame sharpness sees the blurred stretch.
    rows = read_frames_csv(out / "frames.csv")
    assert [int(r["index"]) for r in rows] == list(range(FRAMES))
    inside = [r["sharpness"] for r in rows if blur_lo <= r["index"] < blur_hi]
    outside = [r["sharpness"] for r in rows if not blur_lo <= r["index"] < blur_hi]
    assert mean(inside) < 0.5 * mean(outside), (mean(inside), mean(outside))
    assert mean([r["quality"] for r in rows if blur_lo <= r["index"] < blur_hi]) < mean(
        [r["quality"] for r in rows if not blur_lo <= r["index"] < blur_hi])

    # Segments that overlap the stretch score lower than those that do not; a segment that is
    # mostly blurred scores below every clear one and has more poor frames than any. (A segment clipping the stretch by a
    # frame or two is diluted by its sharp frames, so it is only held to the group comparison.)
    segments = summary["segments"]
    assert segments[0]["start_frame"] == 0 and segments[-1]["end_frame"] == FRAMES - 1
    overlapping = [s for s in segments if s["start_frame"] < blur_hi and s["end_frame"] >= blur_lo]
    clear = [s for s in segments if s not in overlapping]
    assert overlapping and clear
    assert mean([s["quality_mean"] for s in overlapping]) < mean([s["quality_mean"] for s in clear]), segments
    assert mean([s["sharpness_mean"] for s in overlapping]) < mean([s["sharpness_mean"] for s in clear]), segments

    def blurred_share(s: dict[str, Any]) -> float:
        covered = min(s["end_frame"] + 1, blur_hi) - max(s["start_frame"], blur_lo)
        return covered / (s["end_frame"] + 1 - s["start_frame"])

    mostly_blurred = [s for s in overlapping if blurred_share(s) > 0.5]
    assert mostly_blurred, segments
    worst_clear = min(s["quality_mean"] for s in clear)
    fewest_poor_clear = max(s["poor_fraction"] for s in clear)
    for s in mostly_blurred:
        assert s["quality_mean"] < worst_clear, (s, worst_clear)
        assert s["poor_fraction"] > fewest_poor_clear, (s, segments)

    # Keyframes avoid the blur and cover the scan.
    keyframes = summary["keyframes"]
    indices = [k["index"] for k in keyframes]
    assert len(indices) >= 4, indices
    assert indices == sorted(indices) and len(set(indices)) == len(indices), indices
    assert not [i for i in indices if blur_lo <= i < blur_hi], indices
    assert min(indices) < blur_lo, indices  # some before the stretch
    assert max(indices) >= blur_hi + (FRAMES - blur_hi) // 2, indices  # some well after it
    assert result["summary"]["keyframes"] == len(keyframes)

    # Every image is there and decodes.
    sheet = cv2.imread(str(out / summary["contact_sheet"]))
    assert sheet is not None and sheet.size > 0
    for k in keyframes:
        image = cv2.imread(str(out / k["file"]))
        assert image is not None, k["file"]
        assert image.shape[0] > 0 and image.shape[1] > 0
    assert sorted(result["outputs"]["keyframes"]) == sorted(k["file"] for k in keyframes)
    for name in result["outputs"]["files"]:
        assert (out / name).is_file(), name
