"""Keyframe candidates kept during the single decoding pass.

The pass cannot go back for a frame, so the few frames that might become keyframes are kept at
full resolution as they go by: the best few of each of ``slots`` equal-length windows. When the
container's frame count is unknown or too low, windows start short and pairs of neighbours are
merged (window length doubled) whenever the scan outgrows them, so memory stays bounded and the
windows stay roughly equal whatever the real length. Final selection re-windows at the end.

A frame is copied only when it ranks among its window's best (the decoder reuses its
buffers), which costs little: a few copies per window, kept in the decoder's YUV (half the
bytes of BGR) and converted only when written. When raw frames would exceed
RAW_BUDGET_BYTES (4K scans, many keyframes), a window's candidates are JPEG-encoded once the
scan has moved past it: windows are visited in time order, so each frame is encoded at most
once and only the few final candidates of each window ever are.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from .picture import Picture

logger = logging.getLogger(__name__)

# Candidates kept per window at most; more gives selection a choice when the best is a duplicate.
PER_WINDOW = 3
# Full-resolution candidates may take about this much memory (bytes); beyond it, closed windows
# are held JPEG-encoded instead.
RAW_BUDGET_BYTES = 512 * 1024 * 1024
# Rough JPEG size relative to the raw frame at JPEG_QUALITY, to size the encoded pool.
_JPEG_RATIO = 8
# JPEG quality (0..100) of keyframe images.
JPEG_QUALITY = 95


@dataclass
class Candidate:
    """A frame that may become a keyframe.

    index: frame index (from 0). quality: the network's score (0..1). embedding: its unit
    embedding, for near-duplicate checks and comparisons. Exactly one of ``image`` (the frame at
    full resolution, as decoded) and ``jpeg`` (its encoded bytes) is set.
    """

    index: int
    quality: float
    embedding: np.ndarray
    image: Picture | None = None
    jpeg: bytes | None = None

    def rendered_jpeg(self, image: np.ndarray) -> bytes:
        """The frame as JPEG bytes (JPEG_QUALITY); ``image`` is ``self.bgr()``, made once by the
        caller, who needs it too."""
        return self.jpeg if self.jpeg is not None else encode_jpeg(image)

    def seal(self) -> None:
        """Hold the frame as JPEG bytes instead of a raw array (idempotent)."""
        if self.image is not None:
            self.jpeg = encode_jpeg(self.image.bgr())
            self.image = None

    def bgr(self) -> np.ndarray:
        """The frame upright, as a full-resolution BGR uint8 array."""
        if self.image is not None:
            return self.image.bgr()
        assert self.jpeg is not None
        return cv2.imdecode(np.frombuffer(self.jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)


def encode_jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise cv2.error("JPEG encoding failed")
    return buf.tobytes()


class CandidatePool:
    """The best PER_WINDOW frames of each of ``slots`` equal-length windows, seen in one pass.

    slots: number of windows kept at any time. expected_frames: the container's frame count, or
    0 when unknown (windows then start one frame long and grow).
    """

    def __init__(self, slots: int, expected_frames: int) -> None:
        self._slots = max(1, slots)
        self._window_len = max(1, math.ceil(expected_frames / self._slots)) if expected_frames > 0 else 1
        self._windows: list[list[Candidate]] = [[] for _ in range(self._slots)]
        self._keep = PER_WINDOW
        self._encode: bool | None = None  # decided on the first frame, when its size is known
        self._active = 0  # window the last frame fell in; earlier windows are closed

    def offer(self, index: int, quality: float, embedding: np.ndarray, frame: Picture) -> None:
        """Consider frame ``index`` (offered in increasing order); keep it if it ranks among
        the best of its window by ``quality``.

        frame: the full-resolution frame as decoded; copied when kept, as the decoder reuses
        its buffers (only frames that rank are copied, a few per window).
        """
        if self._encode is None:
            self._plan_memory(frame.nbytes)
        window = index // self._window_len
        if window != self._active:
            self._close(self._active)
            while window >= self._slots:
                self._merge_pairs()
                window = index // self._window_len
            self._active = window
        bucket = self._windows[window]
        if len(bucket) >= self._keep:
            worst = min(bucket, key=lambda c: (c.quality, -c.index))
            # Strictly better only: on ties the earlier frame stays, which keeps runs repeatable.
            if quality <= worst.quality:
                return
            bucket.remove(worst)
        bucket.append(Candidate(index, quality, embedding, image=frame.copy()))

    def candidates(self) -> list[Candidate]:
        """Every kept candidate, in frame order (closes the last window)."""
        self._close(self._active)
        return sorted((c for bucket in self._windows for c in bucket), key=lambda c: c.index)

    def _plan_memory(self, frame_bytes: int) -> None:
        per_slot = RAW_BUDGET_BYTES // max(1, frame_bytes * self._slots)
        self._encode = per_slot < 1
        if self._encode:
            per_slot = RAW_BUDGET_BYTES * _JPEG_RATIO // max(1, frame_bytes * self._slots)
        self._keep = int(min(PER_WINDOW, max(1, per_slot)))
        logger.debug(
            "candidate memory plan frame_bytes=%d slots=%d keep=%d encode=%s",
            frame_bytes, self._slots, self._keep, self._encode,
        )

    def _close(self, window: int) -> None:
        if self._encode and window < self._slots:
            for candidate in self._windows[window]:
                candidate.seal()

    def _merge_pairs(self) -> None:
        merged: list[list[Candidate]] = []
        for i in range(0, self._slots, 2):
            pair = self._windows[i] + (self._windows[i + 1] if i + 1 < self._slots else [])
            pair.sort(key=lambda c: (-c.quality, c.index))
            merged.append(pair[: self._keep])
        merged.extend([] for _ in range(self._slots - len(merged)))
        self._windows = merged
        self._window_len *= 2
