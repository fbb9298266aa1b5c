"""The single decoding pass: per-frame metrics for every frame, full-res copies of a few.

Per frame the work is one INTER_AREA downscale, a grey conversion and three metrics on the small
copy; full-resolution frames are only copied when they enter the candidate pool. This keeps the
whole algorithm close to decode-only speed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from .candidates import Candidate, CandidatePool
from .decode import VideoInfo, VideoReader
from .params import Params
from .progress import ProgressReporter
from .quality import downscale_gray, frame_metrics, quality_scores, sharpness_reference

logger = logging.getLogger(__name__)

# Share of the progress bar the decoding pass takes; writing outputs takes the rest.
DECODE_SHARE = 0.9
# The provisional sharpness reference is recomputed when the frame count has grown by this
# factor (and at least every _REFERENCE_MIN_GAP frames), which keeps the cost O(n log n).
_REFERENCE_GROWTH = 1.25
_REFERENCE_MIN_GAP = 32


@dataclass(frozen=True)
class FrameTable:
    """Per-frame metrics, one entry per decoded frame (see quality.py for units)."""

    sharpness: np.ndarray
    exposure: np.ndarray
    motion: np.ndarray
    quality: np.ndarray

    def __len__(self) -> int:
        return int(self.sharpness.size)


@dataclass(frozen=True)
class Analysis:
    """Everything the pass learned. width, height: first frame's size in pixels.
    reference: final sharpness reference (quality.sharpness_reference)."""

    info: VideoInfo
    width: int
    height: int
    frames: FrameTable
    reference: float
    candidates: list[Candidate]


def analyse(
    path: str | os.PathLike[str], params: Params, progress: ProgressReporter
) -> Analysis:
    """Decode ``path`` once and measure every frame. Raises InvalidVideo for unusable files."""
    sharpness: list[float] = []
    exposure: list[float] = []
    motion: list[float] = []
    width = height = 0
    with VideoReader(path, params.max_frames) as reader:
        reported = reader.info.reported_frames
        # Twice as many windows as keyframes: when the container's count is right, each final
        # window spans about two pool windows; when it is wrong, merging keeps them near-equal.
        pool = CandidatePool(2 * params.keyframes, reported)
        previous: np.ndarray | None = None
        reference = 0.0
        next_reference_at = 1
        for index, frame in reader.frames():
            if index == 0:
                height, width = frame.shape[:2]
            gray = downscale_gray(frame, params.analysis_width)
            metrics = frame_metrics(gray, previous)
            sharpness.append(metrics[0])
            exposure.append(metrics[1])
            motion.append(metrics[2])
            if index + 1 >= next_reference_at:
                reference = sharpness_reference(np.asarray(sharpness))
                next_reference_at = max(index + 1 + _REFERENCE_MIN_GAP, int((index + 1) * _REFERENCE_GROWTH))
            pool.offer(index, metrics, reference, gray, frame)
            previous = gray
            if reported:
                progress.update(DECODE_SHARE * min(1.0, (index + 1) / reported))
        reader.check_complete(len(sharpness))
        info = reader.info
    progress.update(DECODE_SHARE)

    sharp = np.asarray(sharpness, dtype=np.float64)
    expo = np.asarray(exposure, dtype=np.float64)
    mot = np.asarray(motion, dtype=np.float64)
    reference = sharpness_reference(sharp)
    table = FrameTable(sharp, expo, mot, quality_scores(sharp, expo, mot, reference))
    candidates = pool.candidates()
    logger.info(
        "video analysed frames=%d reported=%d size=%dx%d candidates=%d",
        len(table), reported, width, height, len(candidates),
    )
    return Analysis(info, int(width), int(height), table, reference, candidates)
