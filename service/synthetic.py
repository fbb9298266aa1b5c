"""Synthetic scan videos for tests and demos: a panned textured scene with known bad stretches.

The scene is a deterministic texture (smooth blobs, fine grain, hard-edged shapes) larger than
the frame, panned smoothly so consecutive frames differ a little, as a hand-held intraoral camera
would. Two optional stretches are damaged on purpose so an analysis can be checked against ground
truth: one heavily Gaussian-blurred, one badly exposed (over-exposed in its first half,
under-exposed in its second, so both failure directions appear).

cv2 and numpy are imported inside the functions: importing this module must not need them,
because the control plane imports ``service`` without the algorithm extras installed.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

# Pan speed in pixels per frame: enough that keyframes a few frames apart differ clearly,
# small enough that neighbouring frames look alike.
_PAN_PX_PER_FRAME = 2.0
# Gaussian kernel for the blurred stretch (pixels, odd): sigma ~5 px wipes out fine detail.
_BLUR_KSIZE = 31
# Brightness shifts for the badly exposed stretch (0..255 grey levels).
_OVER_EXPOSE_BETA = 170.0
_UNDER_EXPOSE_ALPHA = 0.12


def write_scan_video(
    path: str | os.PathLike[str],
    *,
    frames: int = 120,
    fps: float = 24.0,
    size: tuple[int, int] = (320, 240),
    blur: tuple[int, int] | None = (40, 70),
    exposure: tuple[int, int] | None = (90, 110),
    seed: int = 0,
) -> dict[str, Any]:
    """Write an mp4 (fourcc ``mp4v``) of a panned textured scene and describe what was written.

    path: output file, overwritten. frames: number of frames. fps: frames per second.
    size: (width, height) in pixels. blur: half-open frame range [a, b) that is heavily blurred,
    or None. exposure: half-open frame range [a, b) that is badly exposed (first half over,
    second half under), or None. seed: texture seed; the output is a pure function of the
    arguments.

    Returns ``{"path", "frames", "fps", "width", "height", "blur", "exposure"}`` where blur and
    exposure are ``[a, b]`` lists or None. Raises OSError when OpenCV cannot open the writer.
    """
    import cv2
    import numpy as np

    width, height = int(size[0]), int(size[1])
    if frames < 1 or width < 16 or height < 16 or fps <= 0:
        raise ValueError(f"bad video shape: frames={frames} size={size} fps={fps}")

    pan_x = int(np.ceil(_PAN_PX_PER_FRAME * frames))
    pan_y = height // 4
    texture = _texture(np.random.default_rng(seed), width + pan_x + 8, height + pan_y + 8)

    writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise OSError(f"OpenCV could not open a video writer for {os.fspath(path)!r}")
    try:
        for i in range(frames):
            # Horizontal pan at constant speed with a slow vertical sway.
            x = int(round(_PAN_PX_PER_FRAME * i))
            y = int(round(pan_y / 2 * (1 - np.cos(2 * np.pi * i / max(frames, 2)))))
            frame = np.ascontiguousarray(texture[y : y + height, x : x + width])
            if blur is not None and blur[0] <= i < blur[1]:
                frame = cv2.GaussianBlur(frame, (_BLUR_KSIZE, _BLUR_KSIZE), 0)
            if exposure is not None and exposure[0] <= i < exposure[1]:
                midpoint = (exposure[0] + exposure[1]) / 2
                if i < midpoint:
                    frame = cv2.convertScaleAbs(frame, alpha=1.0, beta=_OVER_EXPOSE_BETA)
                else:
                    frame = cv2.convertScaleAbs(frame, alpha=_UNDER_EXPOSE_ALPHA, beta=0.0)
            writer.write(frame)
    finally:
        writer.release()

    logger.debug("synthetic scan written path=%s frames=%d fps=%s size=%dx%d", path, frames, fps, width, height)
    return {
        "path": os.fspath(path),
        "frames": frames,
        "fps": float(fps),
        "width": width,
        "height": height,
        "blur": [int(blur[0]), int(blur[1])] if blur is not None else None,
        "exposure": [int(exposure[0]), int(exposure[1])] if exposure is not None else None,
    }


def _texture(rng: Any, width: int, height: int) -> Any:
    """A BGR uint8 texture of width x height pixels with structure at coarse and fine scales."""
    import cv2
    import numpy as np

    # Coarse blobs: low-resolution noise upscaled smoothly (features ~24 px across).
    coarse = rng.random((height // 24 + 2, width // 24 + 2, 3), dtype=np.float32)
    blobs = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    # Fine grain: what a sharpness metric sees and blur removes.
    grain = cv2.GaussianBlur(rng.random((height, width, 3), dtype=np.float32), (3, 3), 0)
    image = 40.0 + 140.0 * np.clip(blobs, 0.0, 1.0) + 60.0 * (grain - 0.5)
    image = np.clip(image, 0, 255).astype(np.uint8)
    # Hard-edged shapes, like tooth outlines and gum lines.
    for _ in range(max(8, width * height // 4000)):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            cv2.circle(image, centre, int(rng.integers(4, 20)), colour, -1, cv2.LINE_AA)
        else:
            end = (centre[0] + int(rng.integers(-40, 41)), centre[1] + int(rng.integers(-40, 41)))
            cv2.line(image, centre, end, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    return image
