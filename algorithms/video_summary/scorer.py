"""Batched inference with the frame network on the chosen device.

BatchNorm is folded into the convolutions (model.fuse_for_inference). CUDA: fp16 weights and
inputs, channels-last memory, uint8 frames copied to the GPU and converted there (a quarter of
the bytes of float32 over PCIe). CPU: float32, channels-last, and
one intra-op thread for the duration of the run: the decode thread has the other core of a
small worker, and one thread keeps results independent of the machine's core count.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from .errors import InvalidParams
from .model import file_sha256, fuse_for_inference, load_network

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cuda" without a GPU is a parameter error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidParams("device is 'cuda' but no CUDA GPU is available on this worker; use 'auto' or 'cpu'")
    return torch.device(name)


class FrameScorer:
    """Scores batches of model inputs (N x H x W x C uint8, see model.model_input).

    ``score`` returns (quality N float64 in [0, 1], embeddings N x D float32, unit length).
    Use inside ``with scorer.session():`` so CPU thread settings are applied and restored.
    """

    def __init__(self, weights: str | os.PathLike[str], device: str = "auto") -> None:
        self.device = resolve_device(device)
        self._half = self.device.type == "cuda"
        network = fuse_for_inference(load_network(weights))
        network = network.to(self.device, memory_format=torch.channels_last)
        self._network = network.half() if self._half else network
        logger.info("frame scorer ready device=%s fp16=%s", self.device, self._half)

    @contextmanager
    def session(self) -> Iterator[FrameScorer]:
        if self.device.type != "cpu":
            yield self
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield self
        finally:
            torch.set_num_threads(previous)

    def score(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            quality, embedding = self.score_tensor(torch.from_numpy(batch).to(self.device, non_blocking=True))
            return quality.cpu().numpy().astype(np.float64), embedding.cpu().numpy()

    def score_tensor(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``score`` for inputs already on the device (N x H x W x C uint8): (quality N, embeddings
        N x D), float32 tensors left on the device, so a caller on a CUDA stream need not wait."""
        with torch.inference_mode():
            # NHWC uint8 permuted to NCHW is already channels-last in memory: no copy.
            x = batch.permute(0, 3, 1, 2).to(torch.float16 if self._half else torch.float32).div_(255.0)
            logits, embedding = self._network(x)
            return torch.sigmoid(logits.float()), embedding.float()


def scorer_for(weights: str | os.PathLike[str], device: str) -> FrameScorer:
    """A FrameScorer for ``weights`` on ``device``, reused for the same content.

    A warm executor runs scan after scan with the same weights, each task with its own copy of
    them when they come from S3: loading them (~70 ms with torch's safe unpickler and the
    network's construction) once per process instead of once per scan matters for short scans.
    The key is the file's SHA-256, so a task pinning another model version loads that one and a
    replaced file is loaded afresh; the last two versions are kept.
    """
    path = os.path.abspath(os.fspath(weights))
    try:
        digest = file_sha256(path)
    except OSError:
        return FrameScorer(path, device)  # raises InvalidModel with the reason
    key = (digest, device)
    scorer = _SCORERS.pop(key, None) or FrameScorer(path, device)
    _SCORERS[key] = scorer  # the most recently used last
    while len(_SCORERS) > KEPT_SCORERS:
        _SCORERS.popitem(last=False)
    return scorer


KEPT_SCORERS = 2
_SCORERS: OrderedDict[tuple[str, str], FrameScorer] = OrderedDict()
