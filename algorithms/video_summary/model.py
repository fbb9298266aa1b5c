"""The frame network: a small CNN that scores frame quality and embeds frame content.

Input (``model_input``): two 64x48 BGR views of a frame already shrunk to the analysis width,
stacked as 6 channels: the whole frame (layout, exposure, coarse blur) and a same-size crop of
its centre at the analysis resolution (fine detail: blur and noise the whole-frame view averages
away). Output: a quality logit (sigmoid gives a score in [0, 1], ~1 = clean) and an
L2-normalised EMBEDDING_DIM embedding of what the frame shows, compared by cosine similarity.

Weights are a plain ``state_dict`` (``torch.save``), loaded with ``weights_only=True``;
``train.py`` makes them. ``validate_model`` is what a model registry calls before accepting a file.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .errors import InvalidModel
from .picture import Planes, planes_bgr

# The committed weights (made by train.py); runs use them unless params name another file.
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "frame_quality_v2.pt"
# Model input: width and height of each view (pixels) and channels (two BGR views).
INPUT_WIDTH, INPUT_HEIGHT, CHANNELS = 64, 48, 6
EMBEDDING_DIM = 32
# Channel widths of the four stride-2 stages: 48x64 -> 24x32 -> 12x16 -> 6x8 -> 3x4. (16, 24, 48,
# 64) was ~25 % cheaper but caught less blur on unfamiliar texture.
_WIDTHS = (24, 32, 64, 64)
ARCHITECTURE = (f"FrameQualityNet({CHANNELS}x{INPUT_HEIGHT}x{INPUT_WIDTH}, widths={'-'.join(map(str, _WIDTHS))}, "
                f"embedding={EMBEDDING_DIM})")


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class FrameQualityNet(nn.Module):
    """Four stride-2 conv stages, then two heads.

    The quality head sees mean- and max-pooled features (quality is a property of the whole
    frame, and one blown highlight or noisy patch should count). The embedding head sees the
    flattened 3x4 feature map, so it keeps the frame's layout: two views of different parts of
    the mouth with similar texture still embed apart.
    """

    def __init__(self) -> None:
        super().__init__()
        stages, c_in = [], CHANNELS
        for width in _WIDTHS:
            stages.append(_stage(c_in, width))
            c_in = width
        self.features = nn.Sequential(*stages)
        self.quality = nn.Linear(2 * c_in, 1)
        grid = math.ceil(INPUT_HEIGHT / 16) * math.ceil(INPUT_WIDTH / 16)
        self.embedding = nn.Linear(c_in * grid, EMBEDDING_DIM)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: N x CHANNELS x INPUT_HEIGHT x INPUT_WIDTH, values in [0, 1].
        Returns (quality logits N, unit embeddings N x EMBEDDING_DIM)."""
        features = self.features(x - 0.5)
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        logits = self.quality(pooled).squeeze(1)
        embedding = F.normalize(self.embedding(features.flatten(1)), dim=1)
        return logits, embedding


def model_input(planes: Planes) -> np.ndarray:
    """The network's input for one frame: INPUT_HEIGHT x INPUT_WIDTH x CHANNELS uint8, BGR.

    planes: the frame at the analysis width as I420 planes (picture.analysis_views; training
    converts its drawn views with picture.i420_planes). Channels 0-2 are the whole frame: each
    plane halved by 2x2 box averages while at least twice too big, then a bilinear step to the
    view's size, then converted. Channels 3-5 are its centre crop at the analysis resolution
    (the frame resized up when it is smaller than a view). Only these two small views are ever
    converted to BGR.
    """
    return model_inputs([planes])[0]


def model_inputs(frames: Sequence[Planes]) -> np.ndarray:
    """``model_input`` for a batch of frames: N x INPUT_HEIGHT x INPUT_WIDTH x CHANNELS uint8.

    Frames of one size (a batch of one scan) go through each step together, as one image of
    the frames stacked on top of each other: the same pixels as frame by frame (each 2x2
    halving pairs rows within a frame, the bilinear steps run per frame, and the I420->BGR
    conversion maps each row to its own frame's chroma), for a tenth of the OpenCV calls.
    """
    count = len(frames)
    height, width = frames[0][0].shape
    if any(f[0].shape != (height, width) for f in frames):  # the stream changed size mid-batch
        return np.concatenate([model_inputs([f]) for f in frames])
    if width < INPUT_WIDTH or height < INPUT_HEIGHT:
        return np.stack([_small_frame_input(f) for f in frames])
    ys, us, vs = (np.stack([f[i] for f in frames]) for i in range(3))
    size, half = (INPUT_WIDTH, INPUT_HEIGHT), (INPUT_WIDTH // 2, INPUT_HEIGHT // 2)
    whole = planes_bgr((_fit_stacked(ys, size), _fit_stacked(us, half), _fit_stacked(vs, half)))
    # The centre crops; even offsets, so the chroma crop covers the same pixels as the luma crop.
    top, left = (height - INPUT_HEIGHT) // 4 * 2, (width - INPUT_WIDTH) // 4 * 2
    crops = (ys[:, top : top + INPUT_HEIGHT, left : left + INPUT_WIDTH],
             us[:, top // 2 : (top + INPUT_HEIGHT) // 2, left // 2 : (left + INPUT_WIDTH) // 2],
             vs[:, top // 2 : (top + INPUT_HEIGHT) // 2, left // 2 : (left + INPUT_WIDTH) // 2])
    crop = planes_bgr(tuple(c.reshape(-1, c.shape[2]) for c in crops))  # type: ignore[arg-type]
    # One interleaving pass in OpenCV; numpy's strided channel-slice copies cost 5x more.
    return cv2.merge([whole, crop]).reshape(count, INPUT_HEIGHT, INPUT_WIDTH, CHANNELS)


def _fit_stacked(planes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """N frames' planes (N x h x w) halved together while at least twice too big (as
    quality.halve_towards, but the evenness that keeps 2x2 blocks inside a frame is the
    frame's), then each resized to ``size`` (bilinear); returned stacked, (N * size[1]) x size[0]."""
    count, height, width = planes.shape
    stacked = planes.reshape(count * height, width)
    while width >= 2 * size[0] and height >= 2 * size[1] and width % 2 == 0 and height % 2 == 0:
        height, width = height // 2, width // 2
        stacked = cv2.resize(stacked, (width, count * height), interpolation=cv2.INTER_AREA)
    frames = stacked.reshape(count, height, width)
    return np.concatenate([cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames])


def _small_frame_input(planes: Planes) -> np.ndarray:
    """A frame smaller than a view: the whole frame and its "crop", the frame resized up."""
    size, half = (INPUT_WIDTH, INPUT_HEIGHT), (INPUT_WIDTH // 2, INPUT_HEIGHT // 2)
    y, u, v = (plane[np.newaxis] for plane in planes)
    whole = planes_bgr((_fit_stacked(y, size), _fit_stacked(u, half), _fit_stacked(v, half)))
    return cv2.merge([whole, cv2.resize(planes_bgr(planes), size, interpolation=cv2.INTER_LINEAR)])


def fuse_for_inference(network: FrameQualityNet) -> FrameQualityNet:
    """Fold each stage's BatchNorm into its convolution (eval mode only), in place.

    The same function to float rounding (~1e-6 on the logits), but one pass over the features
    instead of two: on the CPU, channels-last BatchNorm costs about as much as the convolution,
    so the forward pass is about twice as fast. The weights file is untouched.
    """
    if network.training:
        raise ValueError("fuse_for_inference needs a network in eval mode")
    for stage in network.features:
        conv, norm = stage[0], stage[1]
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
            stage[0] = fuse_conv_bn_eval(conv, norm)
            stage[1] = nn.Identity()
    return network


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_network(path: str | os.PathLike[str]) -> FrameQualityNet:
    """Load weights from ``path`` into a FrameQualityNet in eval mode, on the CPU.

    Raises InvalidModel when the file is missing, is not a torch file holding a state_dict, or
    its tensors do not fit the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidModel(f"model file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidModel(
            f"{path} is not a loadable torch weights file ({type(exc).__name__}); "
            "save a state_dict with torch.save(model.state_dict(), path)"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidModel(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    network = FrameQualityNet()
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise InvalidModel(f"{path} does not fit {ARCHITECTURE}: {detail}") from exc
    return network.eval()


def validate_model(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check that ``path`` is usable weights: it loads and scores a dummy batch with finite output.

    Returns ``{"architecture", "parameters", "bytes", "sha256"}``. Raises InvalidModel otherwise.
    """
    network = load_network(path)
    probe = torch.linspace(0.0, 1.0, 2 * CHANNELS * INPUT_HEIGHT * INPUT_WIDTH)
    with torch.inference_mode():
        logits, embedding = network(probe.reshape(2, CHANNELS, INPUT_HEIGHT, INPUT_WIDTH))
    if not (torch.isfinite(logits).all() and torch.isfinite(embedding).all()):
        raise InvalidModel(f"{path} produces non-finite scores on a test batch; the weights are damaged")
    return {
        "architecture": ARCHITECTURE,
        "parameters": sum(p.numel() for p in network.parameters()),
        "bytes": Path(path).stat().st_size,
        "sha256": file_sha256(path),
    }
