"""motion_peaks: the moments of strongest motion in a scan video.

A scantide ``python`` algorithm (``python: "motion_peaks:run"``): the worker imports this module
with the algorithm's folder first on sys.path and calls ``run``. It needs numpy and OpenCV and
nothing of scantide's, so it also runs from a notebook.

Motion at frame i is the mean absolute difference, in grey levels (0..255), between frames i-1
and i, both shrunk to ``ANALYSIS_WIDTH`` pixels wide first: shrinking averages away sensor noise
and compression grain, which would otherwise read as motion, and makes the pass cheap.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# Frames are compared at this width (pixels), height in proportion.
ANALYSIS_WIDTH = 160
_PROGRESS_STEPS = 10


def run(scan_path: Path, params: dict[str, Any], out_dir: Path,
        progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Find the top motion peaks of the video at ``scan_path``; write ``motion.csv`` to ``out_dir``.

    params (validated against the descriptor, defaults applied): ``threshold`` (grey levels: a
    frame is motion above it, and only such frames can be peaks), ``top`` (most peaks reported),
    ``min_gap_s`` (seconds: a peak this close to a stronger one is dropped).
    progress: called with the fraction done (0..1), about every tenth.

    Returns the summary: frame_count, fps, duration_s, mean_motion, max_motion, motion_frames
    (frames above threshold), peaks (strongest first: frame, time_s, motion).
    Raises ValueError when the file cannot be read as a video (no frames, no frame rate).
    """
    threshold = float(params["threshold"])
    top = int(params["top"])
    min_gap_s = float(params["min_gap_s"])

    motion, fps = motion_series(Path(scan_path), progress)
    peaks = find_peaks(motion, fps, threshold=threshold, top=top, min_gap_s=min_gap_s)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "motion.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "time_s", "motion"])
        writer.writerows((i, round(i / fps, 3), round(float(m), 3)) for i, m in enumerate(motion))
    if progress is not None:
        progress(1.0)

    return {
        "frame_count": int(motion.size),
        "fps": round(fps, 3),
        "duration_s": round(motion.size / fps, 3),
        "mean_motion": round(float(motion[1:].mean()), 3) if motion.size > 1 else 0.0,
        "max_motion": round(float(motion.max()), 3),
        "motion_frames": int((motion > threshold).sum()),
        "threshold": threshold,
        "peaks": [{"frame": i, "time_s": round(i / fps, 3), "motion": round(float(motion[i]), 3)} for i in peaks],
    }


def motion_series(scan: Path, progress: Callable[[float], None] | None = None) -> tuple[np.ndarray, float]:
    """Motion per frame (grey levels; frame 0 has none and reads 0.0) and the frame rate (fps).

    Raises ValueError when OpenCV cannot open the file, it holds no frame, or it has no usable
    frame rate.
    """
    if not scan.is_file():
        raise ValueError(f"no scan at {scan}")
    capture = cv2.VideoCapture(str(scan))
    try:
        if not capture.isOpened():
            raise ValueError(f"{scan.name} is not a readable video")
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        # An estimate, used only to pace progress reports.
        expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        next_report = 1
        motion: list[float] = []
        previous: np.ndarray | None = None
        size: tuple[int, int] | None = None
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if size is None:
                height, width = frame.shape[:2]
                size = (min(ANALYSIS_WIDTH, width), max(1, round(height * min(ANALYSIS_WIDTH, width) / width)))
            grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            # INTER_AREA averages the pixels it merges: the noise-suppressing shrink the module
            # docstring relies on.
            small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
            motion.append(0.0 if previous is None else float(cv2.mean(cv2.absdiff(small, previous))[0]))
            previous = small
            while (progress is not None and expected > 0 and next_report < _PROGRESS_STEPS
                   and len(motion) >= expected * next_report / _PROGRESS_STEPS):
                progress(next_report / _PROGRESS_STEPS)
                next_report += 1
    finally:
        capture.release()
    if not motion:
        raise ValueError(f"{scan.name} is not a readable video (no frames)")
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"{scan.name} has no usable frame rate (fps={fps})")
    return np.asarray(motion, dtype=np.float64), fps


def find_peaks(motion: np.ndarray, fps: float, *, threshold: float, top: int, min_gap_s: float) -> list[int]:
    """Frame indices of at most ``top`` peaks, strongest first.

    A peak is a frame above ``threshold`` that is at least as strong as both neighbours; a peak
    within ``min_gap_s`` seconds of a stronger one already chosen is dropped, so one burst of
    motion yields one peak.
    """
    if motion.size < 2:
        return []
    padded = np.concatenate(([-np.inf], motion, [-np.inf]))
    local_max = (motion >= padded[:-2]) & (motion >= padded[2:]) & (motion > threshold)
    candidates = np.flatnonzero(local_max)
    # Strongest first; ties go to the earlier frame (a stable sort over ascending indices).
    candidates = candidates[np.argsort(-motion[candidates], kind="stable")]
    min_gap_frames = min_gap_s * fps
    chosen: list[int] = []
    for i in candidates.tolist():
        if all(abs(i - j) >= min_gap_frames for j in chosen):
            chosen.append(i)
            if len(chosen) == top:
                break
    return chosen
