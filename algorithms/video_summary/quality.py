"""Cheap per-frame measures beside the network's score: sharpness, exposure and motion.

They explain a score (why a frame is poor) and see what the network's 64x48 views cannot:
sharpness is measured on the whole frame at ``analysis_width``. Everything runs on a small grey
copy, so it costs a fraction of decoding.
"""

from __future__ import annotations

import cv2
import numpy as np

# Grey levels at or beyond these count as clipped (crushed shadows, blown highlights).
_CLIP_LOW, _CLIP_HIGH = 4, 251
# Mean brightness (0..1) inside this band is well exposed; the score falls linearly to 0 at the
# outer edges.
_BRIGHT_OK = (0.25, 0.75)
_BRIGHT_ZERO = (0.05, 0.95)
# Share of clipped pixels at which the exposure score reaches 0.
_CLIP_ZERO = 0.3


def downscale(frame: np.ndarray, width: int) -> np.ndarray:
    """Return a BGR ``frame`` at most ``width`` pixels wide (aspect kept); never upscales, and a
    frame already narrow enough is returned as is.

    Halved with INTER_AREA while at least twice too wide (OpenCV's fast exact-2x path, the same
    box average), then one INTER_AREA step to the exact size. Runs in the decode thread.
    """
    height, full_width = frame.shape[:2]
    if full_width <= width:
        return frame
    target = (width, max(1, round(height * width / full_width)))
    small = frame
    while small.shape[1] >= 2 * width and small.shape[1] % 2 == 0 and small.shape[0] % 2 == 0:
        small = cv2.resize(small, (small.shape[1] // 2, small.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if (small.shape[1], small.shape[0]) != target:
        small = cv2.resize(small, target, interpolation=cv2.INTER_AREA)
    return small


def to_gray(small: np.ndarray) -> np.ndarray:
    return small if small.ndim == 2 else cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)


def frame_metrics(gray: np.ndarray, previous: np.ndarray | None) -> tuple[float, float, float]:
    """Return ``(sharpness, exposure, motion)`` for one small grey frame.

    sharpness: variance of the Laplacian (grey levels squared; depends on analysis_width, hence
    normalised per scan later). exposure: score in [0, 1], 1 = well exposed. motion: mean absolute
    difference to ``previous`` in [0, 1], 0 for the first frame.
    """
    pixels = float(gray.size)
    # int16 Laplacian (exact for uint8 input) and variance as E[L^2] - E[L]^2 from two
    # reductions: several times cheaper than a float Laplacian plus meanStdDev.
    laplacian = cv2.Laplacian(gray, cv2.CV_16S)
    mean_lap = cv2.sumElems(laplacian)[0] / pixels
    sharpness = max(0.0, cv2.norm(laplacian, cv2.NORM_L2) ** 2 / pixels - mean_lap**2)
    brightness = cv2.mean(gray)[0] / 255.0
    clipped = 1.0 - cv2.countNonZero(cv2.inRange(gray, _CLIP_LOW + 1, _CLIP_HIGH - 1)) / pixels
    motion = 0.0
    if previous is not None and previous.shape == gray.shape:
        motion = cv2.norm(gray, previous, cv2.NORM_L1) / (255.0 * pixels)
    return sharpness, exposure_score(brightness, clipped), motion


def exposure_score(brightness: float, clipped: float) -> float:
    """Exposure score in [0, 1] from mean brightness (0..1) and clipped-pixel share (0..1)."""
    low_ok, high_ok = _BRIGHT_OK
    low_zero, high_zero = _BRIGHT_ZERO
    if brightness < low_ok:
        level = (brightness - low_zero) / (low_ok - low_zero)
    elif brightness > high_ok:
        level = (high_zero - brightness) / (high_zero - high_ok)
    else:
        level = 1.0
    clip = 1.0 - clipped / _CLIP_ZERO
    return min(1.0, max(0.0, level)) * min(1.0, max(0.0, clip))
