"""The analysis views, the metrics' sums and the network's inputs as torch operations, on any device.

The same computations as the OpenCV path, made of integer and float32 tensor operations so they
run on the GPU where the frames were uploaded (gpu.py), and on the CPU for tests:

- ``views``: picture.analysis_views: each plane halved with 2x2 box averages rounded half up
  while at least twice too big (OpenCV's exact-2x INTER_AREA), then one area-weighted step to
  the exact size (OpenCV's general INTER_AREA: its coverage weights, float32 sums in its order,
  rounded half to even), then turned upright.
- ``metric_sums``: the sums quality.metrics_from_sums turns into sharpness, exposure and motion,
  in int64: the same figures to the last bit for the same planes.
- ``model_inputs``: model.model_inputs: halvings, OpenCV's fixed-point INTER_LINEAR (11-bit
  weights, its rounding), OpenCV's fixed-point I420 -> BGR (BT.601 video range).

Each step reproduces OpenCV's integer arithmetic or its float32 sums in the same order, so the
views and inputs equal the OpenCV path's bit for bit (checked on every size the tests use,
frames smaller than the network's view included). One known difference, of one grey level: an
area step by the same whole factor other than 2 both ways (reached only through odd
intermediate sides), where OpenCV multiplies its integer sum by 1/area and a tie (x.5) may
round the other way.
Planes are (N, height, width) integer tensors holding 0..255.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .model import CHANNELS, INPUT_HEIGHT, INPUT_WIDTH
from .quality import UNCLIPPED

# picture.Planes as tensors: Y (N, h, w), U and V (N, h/2, w/2).
TensorPlanes = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

# Display rotation (degrees counter-clockwise) -> quarter turns for torch.rot90 (as cv2.rotate).
_QUARTERS = {90: 1, 180: 2, 270: 3}
# OpenCV's INTER_LINEAR for 8-bit images: weights in 1/2048 (INTER_RESIZE_COEF_BITS = 11).
_LINEAR_ONE = 2048
# OpenCV's YUV420 -> RGB: BT.601 video range in 20-bit fixed point (color_yuv.simd.hpp).
_CY, _CUB, _CUG, _CVG, _CVR, _SHIFT = 1220542, 2116026, -409993, -852492, 1673527, 20


def views(planes: TensorPlanes, size: tuple[int, int], rotation: int) -> TensorPlanes:
    """Full-resolution planes as stored, shrunk to ``size`` (width, height of the luma as
    stored, from picture.small_size; chroma half of it), then turned upright. int16 planes."""
    w, h = size
    sizes = ((w, h), (w // 2, h // 2), (w // 2, h // 2))
    y, u, v = (upright(shrink(plane, s), rotation) for plane, s in zip(planes, sizes, strict=True))
    return y, u, v


def shrink(plane: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """quality.shrink_to: halved while at least twice ``size`` (width, height) with even sides,
    then one area-weighted step to the exact size."""
    small = halve_towards(plane.to(torch.int16), size)
    if (small.shape[-1], small.shape[-2]) != tuple(size):
        small = area_resize(small, size)
    return small


def halve_towards(plane: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """quality.halve_towards on int16 planes: 2x2 sums rounded half up, (a+b+c+d+2) >> 2."""
    width, height = size
    while (plane.shape[-1] >= 2 * width and plane.shape[-2] >= 2 * height
           and plane.shape[-1] % 2 == 0 and plane.shape[-2] % 2 == 0):
        total = plane[..., 0::2, 0::2] + plane[..., 0::2, 1::2] + plane[..., 1::2, 0::2] + plane[..., 1::2, 1::2]
        plane = (total + 2) >> 2
    return plane


def area_resize(plane: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """OpenCV's INTER_AREA shrink by any factor: each output pixel the coverage-weighted mean of
    the source pixels under it; rows first, then columns, float32 sums in OpenCV's order."""
    width, height = size
    columns, column_weights = _area_taps(plane.shape[-1], width, plane.device)
    rows, row_weights = _area_taps(plane.shape[-2], height, plane.device)
    source = plane.to(torch.float32)
    across = source[..., columns[:, 0]] * column_weights[:, 0]
    for k in range(1, columns.shape[1]):
        across = across + source[..., columns[:, k]] * column_weights[:, k]
    out = across[..., rows[:, 0], :] * row_weights[:, 0, None]
    for k in range(1, rows.shape[1]):
        out = out + across[..., rows[:, k], :] * row_weights[:, k, None]
    return torch.round(out).clamp_(0, 255).to(torch.int16)


def linear_resize(plane: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """OpenCV's INTER_LINEAR for 8-bit images: 11-bit weights, rows resized first (sums in
    1/2048), then columns with its vectorised rounding."""
    width, height = size
    columns, column_weights = _linear_taps(plane.shape[-1], width, True, plane.device)
    rows, row_weights = _linear_taps(plane.shape[-2], height, False, plane.device)
    source = plane.to(torch.int32)
    across = source[..., columns[:, 0]] * column_weights[:, 0] + source[..., columns[:, 1]] * column_weights[:, 1]
    top, bottom = across[..., rows[:, 0], :], across[..., rows[:, 1], :]
    upper, lower = row_weights[:, 0, None], row_weights[:, 1, None]
    out = (((upper * (top >> 4)) >> 16) + ((lower * (bottom >> 4)) >> 16) + 2) >> 2
    return out.clamp_(0, 255).to(torch.int16)


def upright(plane: torch.Tensor, rotation: int) -> torch.Tensor:
    """picture._upright: turn by ``rotation`` degrees counter-clockwise."""
    turns = _QUARTERS.get(rotation, 0)
    return torch.rot90(plane, turns, dims=(-2, -1)) if turns else plane


def to_bgr(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """picture.planes_bgr: I420 planes (N, h, w) -> (N, h, w, 3) BGR, OpenCV's integer
    arithmetic (each chroma sample covers its 2x2 block of luma)."""
    luma = (y.to(torch.int32) - 16).clamp_(min=0) * _CY
    cb = (u.to(torch.int32) - 128).repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    cr = (v.to(torch.int32) - 128).repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    half = 1 << (_SHIFT - 1)
    blue = (luma + half + _CUB * cb) >> _SHIFT
    green = (luma + half + _CVG * cr + _CUG * cb) >> _SHIFT
    red = (luma + half + _CVR * cr) >> _SHIFT
    return torch.stack([blue, green, red], dim=-1).clamp_(0, 255)


def metric_sums(luma: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """Per frame of luma (N, h, w), N >= 1: the sums quality.metrics_from_sums takes, as an
    (N, 5) int64 tensor: Laplacian sum, Laplacian sum of squares, luma sum, count of unclipped
    pixels, and the sum of absolute differences to the frame before (for the first, to
    ``previous`` (h, w); -1 when that is None or of another size)."""
    frames = luma.to(torch.int32)
    laplacian = _laplacian(frames)
    low, high = UNCLIPPED
    if previous is not None and previous.shape == frames.shape[1:]:
        before = torch.cat([previous.to(torch.int32)[None], frames[:-1]])
        difference = (frames - before).abs_().sum(dim=(-2, -1), dtype=torch.int64)
    else:
        moved = (frames[1:] - frames[:-1]).abs_().sum(dim=(-2, -1), dtype=torch.int64)
        difference = torch.cat([torch.full((1,), -1, dtype=torch.int64, device=frames.device), moved])
    return torch.stack([
        laplacian.sum(dim=(-2, -1), dtype=torch.int64),
        (laplacian * laplacian).sum(dim=(-2, -1), dtype=torch.int64),
        frames.sum(dim=(-2, -1), dtype=torch.int64),
        ((frames >= low) & (frames <= high)).sum(dim=(-2, -1), dtype=torch.int64),
        difference,
    ], dim=1)


def model_inputs(planes: TensorPlanes) -> torch.Tensor:
    """model.model_inputs for frames of one size: (N, INPUT_HEIGHT, INPUT_WIDTH, CHANNELS)
    uint8, the whole frame's view then its centre crop, BGR."""
    y, u, v = planes
    height, width = y.shape[-2:]
    size, half = (INPUT_WIDTH, INPUT_HEIGHT), (INPUT_WIDTH // 2, INPUT_HEIGHT // 2)
    whole = to_bgr(_fit(y, size), _fit(u, half), _fit(v, half))
    if width < INPUT_WIDTH or height < INPUT_HEIGHT:
        # A frame smaller than a view: its "crop" is the whole frame, resized up in BGR.
        full = to_bgr(y, u, v)
        crop = torch.stack([linear_resize(full[..., c], size) for c in range(3)], dim=-1)
    else:
        # Even offsets, so the chroma crop covers the same pixels as the luma crop.
        top, left = (height - INPUT_HEIGHT) // 4 * 2, (width - INPUT_WIDTH) // 4 * 2
        crop = to_bgr(y[..., top : top + INPUT_HEIGHT, left : left + INPUT_WIDTH],
                      u[..., top // 2 : (top + INPUT_HEIGHT) // 2, left // 2 : (left + INPUT_WIDTH) // 2],
                      v[..., top // 2 : (top + INPUT_HEIGHT) // 2, left // 2 : (left + INPUT_WIDTH) // 2])
    inputs = torch.cat([whole, crop.to(whole.dtype)], dim=-1).to(torch.uint8)
    assert inputs.shape[1:] == (INPUT_HEIGHT, INPUT_WIDTH, CHANNELS)
    return inputs


def _fit(plane: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """model._fit_stacked: halved while at least twice ``size``, then bilinear to it."""
    return linear_resize(halve_towards(plane, size), size)


def _laplacian(frames: torch.Tensor) -> torch.Tensor:
    """cv2.Laplacian with ksize 1 (4-neighbour) and OpenCV's default border (reflect-101)."""
    rows = torch.cat([frames[..., 1:2, :], frames, frames[..., -2:-1, :]], dim=-2)
    padded = torch.cat([rows[..., :, 1:2], rows, rows[..., :, -2:-1]], dim=-1)
    return (padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]
            - 4 * frames)


@functools.lru_cache(maxsize=64)
def _area_taps(source: int, target: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, weights), each (target, taps): OpenCV's computeResizeAreaTab, padded with
    zero-weight taps."""
    scale = source / target
    table = []
    for out in range(target):
        start, end = out * scale, out * scale + scale
        cell = min(scale, source - start)
        first, last = math.ceil(start), math.floor(end)
        last = min(last, source - 1)
        first = min(first, last)
        taps = []
        if first - start > 1e-3:
            taps.append((first - 1, (first - start) / cell))
        taps.extend((i, 1.0 / cell) for i in range(first, last))
        if end - last > 1e-3:
            taps.append((last, min(min(end - last, 1.0), cell) / cell))
        table.append(taps)
    return _padded(table, np.float32, device)


@functools.lru_cache(maxsize=64)
def _linear_taps(source: int, target: int, columns: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, weights), each (target, 2): OpenCV's INTER_LINEAR coefficients, computed in
    float32 and each rounded to 1/2048 on its own. Past the borders OpenCV clamps a column's
    position (all weight on the edge pixel) but only a row's indices (both taps on the edge row,
    the weights as computed: the vectorised sum truncates each product, so this matters)."""
    scale = source / target
    one = np.float32(_LINEAR_ONE)
    table = []
    for out in range(target):
        position = np.float32((out + 0.5) * scale - 0.5)
        index = math.floor(position)
        fraction = np.float32(position - np.float32(index))
        if columns and index < 0:
            index, fraction = 0, np.float32(0)
        if columns and index >= source - 1:
            index, fraction = source - 1, np.float32(0)
        table.append([(min(max(index, 0), source - 1), int(np.rint((np.float32(1) - fraction) * one))),
                      (min(max(index + 1, 0), source - 1), int(np.rint(fraction * one)))])
    return _padded(table, np.int32, device)


def _padded(table: list[list[tuple[int, float]]], dtype: type, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    taps = max(len(row) for row in table)
    indices = np.zeros((len(table), taps), np.int64)
    weights = np.zeros((len(table), taps), dtype)
    for i, row in enumerate(table):
        for k, (index, weight) in enumerate(row):
            indices[i, k], weights[i, k] = index, weight
    return torch.from_numpy(indices).to(device), torch.from_numpy(weights).to(device)
