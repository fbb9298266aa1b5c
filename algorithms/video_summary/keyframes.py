"""Final keyframe choice: the best good, non-duplicate candidate of each equal-length window."""

from __future__ import annotations

import bisect

import numpy as np

from .candidates import Candidate


def even_windows(total: int, parts: int) -> list[tuple[int, int]]:
    """Split frames ``0..total-1`` into at most ``parts`` contiguous, near-equal, non-empty windows.

    Returns ``(start, end)`` pairs, end exclusive. Fewer windows when total < parts.
    """
    parts = max(1, min(parts, total))
    edges = np.linspace(0, total, parts + 1).round().astype(int).tolist()
    return [(edges[i], edges[i + 1]) for i in range(parts) if edges[i + 1] > edges[i]]


# A frame far less sharp than the scan's sharp frames is a blur outlier: never a keyframe if
# avoidable. The network's score already ranks blur low, but its absolute level is less certain
# on textures unlike its training scenes; this scan-relative check on the Laplacian variance
# (quality.py) does not depend on the texture.
BLUR_OUTLIER_FRACTION = 0.2  # of the 90th percentile of the scan's sharpness


def blur_outliers(sharpness: np.ndarray) -> np.ndarray:
    """One bool per frame: True where sharpness < BLUR_OUTLIER_FRACTION x the scan's 90th percentile."""
    if sharpness.size == 0:
        return np.zeros(0, dtype=bool)
    return sharpness < BLUR_OUTLIER_FRACTION * float(np.percentile(sharpness, 90))


def poor_frames(quality: np.ndarray, sharpness: np.ndarray, min_quality: float) -> np.ndarray:
    """One bool per frame: scored under ``min_quality`` by the network, or a blur outlier."""
    return (quality < min_quality) | blur_outliers(sharpness)


def choose_keyframes(
    candidates: list[Candidate],
    total_frames: int,
    count: int,
    min_quality: float,
    dedupe_similarity: float,
    blurred: np.ndarray | None = None,
) -> list[Candidate]:
    """Pick up to ``count`` keyframes, in frame order.

    candidates: kept frames in frame order. Each of ``count`` equal-length windows contributes
    its highest-quality candidate that is not poor (quality >= min_quality) and not a
    near-duplicate (embedding cosine similarity >= ``dedupe_similarity``) of a keyframe already
    chosen, nor a blur outlier (``blurred[index]``, see ``blur_outliers``). Windows are visited in
    time order so the result depends only on the inputs. If nothing qualifies, the single best
    candidate is returned, so a scan always has a keyframe.
    """
    if not candidates:
        return []
    windows = even_windows(total_frames, count)
    starts = [start for start, _ in windows]
    by_window: list[list[Candidate]] = [[] for _ in windows]
    for candidate in candidates:
        by_window[bisect.bisect_right(starts, candidate.index) - 1].append(candidate)

    chosen: list[Candidate] = []
    for members in by_window:
        for candidate in sorted(members, key=lambda c: (-c.quality, c.index)):
            if candidate.quality < min_quality:
                break  # sorted best first: the rest are poor too
            if blurred is not None and blurred[candidate.index]:
                continue
            if any(cosine(candidate.embedding, kept.embedding) >= dedupe_similarity for kept in chosen):
                continue
            chosen.append(candidate)
            break
    if not chosen:
        chosen = [min(candidates, key=lambda c: (-c.quality, c.index))]
    return chosen


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two unit vectors (their dot product), in [-1, 1]."""
    return float(np.dot(a.astype(np.float64), b.astype(np.float64)))
