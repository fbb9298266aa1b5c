"""video_summary: frame quality by a small CNN, keyframes, a contact sheet and scan-to-scan change.

``run(scan_path, params, out_dir, progress)`` decodes the scan once (in a background thread that
feeds batches to the network; on a GPU worker with the GPU's decoder when it can, hwdecode.py),
scores every frame with the frame network (model.py: quality in [0, 1] and a unit embedding),
measures cheap metrics beside it (sharpness = variance of the Laplacian at ``analysis_width``,
exposure, motion; with OpenCV on the CPU, with torch on the GPU, gpu.py), picks keyframes spread
over the scan (best good frame per equal-length window, skipping near-duplicates by embedding
similarity) and, when ``previous_summary`` is given, compares the scan with an earlier one
(compare.py). It writes:

- ``summary.json`` (version 3): ``algorithm``, ``algorithm_version``, ``model`` {``version``
  (param ``model_version`` or null), ``sha256``, ``architecture``, ``device``}, ``frame_count``,
  ``fps``, ``fps_assumed``, ``duration_s``, ``width``, ``height``, ``quality`` {``score`` (mean
  network quality), ``poor_frame_fraction`` (poor: scored under ``min_quality``, or a blur
  outlier, far less sharp than the scan's sharp frames), ``sharpness_median``, ``exposure_mean``,
  ``motion_mean``}, ``segments`` [{``index``, ``start_frame``, ``end_frame`` (inclusive),
  ``start_s``, ``end_s``, ``quality_mean``, ``poor_fraction``, ``sharpness_mean``,
  ``exposure_mean``, ``motion_mean``, ``embedding``}], ``keyframes`` [{``index`` (frame),
  ``timestamp_s``, ``file``, ``quality``, ``sharpness``, ``exposure``, ``motion``,
  ``embedding``}], ``contact_sheet``, ``params`` (effective, without local paths),
  ``processing`` {``decoder`` ("hardware" or "software": which decoder gave the frames),
  ``analysis`` ("opencv" or "torch": what measured them)} and, with ``previous_summary``,
  ``comparison`` (see compare.py).
- ``keyframes/kf_XX_fNNNNNN.jpg``, ``contact_sheet.jpg``, ``frames.csv``.

Changes from version 2 (same fields): frames are decoded with PyAV and analysed from their
YUV planes (decode.py, picture.py), the display rotation is honoured as before, and the
network is narrower and retrained on views with 4:2:0 colour; scores and embeddings differ
from version 2's, so a comparison needs both scans analysed by the same version.
Changes from version 1: ``quality`` is the network's score (was a product of the OpenCV
metrics; ``sharpness_reference`` is gone), embeddings are stored, ``model`` and ``comparison``
are new, ``dedupe_threshold`` became ``dedupe_similarity``.

Scores are in [0, 1]; sharpness is in grey levels squared at ``analysis_width``; embeddings
are unit vectors rounded to 4 decimals. This package imports nothing else of the project.
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
from .compare import compare, load_previous
from .errors import AlgorithmError, InvalidModel, InvalidParams, InvalidVideo
from .keyframes import blur_outliers, choose_keyframes
from .measure import BACKENDS
from .model import ARCHITECTURE, DEFAULT_WEIGHTS, file_sha256, validate_model
from .outputs import write_outputs
from .params import Params, parse_params
from .progress import ProgressReporter
from .report import build_summary
from .scorer import scorer_for

__all__ = [
    "DEFAULT_WEIGHTS",
    "NAME",
    "VERSION",
    "AlgorithmError",
    "InvalidModel",
    "InvalidParams",
    "InvalidVideo",
    "Params",
    "Result",
    "run",
    "run_task",
    "validate_model",
]

NAME = "video_summary"
# Bump when outputs for the same scan and params would change.
VERSION = "3"

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
    *,
    analysis_backend: str = "auto",
) -> Result:
    """Analyse the video at ``scan_path`` and write the outputs to ``out_dir`` (created).

    params: optional ``keyframes``, ``segments``, ``analysis_width``, ``dedupe_similarity``,
    ``min_quality``, ``thumb_width``, ``max_frames``, ``batch_size``, ``device``, ``decoder``,
    ``model_version``, ``model_path``, ``previous_summary`` (see ``Params``); other keys are
    ignored. progress: called with the fraction done (0..1, non-decreasing, ending at 1.0), at
    most ~20 times. On one device the outputs are a pure function of the scan, the params and
    the weights. analysis_backend: "auto" (torch on CUDA, OpenCV on the CPU), "opencv" or
    "torch" (the GPU path on whatever device, for tests and benchmarks); the platform never
    sets it.

    Raises InvalidParams for bad params (an unusable previous summary included), InvalidModel
    for unusable weights, InvalidVideo for a missing, unreadable, empty, truncated or too long
    scan, and OSError when out_dir cannot be written.
    """
    if analysis_backend not in BACKENDS:
        raise ValueError(f"analysis_backend must be one of {', '.join(BACKENDS)}, got {analysis_backend!r}")
    effective = parse_params(params)
    weights = effective.model_path or DEFAULT_WEIGHTS
    scorer = scorer_for(weights, effective.device)
    sha256 = file_sha256(weights)
    # Checked before decoding: a bad previous summary should not cost a whole pass.
    previous = load_previous(effective.previous_summary, sha256, VERSION) if effective.previous_summary else None
    model = {"version": effective.model_version, "sha256": sha256, "architecture": ARCHITECTURE,
             "device": scorer.device.type}
    reporter = ProgressReporter(progress)
    try:
        analysis = analyse(scan_path, effective, scorer, reporter, analysis_backend)
        keyframes = choose_keyframes(
            analysis.candidates,
            len(analysis.frames),
            effective.keyframes,
            effective.min_quality,
            effective.dedupe_similarity,
            blur_outliers(analysis.frames.sharpness),
        )
        summary = build_summary(NAME, VERSION, model, analysis, effective, keyframes)
        if previous is not None:
            summary["comparison"] = compare(summary, previous)
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
        "video_summary done frames=%d keyframes=%d score=%s device=%s decoder=%s analysis=%s",
        summary["frame_count"], len(keyframes), summary["quality"]["score"], scorer.device,
        analysis.decoder, analysis.backend,
    )
    return Result(summary=summary, files=files)


def run_task(
    scan_path: str | os.PathLike[str],
    params: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """The descriptor's ``python`` runner (scantide-algorithm.yaml): ``run`` and the result the task
    records, its outputs by role and the headline figures of summary.json."""
    summary = run(scan_path, params, out_dir, progress).summary
    keyframes = summary.get("keyframes", [])
    return {
        "outputs": {"summary": "summary.json", "contact_sheet": summary.get("contact_sheet"),
                    "keyframes": [k["file"] for k in keyframes]},
        "summary": {"frame_count": summary.get("frame_count"), "fps": summary.get("fps"),
                    "duration_s": summary.get("duration_s"), "width": summary.get("width"),
                    "height": summary.get("height"), "keyframes": len(keyframes),
                    "quality_score": summary.get("quality", {}).get("score")},
    }


def _short_message(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
