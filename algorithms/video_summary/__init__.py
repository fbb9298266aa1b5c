"""video_summary: quality profile, keyframes and a contact sheet for one dental video scan.

``run(scan_path, params, out_dir, progress)`` decodes the scan once, measures every frame on a
small grey copy (sharpness = variance of the Laplacian, exposure score, motion), picks keyframes
spread over the scan (best good, non-duplicate frame per equal-length window) and writes to
``out_dir``:

- ``summary.json``: ``algorithm``, ``algorithm_version``, ``frame_count`` (frames decoded), ``fps``,
  ``fps_assumed`` (True when the container had no usable rate and 30 was used), ``duration_s``,
  ``width``, ``height`` (pixels), ``quality`` {``sharpness_median``, ``sharpness_reference``,
  ``exposure_mean``, ``motion_mean``, ``poor_frame_fraction``, ``score``}, ``segments`` [{``index``,
  ``start_frame``, ``end_frame`` (inclusive), ``start_s``, ``end_s``, ``sharpness_mean``,
  ``exposure_mean``, ``motion_mean``, ``quality_mean``, ``poor_fraction``}], ``keyframes``
  [{``index`` (frame), ``timestamp_s``, ``file``, ``sharpness``, ``exposure``, ``motion``,
  ``quality``}], ``contact_sheet``, ``params`` (effective).
- ``keyframes/kf_XX_fNNNNNN.jpg``, ``contact_sheet.jpg``, ``frames.csv``.

Scores (exposure, quality, motion, poor fractions) are in [0, 1]; sharpness is in grey levels
squared at ``analysis_width``. This package imports nothing else of the project.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2

from .analysis import analyse
from .errors import AlgorithmError, InvalidParams, InvalidVideo
from .keyframes import choose_keyframes
from .outputs import write_outputs
from .params import Params, parse_params
from .progress import ProgressReporter
from .report import build_summary

__all__ = [
    "NAME",
    "VERSION",
    "AlgorithmError",
    "InvalidParams",
    "InvalidVideo",
    "Params",
    "Result",
    "run",
]

NAME = "video_summary"
# Bump when outputs for the same scan and params would change.
VERSION = "1"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    """What a run produced. summary: the content of summary.json. files: every file written,
    relative to out_dir, sorted (summary.json included)."""

    summary: dict[str, Any]
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "files": list(self.files)}


def run(
    scan_path: str | os.PathLike[str],
    params: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    progress: Callable[[float], None] | None = None,
) -> Result:
    """Analyse the video at ``scan_path`` and write the outputs to ``out_dir`` (created).

    params: optional ``keyframes``, ``segments``, ``analysis_width``, ``dedupe_threshold``,
    ``min_quality``, ``thumb_width``, ``max_frames`` (see ``Params``); other keys are ignored.
    progress: called with the fraction done (0..1, non-decreasing, ending at 1.0), at most ~20
    times. The outputs are a pure function of the scan and params.

    Raises InvalidParams for bad params, InvalidVideo for a missing, unreadable, empty,
    truncated or too long scan, and OSError when out_dir cannot be written.
    """
    effective = parse_params(params)
    reporter = ProgressReporter(progress)
    try:
        analysis = analyse(scan_path, effective, reporter)
        keyframes = choose_keyframes(
            analysis.candidates,
            analysis.frames.quality,
            len(analysis.frames),
            effective.keyframes,
            effective.min_quality,
            effective.dedupe_threshold,
        )
        summary = build_summary(NAME, VERSION, analysis, effective, keyframes)
        reporter.update(0.95)
        files = write_outputs(
            Path(out_dir), summary, analysis.frames, keyframes, analysis.info.fps, effective.thumb_width
        )
    except cv2.error as exc:
        # OpenCV raises on some damaged streams (and odd pixel formats) mid-way; to the caller
        # that is a video it cannot analyse, never a traceback from a library.
        raise InvalidVideo(f"video could not be processed: {_short_message(exc)}") from exc
    reporter.finish()
    logger.info(
        "video_summary done frames=%d keyframes=%d score=%s",
        summary["frame_count"], len(keyframes), summary["quality"]["score"],
    )
    return Result(summary=summary, files=files)


def _short_message(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
