"""Procedural dental-scan-like images and the degradations the network learns to rank below them.

There is no dataset of real scans to train on, so training frames are drawn: gum-coloured
background with soft low-frequency variation and fine mucosa grain, a row of ivory tooth shapes
with shading, enamel grain and dark interproximal gaps, specular highlights, uneven lighting, and
a random rotation and scale. Sizes are in pixels at the analysis width (320 wide by default),
where the network's centre view looks, so degradation strengths are in those pixels too.

A share of scenes are generic textured surfaces (coloured blobs, spots, lines) instead: the
network must judge blur, noise and exposure on texture it was not drawn for, not learn one style.
Everything is a pure function of the numpy Generator passed in.
"""

from __future__ import annotations

import cv2
import numpy as np

# Base colours (BGR): gum pink-red and tooth ivory; each scene jitters them.
_GUM = np.array([105.0, 100.0, 185.0], np.float32)
_TOOTH = np.array([195.0, 218.0, 230.0], np.float32)
DEGRADATIONS = ("blur", "motion_blur", "noise", "over_exposed", "under_exposed", "blur_noise")
# Share of scenes drawn as a generic textured surface instead of gums and teeth.
GENERIC_SHARE = 0.3


def render_scene(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A width x height BGR uint8 image: gums, teeth and highlights, or (GENERIC_SHARE of
    scenes) a generic textured surface, so the network learns what blur and noise do to
    texture in general rather than to one drawing style."""
    if rng.random() < GENERIC_SHARE:
        image = _generic_surface(rng, width, height)
    else:
        gum = _GUM * rng.uniform(0.8, 1.15, 3).astype(np.float32)
        image = np.empty((height, width, 3), np.float32)
        image[:] = gum
        image *= 0.75 + 0.5 * _smooth_noise(rng, width, height, 40)[..., None]
        _draw_teeth(rng, image, width, height)
    # Fine grain (mucosa, enamel): the detail blur removes. Part of the scene, not sensor noise:
    # spatially correlated over ~2 pixels, grey or slightly coloured.
    channels = 3 if rng.random() < 0.5 else 1
    grain = cv2.GaussianBlur(rng.standard_normal((height, width, channels), dtype=np.float32), (3, 3), 0.8)
    image += rng.uniform(4.0, 16.0) * grain.reshape(height, width, channels)
    _draw_highlights(rng, image, width, height)
    # Uneven lighting: a directional ramp and a vignette from the camera's own light.
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((xs - width / 2) * np.cos(angle) + (ys - height / 2) * np.sin(angle)) / max(width, height)
    radius = ((xs - width / 2) ** 2 + (ys - height / 2) ** 2) / (0.5 * (width**2 + height**2))
    light = rng.uniform(0.85, 1.1) * (1 + rng.uniform(0.0, 0.5) * ramp) * (1 - rng.uniform(0.1, 0.4) * radius)
    image *= light[..., None]
    # Random rotation and scale of the whole view, as the hand-held camera turns and moves.
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), rng.uniform(-25, 25), rng.uniform(0.9, 1.3))
    image = cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)
    return np.clip(image, 0, 255).astype(np.uint8)


def degrade(rng: np.random.Generator, image: np.ndarray, kind: str | None = None) -> tuple[np.ndarray, str]:
    """A damaged copy of a BGR uint8 ``image`` and the kind of damage (one of DEGRADATIONS,
    drawn when ``kind`` is None). Strengths are drawn from ranges a scan reviewer would reject."""
    kind = kind or DEGRADATIONS[int(rng.integers(len(DEGRADATIONS)))]
    out = image.astype(np.float32)
    if kind in ("blur", "blur_noise"):
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(1.5, 6.0))
    if kind == "motion_blur":
        length = int(rng.integers(9, 25))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0 / length
        rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, rotation, (length, length))
        out = cv2.filter2D(out, -1, kernel / max(float(kernel.sum()), 1e-6))
    if kind in ("noise", "blur_noise"):
        out += rng.normal(0.0, rng.uniform(12.0, 35.0), out.shape).astype(np.float32)
    if kind == "over_exposed":
        out = out * rng.uniform(1.3, 2.2) + rng.uniform(40.0, 170.0)
    if kind == "under_exposed":
        out = out * rng.uniform(0.1, 0.35)
    return np.clip(out, 0, 255).astype(np.uint8), kind


def compress(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """``image`` through JPEG at a random quality (25..90): the block and ringing artefacts a
    video codec leaves, on clean and damaged frames alike, so they are not taken for detail."""
    quality = int(rng.integers(25, 91))
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buffer, cv2.IMREAD_COLOR)


def _generic_surface(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Coloured blobs of a random scale with hard-edged marks (edges, spots, lines), float32 BGR."""
    cell = int(rng.integers(12, 48))
    blobs = np.stack([_smooth_noise(rng, width, height, cell) for _ in range(3)], axis=2)
    image = (rng.uniform(20, 60) + rng.uniform(100, 180) * blobs).astype(np.float32)
    for _ in range(int(rng.integers(6, 30))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        if rng.random() < 0.5:
            cv2.circle(image, centre, int(rng.integers(3, 24)), colour, -1, cv2.LINE_AA)
        else:
            end = (centre[0] + int(rng.integers(-50, 51)), centre[1] + int(rng.integers(-50, 51)))
            cv2.line(image, centre, end, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    return image


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cell: int) -> np.ndarray:
    """Values in [0, 1] varying smoothly over about ``cell`` pixels."""
    coarse = rng.random((height // cell + 2, width // cell + 2), dtype=np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0.0, 1.0)


def _draw_teeth(rng: np.random.Generator, image: np.ndarray, width: int, height: int) -> None:
    count = int(rng.integers(2, 6))
    spacing = width / count
    centre_y = height * rng.uniform(0.35, 0.65)
    curve = rng.uniform(-0.4, 0.4) * height
    tooth = _TOOTH * rng.uniform(0.85, 1.05, 3).astype(np.float32)
    mask = np.zeros((height, width), np.uint8)
    gaps = np.zeros((height, width), np.uint8)
    for i in range(count):
        x = (i + 0.5) * spacing + rng.uniform(-0.1, 0.1) * spacing
        t = (x / width - 0.5) * 2
        y = centre_y + curve * t * t
        axes = (int(spacing * rng.uniform(0.42, 0.55)), int(height * rng.uniform(0.22, 0.4)))
        centre = (int(x), int(y))
        tilt = rng.uniform(-15, 15)
        cv2.ellipse(mask, centre, axes, tilt, 0, 360, 255, -1, cv2.LINE_AA)
        cv2.ellipse(gaps, centre, axes, tilt, 0, 360, 255, int(rng.integers(2, 5)), cv2.LINE_AA)
    # Shading across each tooth: brighter near the middle of the row, duller at the edges.
    shade = 0.8 + 0.35 * _smooth_noise(rng, width, height, 24)
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    image[:] = image * (1 - alpha) + (tooth * shade[..., None]) * alpha
    dark = (gaps.astype(np.float32) / 255.0)[..., None] * rng.uniform(0.4, 0.7)
    image *= 1 - dark


def _draw_highlights(rng: np.random.Generator, image: np.ndarray, width: int, height: int) -> None:
    spots = np.zeros((height, width), np.float32)
    for _ in range(int(rng.integers(1, 6))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(2, 10)), int(rng.integers(1, 5)))
        cv2.ellipse(spots, centre, axes, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA)
    spots = cv2.GaussianBlur(spots, (0, 0), 1.5)
    image += 200.0 * spots[..., None]
