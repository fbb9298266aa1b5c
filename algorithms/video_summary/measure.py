"""What the pass measures of each batch of frames, and the two ways of measuring it.

A ``FrameMeasure`` turns the decoded batches into per-frame results, in order: the network's
score and embedding, sharpness, exposure and motion. ``OpenCVMeasure`` (here) shrinks and
measures on the CPU with OpenCV and hands the inputs to the network; ``gpu.TorchMeasure`` does
the same with torch on the device the network runs on. Both give the same figures to the
tolerances stated in gpu.py; analysis.measure_for picks one.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .decode import DecodedFrame
from .model import model_inputs
from .picture import Picture, Planes, analysis_views
from .quality import frame_metrics
from .scorer import FrameScorer

# Values of run()'s ``analysis_backend``: "auto" is torch on CUDA, OpenCV on the CPU.
BACKENDS = ("auto", "opencv", "torch")


@dataclass(frozen=True)
class BatchResult:
    """Per frame of one batch: quality (N float64, 0..1), embedding (N x D float32, unit),
    metrics (N x 3 float64: sharpness, exposure, motion; units in quality.py)."""

    quality: np.ndarray
    embedding: np.ndarray
    metrics: np.ndarray


class FrameMeasure(abc.ABC):
    """One way of measuring a scan's frames; one instance per pass (it remembers the previous
    frame, for motion)."""

    name: str

    def prepare(self, picture: Picture) -> Any:
        """What the decode thread makes of each picture for ``measure`` (DecodedFrame.prepared);
        None: nothing, the batch's pictures are enough."""
        return None

    @abc.abstractmethod
    def measure(self, batches: Iterable[list[DecodedFrame]]) -> Iterator[tuple[list[DecodedFrame], BatchResult]]:
        """Yield each batch with its results, in order. The batch's pictures stay valid until
        the next one is asked for."""


class OpenCVMeasure(FrameMeasure):
    """On the CPU: picture.analysis_views on the decode thread (the shrinks run on the decoder's
    core, beside decoding, which leaves it room), then quality.frame_metrics and
    model.model_inputs per batch and one forward pass here."""

    name = "opencv"

    def __init__(self, scorer: FrameScorer, analysis_width: int) -> None:
        self._scorer = scorer
        self._width = analysis_width

    def prepare(self, picture: Picture) -> Planes:
        return analysis_views(picture, self._width)

    def measure(self, batches: Iterable[list[DecodedFrame]]) -> Iterator[tuple[list[DecodedFrame], BatchResult]]:
        previous: np.ndarray | None = None
        for batch in batches:
            views = [decoded.prepared for decoded in batch]
            inputs = model_inputs(views)
            metrics = []
            for luma, _, _ in views:
                metrics.append(frame_metrics(luma, previous))
                previous = luma
            quality, embedding = self._scorer.score(inputs)
            yield batch, BatchResult(quality, embedding, np.asarray(metrics, dtype=np.float64).reshape(-1, 3))

