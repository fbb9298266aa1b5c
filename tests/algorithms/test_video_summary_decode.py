"""The decode thread: batches in order, failures raised in the consumer, no thread left behind."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from algorithms.video_summary.decode import VideoReader
from algorithms.video_summary.train import _decode as plain_decode
from service.synthetic import write_scan_video


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "video-decode"]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_scan_video(tmp_path_factory.mktemp("v") / "v.mp4", frames=30, blur=None, exposure=None)["path"]


def test_batches_cover_every_frame_in_order(video: str) -> None:
    expected = plain_decode(Path(video))
    sizes, indices = [], []
    with VideoReader(video, 1000) as reader:
        # Batch size 2 cycles through the reused buffers many times over 30 frames.
        for batch in reader.batches(2, lambda frame: frame[::4, ::4].copy()):
            sizes.append(len(batch))
            for decoded in batch:
                indices.append(decoded.index)
                assert np.array_equal(decoded.frame, expected[decoded.index])
                assert decoded.small.shape == (60, 80, 3)
                assert np.array_equal(decoded.small, expected[decoded.index][::4, ::4])
        reader.check_complete(sum(sizes))
    assert sizes == [2] * 15
    assert indices == list(range(30))
    with VideoReader(video, 1000) as reader:
        assert [len(b) for b in reader.batches(8, lambda frame: frame)] == [8, 8, 8, 6]
    assert not _decode_threads()


def test_failure_in_the_decode_thread_reaches_the_consumer(video: str) -> None:
    def prepare(frame: np.ndarray) -> np.ndarray:
        if prepare.calls == 13:  # type: ignore[attr-defined]
            raise MemoryError("no room for frame 13")
        prepare.calls += 1  # type: ignore[attr-defined]
        return frame

    prepare.calls = 0  # type: ignore[attr-defined]
    seen: list[int] = []
    with VideoReader(video, 1000) as reader, pytest.raises(MemoryError, match="frame 13"):
        for batch in reader.batches(4, prepare):
            seen.extend(d.index for d in batch)
    assert seen == list(range(12))  # the batches before the failure, then the error
    assert not _decode_threads()


def test_consumer_leaving_early_stops_the_thread(video: str) -> None:
    with VideoReader(video, 1000) as reader:
        for batch in reader.batches(2, lambda frame: frame):
            assert batch[0].index == 0
            break
    assert not _decode_threads()
