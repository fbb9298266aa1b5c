"""Per-frame quality: sharpness, exposure and motion, and the score that combines them.

Everything per frame runs on a small grey copy (``analysis_width`` wide) so the analysis costs
a fraction of decoding. The combined score needs the scan's own sharpness distribution, so it is
computed with a reference (a high percentile) that is provisional during the pass and final after.
"""

from __future__ import annotations

import cv2
import numpy as np

# Side of the grey thumbnails used to compare keyframe candidates (pixels).
THUMB_SIDE = 32
# Percentile of the scan's sharpness that counts as "fully sharp": a high percentile rather than
# the max so one noisy frame cannot make every other frame look blurred.
SHARPNESS_PERCENTILE = 90.0
# Grey levels at or beyond these count as clipped (crushed shadows, blown highlights).
_CLIP_LOW, _CLIP_HIGH = 4, 251
# Mean brightness (0..1) inside this band is well exposed; the score falls linearly to 0 at the
# outer edges.
_BRIGHT_OK = (0.25, 0.75)
_BRIGHT_ZERO = (0.05, 0.95)
# Share of clipped pixels at which the exposure score reaches 0.
_CLIP_ZERO = 0.3
# Mean absolute frame difference (0..1) at which motion costs its full weight: fast motion means
# motion blur and rolling-shutter smear, which the Laplacian does not always catch.
_MOTION_FULL = 0.25
_MOTION_WEIGHT = 0.3

def downscale_gray(frame: np.ndarray, width: int) -> np.ndarray:
    """Return a grey uint8 copy of a BGR ``frame`` at most ``width`` pixels wide (aspect kept).

    Per-frame cost is dominated by memory traffic over the full-resolution frame, so the frame is
    read once, by the grey conversion (one third of the bytes out). The grey image is then halved
    with INTER_AREA while at least twice too wide (OpenCV's fast exact-2x path, the same box
    average) and finished with one INTER_AREA step. Never upscales.
    """
    gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    height, full_width = gray.shape[:2]
    if full_width <= width:
        return gray
    target = (width, max(1, int(round(height * width / full_width))))
    while gray.shape[1] >= 2 * width and gray.shape[1] % 2 == 0 and gray.shape[0] % 2 == 0:
        gray = cv2.resize(gray, (gray.shape[1] // 2, gray.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if (gray.shape[1], gray.shape[0]) != target:
        gray = cv2.resize(gray, target, interpolation=cv2.INTER_AREA)
    return gray


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


def thumbnail(gray: np.ndarray) -> np.ndarray:
    """THUMB_SIDE x THUMB_SIDE float32 grey thumbnail in [0, 1], for near-duplicate checks."""
    small = cv2.resize(gray, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


def thumb_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails, in [0, 1]."""
    return float(np.mean(np.abs(a - b)))


def sharpness_reference(sharpness: np.ndarray) -> float:
    """The scan's "fully sharp" level: its SHARPNESS_PERCENTILE-th percentile (0 if empty)."""
    if sharpness.size == 0:
        return 0.0
    return float(np.percentile(sharpness, SHARPNESS_PERCENTILE))


def quality_scores(
    sharpness: np.ndarray, exposure: np.ndarray, motion: np.ndarray, reference: float
) -> np.ndarray:
    """Quality in [0, 1] per frame: relative sharpness x exposure, softened by motion.

    A product, so a frame that is blurred or badly exposed scores low whatever else it has.
    Relative sharpness is sharpness / reference capped at 1, which makes the score independent
    of resolution and of how much texture the scene has. A reference of 0 (every frame flat)
    gives relative sharpness 0.
    """
    sharpness = np.asarray(sharpness, dtype=np.float64)
    if reference > 0:
        relative = np.minimum(sharpness / reference, 1.0)
    else:
        relative = np.zeros_like(sharpness)
    steadiness = 1.0 - np.minimum(np.asarray(motion, dtype=np.float64) / _MOTION_FULL, 1.0)
    return relative * np.asarray(exposure, dtype=np.float64) * (1.0 - _MOTION_WEIGHT + _MOTION_WEIGHT * steadiness)


def quality_score(sharpness: float, exposure: float, motion: float, reference: float) -> float:
    """Scalar form of ``quality_scores`` for one frame (used while the pass is running)."""
    relative = min(sharpness / reference, 1.0) if reference > 0 else 0.0
    steadiness = 1.0 - min(motion / _MOTION_FULL, 1.0)
    return relative * exposure * (1.0 - _MOTION_WEIGHT + _MOTION_WEIGHT * steadiness)
