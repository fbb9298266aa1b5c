"""The single decoding pass: the network's score and embedding plus cheap metrics for every frame.

The decode thread decodes each frame and hands batches over (decode.VideoReader.batches). This
thread shrinks each frame to ``analysis_width`` as I420 planes (picture.analysis_views),
measures each luma plane (sharpness, exposure, motion), builds the network's inputs from the
planes, scores the batch in
one forward pass and offers every frame to the candidate pool, which keeps the few that may
become keyframes at full resolution.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np

from .candidates import Candidate, CandidatePool
from .decode import VideoInfo, VideoReader
from .model import EMBEDDING_DIM, model_inputs
from .params import Params
from .picture import analysis_views
from .progress import ProgressReporter
from .quality import frame_metrics
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
    """Everything the pass learned. width, height: first frame's size in pixels."""

    info: VideoInfo
    width: int
    height: int
    frames: FrameTable
    candidates: list[Candidate]


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
    path: str | os.PathLike[str], params: Params, scorer: FrameScorer, progress: ProgressReporter
) -> Analysis:
    """Decode ``path`` once, score and measure every frame. Raises InvalidVideo for unusable files."""
    quality: list[np.ndarray] = []
    embedding: list[np.ndarray] = []
    metrics: list[tuple[float, float, float]] = []
    width = height = 0
    previous: np.ndarray | None = None
    with _opencv_threads(1), VideoReader(path, params.max_frames) as reader:
        reported = reader.info.reported_frames
        # Twice as many windows as keyframes: when the container's count is right, each final
        # window spans about two pool windows; when it is wrong, merging keeps them near-equal.
        pool = CandidatePool(2 * params.keyframes, reported)
        with scorer.session():
            for batch in reader.batches(params.batch_size):
                if not metrics:
                    width, height = batch[0].picture.size
                views = [analysis_views(decoded.picture, params.analysis_width) for decoded in batch]
                inputs = model_inputs(views)
                for (luma, _, _) in views:
                    metrics.append(frame_metrics(luma, previous))
                    previous = luma
                scores, vectors = scorer.score(inputs)
                for decoded, score, vector in zip(batch, scores, vectors, strict=True):
                    pool.offer(decoded.index, float(score), vector, decoded.picture)
                quality.append(scores)
                embedding.append(vectors)
                if reported:
                    progress.update(DECODE_SHARE * min(1.0, len(metrics) / reported))
        reader.check_complete(len(metrics))
        info = reader.info
    progress.update(DECODE_SHARE)

    columns = np.asarray(metrics, dtype=np.float64).reshape(-1, 3)
    table = FrameTable(
        quality=np.concatenate(quality),
        embedding=np.concatenate(embedding).reshape(-1, EMBEDDING_DIM),
        sharpness=columns[:, 0],
        exposure=columns[:, 1],
        motion=columns[:, 2],
    )
    candidates = pool.candidates()
    logger.info(
        "video analysed frames=%d reported=%d size=%dx%d candidates=%d device=%s",
        len(table), reported, width, height, len(candidates), scorer.device,
    )
    return Analysis(info, int(width), int(height), table, candidates)
