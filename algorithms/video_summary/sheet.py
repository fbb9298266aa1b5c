"""Contact sheet: keyframe thumbnails in a near-square grid, each captioned underneath."""

from __future__ import annotations

import math

import cv2
import numpy as np

# Gap between tiles and around the sheet (pixels) and its grey level.
_GAP = 4
_BACKGROUND = 32  # grey level: a scalar fill is ~50x faster than broadcasting a BGR triple
_TEXT = (235, 235, 235)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def contact_sheet(images: list[np.ndarray], labels: list[str], tile_width: int) -> np.ndarray:
    """Return a BGR sheet of ``images`` (BGR uint8), each ``tile_width`` pixels wide with its label.

    Tiles share the first image's aspect ratio so the grid stays regular even if the scan changed
    resolution midway. An empty list gives a single blank tile.
    """
    first = images[0] if images else np.zeros((tile_width * 3 // 4, tile_width, 3), np.uint8)
    tile_height = max(1, round(first.shape[0] * tile_width / first.shape[1]))
    caption_height = max(16, tile_width // 12)
    font_scale = caption_height / 36.0
    thickness = 1 if tile_width < 480 else 2

    count = max(1, len(images))
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    cell_w, cell_h = tile_width + _GAP, tile_height + caption_height + _GAP
    sheet = np.empty((rows * cell_h + _GAP, cols * cell_w + _GAP, 3), np.uint8)
    sheet.fill(_BACKGROUND)

    for i, (image, label) in enumerate(zip(images, labels)):
        x = _GAP + (i % cols) * cell_w
        y = _GAP + (i // cols) * cell_h
        sheet[y : y + tile_height, x : x + tile_width] = _fit(image, tile_width, tile_height)
        (_, text_h), _ = cv2.getTextSize(label, _FONT, font_scale, thickness)
        baseline_y = y + tile_height + (caption_height + text_h) // 2
        cv2.putText(sheet, label, (x + 2, baseline_y), _FONT, font_scale, _TEXT, thickness, cv2.LINE_AA)
    return sheet


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    # INTER_AREA when shrinking avoids aliasing; scans smaller than a tile are enlarged smoothly.
    shrinking = image.shape[1] >= width
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
