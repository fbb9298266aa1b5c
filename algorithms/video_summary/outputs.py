"""Writing the output folder: keyframe JPEGs, contact sheet, frames.csv and summary.json.

summary.json is written last, so a folder holding it is complete.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

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
    labels = [keyframe_label(entry) for entry in summary["keyframes"]]
    # Encoding JPEGs is most of this function's work and OpenCV releases the GIL while it runs:
    # the keyframes are encoded on every core while this thread builds and encodes the contact
    # sheet (not in the pool: OpenCV's first putText in a fresh thread costs ~40 ms). frames.csv
    # comes after: pure Python beside the encoders measured slower than one after the other.
    images = [candidate.bgr() for candidate in keyframes]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        encoded = pool.map(Candidate.rendered_jpeg, keyframes, images)  # all submitted now
        sheet_bytes = _encode_sheet(images, labels, thumb_width)
        jpegs = list(encoded)
    with open(out_dir / FRAMES_CSV, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(FRAMES_CSV_HEADER)
        writer.writerows(frame_rows(frames, fps))
    files = []
    for jpeg, entry in zip(jpegs, summary["keyframes"], strict=True):
        _write_bytes(out_dir / entry["file"], jpeg)
        files.append(entry["file"])
    _write_bytes(out_dir / CONTACT_SHEET, sheet_bytes)
    files += [CONTACT_SHEET, FRAMES_CSV]

    (out_dir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    files.append(SUMMARY_JSON)
    logger.info("outputs written out_dir=%s files=%d", out_dir, len(files))
    return sorted(files)


def _encode_sheet(images: list[np.ndarray], labels: list[str], thumb_width: int) -> bytes:
    sheet = contact_sheet(images, labels, thumb_width)
    ok, buf = cv2.imencode(".jpg", sheet, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError("could not encode the contact sheet")
    return buf.tobytes()


def _write_bytes(path: Path, data: bytes) -> None:
    # Python's own file I/O rather than cv2.imwrite: failures raise OSError with the reason.
    path.write_bytes(data)
