"""Decoded frames kept in their native YUV 4:2:0, and the small views the analysis needs.

Converting a whole frame to BGR costs about as much as decoding it, yet the analysis needs the
frame only small (``analysis_width``), and only the few keyframes at full resolution. So a 4:2:0
frame is shrunk plane by plane and stays YUV: the network's input is made from the small planes
(model.model_input, which converts just its two 64x48 views), the metrics read the luma plane,
and a ``Picture`` keeps the full-resolution planes and converts them only when a
keyframe is written. 4:2:0 comes in two layouts: I420 (three planes, what FFmpeg's software
decoders give) and NV12 (luma plus one plane of interleaved U/V pairs, what a hardware decoder
gives); both shrink to the same I420 views. Other pixel formats (4:2:2 MJPEG, 10-bit, odd
sizes) arrive as BGR from FFmpeg and are converted to small I420 once.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .quality import shrink_to

# Display rotation (degrees counter-clockwise, as in the container's display matrix) -> cv2.rotate code.
_ROTATE = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}


@dataclass(frozen=True)
class Picture:
    """One full-resolution frame as decoded.

    planes: (Y, U, V) of an I420 frame with even sides (U and V half size); (Y, UV) of an NV12
    frame with even sides (UV: half height x half width x 2, the U/V pairs); or (BGR,) for any
    other format. They may be views into the decoder's buffers (``copy`` before keeping one).
    rotation: degrees counter-clockwise (0, 90, 180, 270) that turn the stored frame upright.
    """

    planes: tuple[np.ndarray, ...]
    rotation: int = 0

    @property
    def layout(self) -> str:
        """"i420", "nv12" or "bgr"."""
        return _LAYOUTS[len(self.planes)]

    @property
    def i420(self) -> bool:
        return len(self.planes) == 3

    @property
    def nbytes(self) -> int:
        return sum(p.shape[0] * p.shape[1] * (p.shape[2] if p.ndim == 3 else 1) for p in self.planes)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as displayed, rotation applied."""
        height, width = self.planes[0].shape[:2]
        return (height, width) if self.rotation in (90, 270) else (width, height)

    def copy(self) -> Picture:
        """A copy that owns its memory (the decoder reuses its buffers)."""
        return Picture(tuple(np.array(p, order="C", copy=True) for p in self.planes), self.rotation)

    def bgr(self) -> np.ndarray:
        """The frame upright, as a full-resolution BGR uint8 array."""
        layout = self.layout
        if layout == "i420":
            image = planes_bgr(self.planes)  # type: ignore[arg-type]
        elif layout == "nv12":
            image = _nv12_bgr(*self.planes)
        else:
            image = self.planes[0]
        return _upright(image, self.rotation)


_LAYOUTS = {3: "i420", 2: "nv12", 1: "bgr"}


# A small frame as I420 planes: Y (h x w, even sides), U and V (h/2 x w/2); video range, BT.601.
Planes = tuple[np.ndarray, np.ndarray, np.ndarray]


def analysis_views(picture: Picture, width: int) -> Planes:
    """``picture`` upright and at most ``width`` pixels wide (never upscaled; even sides, the
    aspect kept to within a pixel) as I420 planes.

    An I420 frame is shrunk plane by plane with 2x2 box averages (quality.shrink_to) and never
    converted here: the network's input is made from the planes (model.model_input) and the
    metrics read the luma plane (quality.frame_metrics). An NV12 frame's U/V plane is split
    into U and V first, so it gives the views of the same frame as I420. Other formats are
    shrunk in BGR and converted to I420 once, small.
    """
    w, h = small_size(picture.planes[0].shape, width, picture.rotation)
    layout = picture.layout
    if layout == "bgr":
        return i420_planes(_upright(shrink_to(picture.planes[0], (w, h)), picture.rotation))
    sizes = ((w, h), (w // 2, h // 2), (w // 2, h // 2))
    if layout == "nv12":
        # Split first: OpenCV's area step sums a two-channel image in another order, and the
        # views must not depend on the decoder's layout.
        luma, pairs = picture.planes
        planes = tuple(shrink_to(plane, size) for plane, size in zip((luma, *cv2.split(pairs)), sizes, strict=True))
    else:
        planes = tuple(shrink_to(plane, size) for plane, size in zip(picture.planes, sizes, strict=True))
    y, u, v = (_upright(plane, picture.rotation) for plane in planes)
    return y, u, v


def i420_planes(bgr: np.ndarray) -> Planes:
    """A BGR image with even sides as I420 planes, as a video decoder gives them (training's
    drawn views go through this, so the network sees what it sees in a video)."""
    height, width = bgr.shape[:2]
    flat = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).reshape(-1)
    luma, quarter = width * height, width * height // 4
    return (flat[:luma].reshape(height, width), flat[luma : luma + quarter].reshape(height // 2, width // 2),
            flat[luma + quarter :].reshape(height // 2, width // 2))


def planes_bgr(planes: Planes) -> np.ndarray:
    """I420 planes as one BGR image."""
    return cv2.cvtColor(_pack(*planes), cv2.COLOR_YUV2BGR_I420)


def _nv12_bgr(luma: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    height, width = luma.shape
    packed = np.concatenate([luma.reshape(-1), pairs.reshape(-1)]).reshape(height * 3 // 2, width)
    return cv2.cvtColor(packed, cv2.COLOR_YUV2BGR_NV12)


def small_size(shape: tuple[int, ...], width: int, rotation: int) -> tuple[int, int]:
    """(width, height), even, to shrink a stored frame of ``shape`` to, so that it is at most
    ``width`` wide once upright."""
    turned = rotation in (90, 270)
    height, full_width = shape[:2]
    if turned:
        height, full_width = full_width, height
    if full_width > width:
        height, full_width = max(1, round(height * width / full_width)), width
    height, full_width = max(2, height - height % 2), max(2, full_width - full_width % 2)
    return (height, full_width) if turned else (full_width, height)


def _pack(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The three planes as one (h * 3/2) x w I420 array, as cv2.cvtColor wants it."""
    h, w = y.shape
    return np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(h * 3 // 2, w)


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    return cv2.rotate(image, _ROTATE[rotation]) if rotation in _ROTATE else image
