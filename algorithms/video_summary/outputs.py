"""Writing the output folder: keyframe JPEGs, contact sheet, frames.csv and summary.json.

summary.json is written last, so a folder holding it is complete.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import cv2

from .analysis import FrameTable
from .candidates import JPEG_QUALITY, Candidate
from .report import (
    CONTACT_SHEET,
    FRAMES_CSV,
    FRAMES_CSV_HEADER,
    SUMMARY_JSON,
    frame_rows,
    keyframe_label,
)
from .sheet import contact_sheet

logger = logging.getLogger(__name__)


def write_outputs(
    out_dir: Path,
    summary: dict[str, Any],
    frames: FrameTable,
    keyframes: list[Candidate],
    fps: float,
    thumb_width: int,
) -> list[str]:
    """Write every output under ``out_dir`` (created) and return their paths relative to it, sorted.

    ``summary["keyframes"]`` must list ``keyframes`` in the same order. fps: frames per second
    for frames.csv timestamps (unrounded, as the summary used). Raises OSError when the
    folder or a file cannot be written.
    """
    (out_dir / "keyframes").mkdir(parents=True, exist_ok=True)
    files: list[str] = []

    images = []
    for candidate, entry in zip(keyframes, summary["keyframes"], strict=True):
        _write_bytes(out_dir / entry["file"], candidate.jpeg_bytes())
        files.append(entry["file"])
        images.append(candidate.bgr())

    labels = [keyframe_label(entry) for entry in summary["keyframes"]]
    sheet = contact_sheet(images, labels, thumb_width)
    ok, buf = cv2.imencode(".jpg", sheet, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError("could not encode the contact sheet")
    _write_bytes(out_dir / CONTACT_SHEET, buf.tobytes())
    files.append(CONTACT_SHEET)

    with open(out_dir / FRAMES_CSV, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(FRAMES_CSV_HEADER)
        writer.writerows(frame_rows(frames, fps))
    files.append(FRAMES_CSV)

    (out_dir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    files.append(SUMMARY_JSON)
    logger.info("outputs written out_dir=%s files=%d", out_dir, len(files))
    return sorted(files)


def _write_bytes(path: Path, data: bytes) -> None:
    # Python's own file I/O rather than cv2.imwrite: failures raise OSError with the reason.
    path.write_bytes(data)
