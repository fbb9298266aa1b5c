"""Cheap per-frame measures beside the network's score: sharpness, exposure and motion.

They explain a score (why a frame is poor) and see what the network's 64x48 views cannot:
sharpness is measured on the whole frame at ``analysis_width``. Everything runs on the frame's
small luma plane as the decoder gives it (video range, 16..235), so it costs a fraction of
decoding; results are given in full-range grey units (0..255), as a grey image would give them.
"""

from __future__ import annotations

import cv2
import numpy as np

# Video-range luma: black at 16, white at 235; one full-range grey level is 219/255 of a step.
_BLACK, _RANGE = 16, 219
_TO_FULL = 255.0 / _RANGE
# Luma at or beyond these counts as clipped (crushed shadows, blown highlights): grey 4 and 251.
_CLIP_LOW, _CLIP_HIGH = 19, 232
# Luma values that count as not clipped: strictly inside those limits (inclusive bounds).
UNCLIPPED = (_CLIP_LOW + 1, _CLIP_HIGH - 1)
# Mean brightness (0..1) inside this band is well exposed; the score falls linearly to 0 at the
# outer edges.
_BRIGHT_OK = (0.25, 0.75)
_BRIGHT_ZERO = (0.05, 0.95)
# Share of clipped pixels at which the exposure score reaches 0.
_CLIP_ZERO = 0.3


def shrink_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized down to ``size`` (width, height): halved while at least twice too big
    (``halve_towards``), then one INTER_AREA step to the exact size."""
    small = halve_towards(image, size)
    if (small.shape[1], small.shape[0]) != tuple(size):
        small = cv2.resize(small, size, interpolation=cv2.INTER_AREA)
    return small


def halve_towards(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Halve ``image`` with INTER_AREA while it is at least twice ``size`` (width, height) and
    its sides are even: OpenCV's exact-2x path, a 2x2 box average several times cheaper than a
    general INTER_AREA resize by the same overall factor."""
    width, height = size
    while (image.shape[1] >= 2 * width and image.shape[0] >= 2 * height
           and image.shape[1] % 2 == 0 and image.shape[0] % 2 == 0):
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return image


def frame_metrics(luma: np.ndarray, previous: np.ndarray | None) -> tuple[float, float, float]:
    """Return ``(sharpness, exposure, motion)`` for one small frame's video-range luma plane.

    sharpness: variance of the Laplacian in full-range grey levels squared (depends on
    analysis_width, hence normalised per scan later). exposure: score in [0, 1], 1 = well
    exposed. motion: mean absolute difference to ``previous`` in [0, 1], 0 for the first frame.
    Measured on the luma directly and scaled: stretching it to full range first cost as much as
    all of these measures together.
    """
    # int16 Laplacian (exact for uint8 input) and its sum and sum of squares (exact in double):
    # several times cheaper than a float Laplacian plus meanStdDev.
    laplacian = cv2.Laplacian(luma, cv2.CV_16S)
    difference = None
    if previous is not None and previous.shape == luma.shape:
        difference = cv2.norm(luma, previous, cv2.NORM_L1)
    return metrics_from_sums(
        luma.size,
        cv2.sumElems(laplacian)[0],
        cv2.norm(laplacian, cv2.NORM_L2SQR),
        cv2.sumElems(luma)[0],
        cv2.countNonZero(cv2.inRange(luma, *UNCLIPPED)),
        difference,
    )


def metrics_from_sums(
    pixels: float,
    laplacian_sum: float,
    laplacian_squares: float,
    luma_sum: float,
    unclipped: float,
    difference: float | None,
) -> tuple[float, float, float]:
    """``frame_metrics`` from the plane's sums, however they were taken (OpenCV here, torch in
    torch_frames.metric_sums): the sum of the Laplacian and of its squares, the sum of the luma,
    the count of luma values strictly inside the clipping limits and the sum of absolute
    differences to the previous plane (None for none). The sums are integers, so both ways give
    the same figures to the last bit."""
    mean_lap = laplacian_sum / pixels
    sharpness = max(0.0, laplacian_squares / pixels - mean_lap**2) * _TO_FULL**2
    brightness = min(1.0, max(0.0, (luma_sum / pixels - _BLACK) / _RANGE))
    clipped = 1.0 - unclipped / pixels
    motion = 0.0 if difference is None else min(1.0, difference / (_RANGE * pixels))
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
