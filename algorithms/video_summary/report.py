"""The summary document: pure functions from the analysis to JSON-ready dicts and CSV rows.

Every number leaves here as a rounded Python float or int, never a numpy type, so the summary
serialises as is and two runs on the same scan give byte-identical files.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .analysis import Analysis, FrameTable
from .candidates import Candidate
from .keyframes import even_windows, poor_frames
from .params import Params

CONTACT_SHEET = "contact_sheet.jpg"
FRAMES_CSV = "frames.csv"
SUMMARY_JSON = "summary.json"
FRAMES_CSV_HEADER = ("index", "timestamp_s", "sharpness", "exposure", "motion", "quality")

# Decimal places: seconds to the millisecond, scores (0..1) to 1e-4, sharpness (grey levels
# squared, often hundreds) to 1e-3, embedding components to 1e-4 (cosine similarities of the
# rounded vectors stay within ~1e-3 of the exact ones).
_SECONDS = 3
_SCORE = 4
_SHARPNESS = 3
_EMBEDDING = 4


def keyframe_file(ordinal: int, frame_index: int) -> str:
    """Path of a keyframe image relative to the output folder; ordinal counts from 0."""
    return f"keyframes/kf_{ordinal:02d}_f{frame_index:06d}.jpg"


def build_summary(
    name: str,
    version: str,
    model: dict[str, Any],
    analysis: Analysis,
    params: Params,
    keyframes: list[Candidate],
) -> dict[str, Any]:
    """The content of summary.json (see the package docstring for the fields), without
    ``comparison``. model: the ``model`` object (version, sha256, architecture, device)."""
    frames = analysis.frames
    fps = analysis.info.fps
    poor = poor_frames(frames.quality, frames.sharpness, params.min_quality)
    return {
        "algorithm": name,
        "algorithm_version": version,
        "model": model,
        "frame_count": len(frames),
        "fps": _round(fps, _SCORE),
        "fps_assumed": analysis.info.fps_assumed,
        "duration_s": _round(len(frames) / fps, _SECONDS),
        "width": analysis.width,
        "height": analysis.height,
        "quality": {
            "score": _round(frames.quality.mean(), _SCORE),
            "poor_frame_fraction": _round(poor.mean(), _SCORE),
            "sharpness_median": _round(np.median(frames.sharpness), _SHARPNESS),
            "exposure_mean": _round(frames.exposure.mean(), _SCORE),
            "motion_mean": _round(frames.motion.mean(), _SCORE),
        },
        "segments": build_segments(frames, fps, params.segments, poor),
        "keyframes": [_keyframe_entry(i, c.index, frames, fps) for i, c in enumerate(keyframes)],
        "contact_sheet": CONTACT_SHEET,
        "params": params.to_dict(),
        "processing": {"decoder": analysis.decoder, "analysis": analysis.backend},
    }


def build_segments(frames: FrameTable, fps: float, parts: int, poor: np.ndarray) -> list[dict[str, Any]]:
    """Statistics of ``parts`` equal-length segments (fewer for very short scans); ``poor`` marks
    each frame that is poor (``keyframes.poor_frames``).

    end_frame is inclusive; end_s is when the segment's last frame ends (= the next start_s),
    so segments tile the scan's duration. embedding: the unit-length mean of the segment's
    frame embeddings, what the segment shows (used by comparisons between scans).
    """
    segments = []
    for i, (start, end) in enumerate(even_windows(len(frames), parts)):
        span = slice(start, end)
        segments.append(
            {
                "index": i,
                "start_frame": start,
                "end_frame": end - 1,
                "start_s": _round(start / fps, _SECONDS),
                "end_s": _round(end / fps, _SECONDS),
                "quality_mean": _round(frames.quality[span].mean(), _SCORE),
                "poor_fraction": _round(poor[span].mean(), _SCORE),
                "sharpness_mean": _round(frames.sharpness[span].mean(), _SHARPNESS),
                "exposure_mean": _round(frames.exposure[span].mean(), _SCORE),
                "motion_mean": _round(frames.motion[span].mean(), _SCORE),
                "embedding": _vector(frames.embedding[span].astype(np.float64).mean(axis=0)),
            }
        )
    return segments


def frame_rows(frames: FrameTable, fps: float) -> Iterator[tuple[int | float, ...]]:
    """Rows of frames.csv, matching FRAMES_CSV_HEADER."""
    for i in range(len(frames)):
        yield (
            i,
            _round(i / fps, _SECONDS),
            _round(frames.sharpness[i], _SHARPNESS),
            _round(frames.exposure[i], _SCORE),
            _round(frames.motion[i], _SCORE),
            _round(frames.quality[i], _SCORE),
        )


def keyframe_label(entry: dict[str, Any]) -> str:
    """Contact-sheet caption of a keyframe entry: timestamp and quality."""
    return f"t={entry['timestamp_s']:.2f}s q={entry['quality']:.2f}"


def _keyframe_entry(ordinal: int, index: int, frames: FrameTable, fps: float) -> dict[str, Any]:
    return {
        "index": index,
        "timestamp_s": _round(index / fps, _SECONDS),
        "file": keyframe_file(ordinal, index),
        "quality": _round(frames.quality[index], _SCORE),
        "sharpness": _round(frames.sharpness[index], _SHARPNESS),
        "exposure": _round(frames.exposure[index], _SCORE),
        "motion": _round(frames.motion[index], _SCORE),
        "embedding": _vector(frames.embedding[index]),
    }


def _vector(values: np.ndarray) -> list[float]:
    """A unit-length copy of ``values``, rounded for JSON (a zero vector stays zero)."""
    values = np.asarray(values, dtype=np.float64)
    norm = float(np.linalg.norm(values))
    if norm > 0:
        values = values / norm
    return [_round(v, _EMBEDDING) for v in values]


def _round(value: Any, digits: int) -> float:
    # float() first: numpy scalars must not reach json; +0.0 turns -0.0 into 0.0.
    return round(float(value), digits) + 0.0
