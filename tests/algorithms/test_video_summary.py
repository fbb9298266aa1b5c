"""video_summary against real videos written by OpenCV at test time (service/synthetic.py), scored
by the committed network on the CPU."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import threading
import wave
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from algorithms import video_summary
from algorithms.video_summary import (
    AlgorithmError,
    InvalidParams,
    InvalidVideo,
    Result,
    candidates,
    run,
)
from algorithms.video_summary.candidates import PER_WINDOW, CandidatePool
from algorithms.video_summary.model import EMBEDDING_DIM
from service.synthetic import write_scan_video

FRAMES = 120
BLUR = (40, 70)
EXPOSURE = (90, 110)
PLATFORM_PARAMS = {"scan_id": "scan-1", "model_version": "m-3", "metadata": {"clinic": "x"}}


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("scan") / "scan.mp4"
    return write_scan_video(path, frames=FRAMES, fps=24.0, blur=BLUR, exposure=EXPOSURE, seed=3)


@pytest.fixture(scope="module")
def outcome(scan: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, Path, list[float]]:
    out = tmp_path_factory.mktemp("out")
    calls: list[float] = []
    result = run(scan["path"], PLATFORM_PARAMS, out, progress=calls.append)
    return result, out, calls


def _frames_csv(out: Path) -> list[dict[str, float]]:
    with open(out / "frames.csv", newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _in(index: int, span: tuple[int, int]) -> bool:
    return span[0] <= index < span[1]


def test_frame_count_and_shape(scan: dict[str, Any], outcome: tuple[Result, Path, list[float]]) -> None:
    result, out, _ = outcome
    summary = result.summary
    assert summary["algorithm"] == video_summary.NAME == "video_summary"
    assert summary["algorithm_version"] == video_summary.VERSION
    assert summary["frame_count"] == scan["frames"] == FRAMES
    assert (summary["width"], summary["height"]) == (scan["width"], scan["height"])
    assert summary["fps"] == pytest.approx(24.0)
    assert summary["fps_assumed"] is False
    assert summary["duration_s"] == pytest.approx(FRAMES / 24.0, abs=1e-3)
    rows = _frames_csv(out)
    assert [int(r["index"]) for r in rows] == list(range(FRAMES))


def test_blurred_stretch_is_less_sharp(outcome: tuple[Result, Path, list[float]]) -> None:
    result, out, _ = outcome
    rows = _frames_csv(out)
    blurred = [r["sharpness"] for r in rows if _in(int(r["index"]), BLUR)]
    clean = [r["sharpness"] for r in rows if not _in(int(r["index"]), BLUR) and not _in(int(r["index"]), EXPOSURE)]
    assert np.median(blurred) < 0.25 * np.median(clean)
    # Segment 4 (frames 48..59) lies wholly inside the blurred stretch, segment 0 wholly outside.
    segments = result.summary["segments"]
    assert (segments[4]["start_frame"], segments[4]["end_frame"]) == (48, 59)
    assert segments[4]["sharpness_mean"] < 0.25 * segments[0]["sharpness_mean"]


def test_degraded_stretches_score_lower(outcome: tuple[Result, Path, list[float]]) -> None:
    # The network's score (frames.csv "quality"), not the OpenCV metrics: blurred and badly
    # exposed frames, as OpenCV wrote and decoded them, rank below every clean one.
    result, out, _ = outcome
    rows = _frames_csv(out)
    blurred = [r["quality"] for r in rows if _in(int(r["index"]), BLUR)]
    exposed = [r["quality"] for r in rows if _in(int(r["index"]), EXPOSURE)]
    clean = [r["quality"] for r in rows if not _in(int(r["index"]), BLUR) and not _in(int(r["index"]), EXPOSURE)]
    assert max(blurred) < min(clean), (max(blurred), min(clean))
    assert max(exposed) < min(clean), (max(exposed), min(clean))
    assert np.mean(blurred) < 0.7 * np.mean(clean)
    min_quality = result.summary["params"]["min_quality"]
    assert max(exposed) < min_quality <= min(clean)
    # Segment 4 (frames 48..59) lies wholly inside the blurred stretch, segment 8 (96..107)
    # wholly inside the badly exposed one, segment 0 outside both.
    segments = result.summary["segments"]
    assert segments[0]["poor_fraction"] == 0.0
    assert segments[4]["quality_mean"] < 0.7 * segments[0]["quality_mean"]
    assert (segments[8]["start_frame"], segments[8]["end_frame"]) == (96, 107)
    assert segments[8]["poor_fraction"] == 1.0


def test_segments_tile_the_scan(outcome: tuple[Result, Path, list[float]]) -> None:
    segments = outcome[0].summary["segments"]
    assert len(segments) == 10
    assert segments[0]["start_frame"] == 0 and segments[-1]["end_frame"] == FRAMES - 1
    for before, after in itertools.pairwise(segments):
        assert after["start_frame"] == before["end_frame"] + 1
        assert after["start_s"] == before["end_s"]


def test_keyframes_avoid_damaged_frames(outcome: tuple[Result, Path, list[float]]) -> None:
    summary = outcome[0].summary
    keyframes = summary["keyframes"]
    assert keyframes
    clean = [kf for kf in keyframes if not _in(kf["index"], BLUR)]
    for kf in keyframes:
        assert not _in(kf["index"], EXPOSURE), kf
        assert kf["quality"] >= summary["params"]["min_quality"]
    # A window inside the blurred stretch has no clean frame to offer; its keyframe (if the
    # network does not call it poor) still ranks below every clean keyframe.
    for kf in keyframes:
        if _in(kf["index"], BLUR):
            assert kf["quality"] < min(c["quality"] for c in clean), kf


def test_keyframes_are_spread_and_distinct(outcome: tuple[Result, Path, list[float]]) -> None:
    result = outcome[0]
    keyframes = result.summary["keyframes"]
    indices = [kf["index"] for kf in keyframes]
    assert indices == sorted(indices)
    windows = {i * 8 // FRAMES for i in indices}
    assert len(windows) == len(indices) >= 4  # one per window, several windows
    assert indices[-1] - indices[0] >= FRAMES // 2
    threshold = result.summary["params"]["dedupe_similarity"]
    for a, b in itertools.combinations(keyframes, 2):
        similarity = float(np.dot(a["embedding"], b["embedding"]))
        assert similarity < threshold + 1e-3, (a["index"], b["index"], similarity)


def test_output_files(scan: dict[str, Any], outcome: tuple[Result, Path, list[float]]) -> None:
    result, out, _ = outcome
    summary = result.summary
    expected = {"summary.json", "frames.csv", "contact_sheet.jpg"} | {kf["file"] for kf in summary["keyframes"]}
    assert set(result.files) == expected and result.files == sorted(result.files)
    for name in result.files:
        assert (out / name).is_file()
    for kf in summary["keyframes"]:
        assert Path(kf["file"]).name == f"kf_{summary['keyframes'].index(kf):02d}_f{kf['index']:06d}.jpg"
        image = cv2.imread(str(out / kf["file"]))
        assert image is not None and image.shape == (scan["height"], scan["width"], 3)
    sheet = cv2.imread(str(out / summary["contact_sheet"]))
    assert sheet is not None and sheet.shape[1] >= summary["params"]["thumb_width"]
    assert json.loads((out / "summary.json").read_text()) == summary


def test_summary_is_plain_json(outcome: tuple[Result, Path, list[float]]) -> None:
    result = outcome[0]

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                assert isinstance(key, str)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        else:
            assert type(value) in (str, int, float, bool, type(None)), (value, type(value))

    walk(result.to_dict())
    summary = result.summary
    assert set(summary) == {
        "algorithm", "algorithm_version", "model", "frame_count", "fps", "fps_assumed", "duration_s", "width",
        "height", "quality", "segments", "keyframes", "contact_sheet", "params", "processing",
    }
    assert set(summary["quality"]) == {"sharpness_median", "exposure_mean", "motion_mean", "poor_frame_fraction", "score"}
    assert 0.0 < summary["quality"]["poor_frame_fraction"] < 1.0
    assert "scan_id" not in summary["params"]  # platform keys are ignored, not echoed
    assert "model_path" not in summary["params"] and "previous_summary" not in summary["params"]
    assert summary["model"]["version"] == "m-3"  # model_version is echoed
    # The device the scorer picked for "auto": CUDA wherever torch sees a GPU, else the CPU;
    # the frames are measured with torch on CUDA, with OpenCV on the CPU.
    cuda = torch.cuda.is_available()
    assert summary["model"]["device"] == ("cuda" if cuda else "cpu")
    assert summary["processing"]["analysis"] == ("torch" if cuda else "opencv")
    assert summary["processing"]["decoder"] in ("hardware", "software")
    assert summary["params"]["decoder"] == summary["params"]["device"] == "auto"
    assert summary["model"]["sha256"] == hashlib.sha256(video_summary.DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    for entry in summary["keyframes"] + summary["segments"]:
        assert len(entry["embedding"]) == EMBEDDING_DIM
        assert float(np.linalg.norm(entry["embedding"])) == pytest.approx(1.0, abs=1e-3)


def test_deterministic(scan: dict[str, Any], outcome: tuple[Result, Path, list[float]], tmp_path: Path) -> None:
    result, out, _ = outcome
    again = run(scan["path"], PLATFORM_PARAMS, tmp_path)
    assert again.files == result.files
    for name in result.files:
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_progress_reports(outcome: tuple[Result, Path, list[float]]) -> None:
    calls = outcome[2]
    assert 2 <= len(calls) <= 21
    assert all(0.0 <= c <= 1.0 for c in calls)
    assert calls == sorted(calls)
    assert calls[-1] == 1.0 and calls.count(1.0) == 1


def test_every_frame_poor_still_gives_one_keyframe(tmp_path: Path) -> None:
    scan = write_scan_video(tmp_path / "dark.mp4", frames=40, blur=None, exposure=(0, 40))
    result = run(scan["path"], {}, tmp_path / "out")
    assert result.summary["quality"]["poor_frame_fraction"] == 1.0
    assert len(result.summary["keyframes"]) == 1


def test_static_scan_dedupes_to_one_keyframe(tmp_path: Path) -> None:
    still = write_scan_video(tmp_path / "still.mp4", frames=1, blur=None, exposure=None)
    cap = cv2.VideoCapture(still["path"])
    ok, frame = cap.read()
    cap.release()
    assert ok
    path = tmp_path / "static.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 24.0, (frame.shape[1], frame.shape[0]))
    for _ in range(48):
        writer.write(frame)
    writer.release()
    result = run(path, {"keyframes": 6}, tmp_path / "out")
    assert result.summary["frame_count"] == 48
    assert len(result.summary["keyframes"]) == 1


def test_short_scan_has_fewer_keyframes_and_segments(tmp_path: Path) -> None:
    scan = write_scan_video(tmp_path / "short.mp4", frames=5, blur=None, exposure=None)
    result = run(scan["path"], {"keyframes": 8, "segments": 10}, tmp_path / "out")
    assert result.summary["frame_count"] == 5
    assert 1 <= len(result.summary["keyframes"]) <= 5
    assert [s["start_frame"] for s in result.summary["segments"]] == [0, 1, 2, 3, 4]


def test_too_long_scan_is_refused(scan: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(InvalidVideo, match="too long"):
        run(scan["path"], {"max_frames": 50}, tmp_path)


def test_cancelling_progress_stops_decoding(scan: dict[str, Any], tmp_path: Path) -> None:
    # A caller cancels by raising from its progress callback; the decode thread must not outlive it.
    def cancel(fraction: float) -> None:
        if fraction > 0.3:
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        run(scan["path"], {}, tmp_path, progress=cancel)
    assert not [t for t in threading.enumerate() if t.name == "video-decode"]


def test_encoded_candidates_match_raw(
    scan: dict[str, Any], outcome: tuple[Result, Path, list[float]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Just under one raw frame per pool window (2 x 8 keyframes) of budget: closed windows are
    # held as JPEG bytes, with as many candidates as in memory. Same keyframes, same files.
    frame_bytes = scan["width"] * scan["height"] * 3 // 2  # kept as YUV 4:2:0
    monkeypatch.setattr(candidates, "RAW_BUDGET_BYTES", frame_bytes * 16 - 1)
    result, out, _ = outcome
    low_memory = run(scan["path"], PLATFORM_PARAMS, tmp_path)
    assert low_memory.summary == result.summary
    for kf in result.summary["keyframes"]:
        assert (tmp_path / kf["file"]).read_bytes() == (out / kf["file"]).read_bytes()


def _zero_bytes(tmp_path: Path, scan: dict[str, Any]) -> Path:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    return path


def _text_file(tmp_path: Path, scan: dict[str, Any]) -> Path:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    return path


def _truncated_mp4(tmp_path: Path, scan: dict[str, Any]) -> Path:
    data = Path(scan["path"]).read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 2])
    return path


def _missing(tmp_path: Path, scan: dict[str, Any]) -> Path:
    return tmp_path / "nowhere.mp4"


def _audio_only(tmp_path: Path, scan: dict[str, Any]) -> Path:
    path = tmp_path / "dictation.mp4"  # a real media file, with sound only
    with wave.open(str(path), "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(8000)
        sound.writeframes(b"\x00\x01" * 8000)
    return path


@pytest.mark.parametrize("make", [_zero_bytes, _text_file, _truncated_mp4, _missing, _audio_only],
                         ids=lambda f: f.__name__[1:])
def test_invalid_video(make: Any, scan: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(InvalidVideo) as info:
        run(make(tmp_path, scan), {}, tmp_path / "out")
    assert info.value.code == "invalid_video"
    assert isinstance(info.value, AlgorithmError)
    assert "could not open video" in info.value.message


def test_truncated_stream_reports_decoded_count(scan: dict[str, Any], tmp_path: Path) -> None:
    # AVI keeps its frame count in the header, so a cut file opens and then runs short.
    avi = tmp_path / "scan.avi"
    cap = cv2.VideoCapture(scan["path"])
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 24.0, (scan["width"], scan["height"]))
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        writer.write(frame)
    writer.release()
    cap.release()
    data = avi.read_bytes()
    avi.write_bytes(data[: len(data) // 3])
    with pytest.raises(InvalidVideo, match=r"video is truncated: decoded \d+ of 120 frames") as info:
        run(avi, {}, tmp_path / "out")
    assert info.value.code == "invalid_video"


@pytest.mark.parametrize(
    "params",
    [
        {"keyframes": 0},
        {"keyframes": "x"},
        {"keyframes": True},
        {"keyframes": 65},
        {"segments": 2.5},
        {"analysis_width": 10},
        {"min_quality": 1.5},
        {"dedupe_similarity": float("nan")},
        {"batch_size": 0},
        {"device": "tpu"},
        {"decoder": "nvdec"},
        {"model_version": ""},
        {"model_path": 3.5},
        {"previous_summary": ["a"]},
    ],
    ids=repr,
)
def test_invalid_params(params: dict[str, Any], tmp_path: Path) -> None:
    # Params are checked before the video is opened, so no scan is needed.
    with pytest.raises(InvalidParams) as info:
        run(tmp_path / "unused.mp4", params, tmp_path / "out")
    assert info.value.code == "invalid_params"
    assert next(iter(params)) in info.value.message


def test_effective_params_are_reported(scan: dict[str, Any], tmp_path: Path) -> None:
    result = run(scan["path"], {"keyframes": 4.0, "segments": 3, **PLATFORM_PARAMS}, tmp_path)
    params = result.summary["params"]
    assert params["keyframes"] == 4 and params["segments"] == 3 and params["max_frames"] == 100_000
    assert len(result.summary["segments"]) == 3 and len(result.summary["keyframes"]) <= 4


def test_pool_rewindows_when_length_is_unknown() -> None:
    # A container that reports no frame count: windows start one frame long and merge as the
    # scan grows, so candidates stay bounded and still cover the whole scan.
    pool = CandidatePool(slots=16, expected_frames=0)
    frame = np.zeros((24, 32, 3), np.uint8)
    embedding = np.zeros(EMBEDDING_DIM, np.float32)
    for index in range(1000):
        quality = ((index * 7919) % 97) / 97
        pool.offer(index, quality, embedding, frame)
    kept = pool.candidates()
    assert len(kept) <= 16 * PER_WINDOW
    assert min(c.index for c in kept) < 100 and max(c.index for c in kept) >= 900
    assert [c.index for c in kept] == sorted(c.index for c in kept)
