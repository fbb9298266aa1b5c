"""Keyframes skip blur outliers: frames far less sharp than the scan's sharp frames, whatever the
network's score says about them."""

from __future__ import annotations

import numpy as np

from algorithms.video_summary.candidates import Candidate
from algorithms.video_summary.keyframes import blur_outliers, choose_keyframes, poor_frames


def unit(i: int, dim: int = 8) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[i % dim] = 1.0
    return v


def test_blur_outliers_are_relative_to_the_scans_sharp_frames() -> None:
    sharpness = np.array([150.0, 140.0, 160.0, 6.0, 25.0, 40.0, 130.0, 155.0, 145.0, 150.0])
    assert blur_outliers(sharpness).tolist() == [False, False, False, True, True, False, False, False, False, False]
    soft = sharpness / 50  # a uniformly soft scan has no outliers: the check is relative
    assert blur_outliers(soft).tolist() == blur_outliers(sharpness).tolist()
    assert not blur_outliers(np.full(5, 3.0)).any()
    assert blur_outliers(np.array([])).size == 0


def test_a_window_of_blur_outliers_gives_no_keyframe_even_when_scored_good() -> None:
    candidates = [Candidate(i, 0.9, unit(i)) for i in range(8)]
    blurred = np.array([False, False, True, True, False, False, False, False])
    chosen = choose_keyframes(candidates, 8, 4, min_quality=0.5, dedupe_similarity=0.9, blurred=blurred)
    assert [c.index for c in chosen] == [0, 4, 6]
    everything_blurred = choose_keyframes(candidates, 8, 4, 0.5, 0.9, blurred=np.ones(8, dtype=bool))
    assert [c.index for c in everything_blurred] == [0], "a scan always gets one keyframe"


def test_a_frame_is_poor_when_scored_low_or_a_blur_outlier() -> None:
    quality = np.array([0.9, 0.2, 0.9, 0.9, 0.9])
    sharpness = np.array([150.0, 150.0, 5.0, 140.0, 160.0])
    assert poor_frames(quality, sharpness, min_quality=0.5).tolist() == [False, True, True, False, False]
