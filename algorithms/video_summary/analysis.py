"""The single decoding pass: the network's score and embedding plus cheap metrics for every frame.

The decode thread decodes each frame and hands batches over (decode.VideoReader.batches). This
thread has each batch measured (measure.py): every frame shrunk to ``analysis_width`` as I420
planes, its luma plane measured (sharpness, exposure, motion), the network's inputs built from
the planes and the batch scored in one forward pass; with OpenCV on the CPU, with torch on the
GPU (gpu.py). It then offers every frame to the candidate pool, which keeps the few that may
become keyframes at full resolution.

Which decoder (param ``decoder``, hwdecode.py) and which analysis backend (``analysis_backend``:
"auto" is torch when the network runs on CUDA, OpenCV otherwise) were used is recorded in the
``Analysis``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .candidates import Candidate, CandidatePool
from .decode import VideoInfo, VideoReader
from .gpu import TorchMeasure
from .measure import BACKENDS, FrameMeasure, OpenCVMeasure
from .model import EMBEDDING_DIM
from .params import Params
from .progress import ProgressReporter
from .scorer import FrameScorer

logger = logging.getLogger(__name__)

# Share of the progress bar the decoding pass takes; writing outputs takes the rest.
DECODE_SHARE = 0.9


@dataclass(frozen=True)
class FrameTable:
    """Per-frame values, one row per decoded frame. quality: network score (0..1). embedding:
    N x EMBEDDING_DIM unit vectors. sharpness, exposure, motion: see quality.py for units."""

    quality: np.ndarray
    embedding: np.ndarray
    sharpness: np.ndarray
    exposure: np.ndarray
    motion: np.ndarray

    def __len__(self) -> int:
        return int(self.quality.size)


@dataclass(frozen=True)
class Analysis:
    """Everything the pass learned. width, height: first frame's size in pixels. decoder:
    "hardware" or "software", the decoder that gave the frames. backend: "opencv" or "torch",
    what measured them."""

    info: VideoInfo
    width: int
    height: int
    frames: FrameTable
    candidates: list[Candidate]
    decoder: str = "software"
    backend: str = "opencv"


def measure_for(backend: str, scorer: FrameScorer, analysis_width: int) -> FrameMeasure:
    """The FrameMeasure for ``backend`` (one of measure.BACKENDS) on the scorer's device."""
    if backend not in BACKENDS:
        raise ValueError(f"analysis backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch" or (backend == "auto" and scorer.device.type == "cuda"):
        return TorchMeasure(scorer, analysis_width)
    return OpenCVMeasure(scorer, analysis_width)


@contextmanager
def _opencv_threads(count: int) -> Iterator[None]:
    """OpenCV's own thread pool off for the pass: the pass already keeps the cores busy with
    its two threads (decode, analysis), and OpenCV splitting each small image over a pool that
    spins while it waits cost a third more CPU for no gain. Process-wide, restored on exit."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def analyse(
    path: str | os.PathLike[str],
    params: Params,
    scorer: FrameScorer,
    progress: ProgressReporter,
    backend: str = "auto",
) -> Analysis:
    """Decode ``path`` once, score and measure every frame. backend: see measure.BACKENDS.
    Raises InvalidVideo for unusable files."""
    measure = measure_for(backend, scorer, params.analysis_width)
    cuda_device = _cuda_index(scorer.device)
    quality: list[np.ndarray] = []
    embedding: list[np.ndarray] = []
    metrics: list[np.ndarray] = []
    width = height = decoded = 0
    with _opencv_threads(1), VideoReader(path, params.max_frames, params.decoder, cuda_device) as reader:
        reported = reader.info.reported_frames
        # Twice as many windows as keyframes: when the container's count is right, each final
        # window spans about two pool windows; when it is wrong, merging keeps them near-equal.
        pool = CandidatePool(2 * params.keyframes, reported)
        with scorer.session():
            for batch, result in measure.measure(reader.batches(params.batch_size, measure.prepare)):
                if not decoded:
                    width, height = batch[0].picture.size
                for decoded_frame, score, vector in zip(batch, result.quality, result.embedding, strict=True):
                    pool.offer(decoded_frame.index, float(score), vector, decoded_frame.picture)
                quality.append(result.quality)
                embedding.append(result.embedding)
                metrics.append(result.metrics)
                decoded += len(batch)
                if reported:
                    progress.update(DECODE_SHARE * min(1.0, decoded / reported))
        reader.check_complete(decoded)
        info = reader.info
    progress.update(DECODE_SHARE)

    columns = np.concatenate(metrics).reshape(-1, 3)
    table = FrameTable(
        quality=np.concatenate(quality),
        embedding=np.concatenate(embedding).reshape(-1, EMBEDDING_DIM),
        sharpness=columns[:, 0],
        exposure=columns[:, 1],
        motion=columns[:, 2],
    )
    candidates = pool.candidates()
    logger.info(
        "video analysed frames=%d reported=%d size=%dx%d candidates=%d device=%s decoder=%s analysis=%s",
        len(table), reported, width, height, len(candidates), scorer.device, reader.decoder, measure.name,
    )
    return Analysis(info, int(width), int(height), table, candidates, reader.decoder, measure.name)


def _cuda_index(device: torch.device) -> int | None:
    """The CUDA device's index (the current one when unnamed), None off CUDA."""
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()
