"""Frame iteration over one video file, with every way a file can be bad turned into InvalidVideo."""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import cv2
import numpy as np

from .errors import InvalidVideo

logger = logging.getLogger(__name__)

# When the container's frame rate is missing or absurd, timestamps use this (frames per second).
DEFAULT_FPS = 30.0
# Fewer decoded frames than this share of the container's count means the file was cut short.
TRUNCATION_RATIO = 0.9
# Batches decoded ahead of the consumer: one being filled while one waits is enough to keep the
# decoder busy while the model works; memory stays a few batches of frames.
PREFETCH = 2
# Raw frames of one batch may take about this much memory (bytes): 4K scans get smaller batches.
BATCH_BYTES = 128 * 1024 * 1024
# Batch buffers in use at once: one being filled, PREFETCH queued, one with the consumer.
BUFFERS = PREFETCH + 2

# Queue markers from the decode thread: end of stream, or a decoder failure at a frame index.
_END = object()


@dataclass(frozen=True)
class _Failure:
    index: int
    error: BaseException


@dataclass(frozen=True)
class DecodedFrame:
    """index: frame index from 0. frame: full-resolution BGR uint8, a view into a buffer the
    reader reuses: valid until the consumer asks for the next batch (copy what must live
    longer). small: what the reader's ``prepare`` made of it in the decode thread."""

    index: int
    frame: np.ndarray
    small: np.ndarray


@dataclass(frozen=True)
class VideoInfo:
    """What the container claims before decoding.

    fps: frames per second used for timestamps. fps_assumed: True when the container's rate was
    0/NaN/absurd and DEFAULT_FPS was used instead. reported_frames: the container's frame count,
    0 when it gives none (streams, some containers); a hint only, never trusted for results.
    """

    fps: float
    fps_assumed: bool
    reported_frames: int


class VideoReader:
    """Context manager over ``cv2.VideoCapture`` that yields BGR frames once, in order.

    Usage: ``with VideoReader(path, max_frames) as reader: for batch in reader.batches(n, f): ...``
    then ``reader.check_complete(decoded)`` once the loop ends.
    """

    def __init__(self, path: str | os.PathLike[str], max_frames: int) -> None:
        self._path = os.fspath(path)
        self._max_frames = max_frames
        self._cap: cv2.VideoCapture | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=PREFETCH)
        self._free: queue.Queue[np.ndarray] = queue.Queue()
        self.info = VideoInfo(fps=DEFAULT_FPS, fps_assumed=True, reported_frames=0)

    def __enter__(self) -> Self:
        path = self._path
        if not os.path.exists(path):
            raise InvalidVideo(f"could not open video: no such file: {path}")
        if not os.path.isfile(path):
            raise InvalidVideo(f"could not open video: not a regular file: {path}")
        if os.path.getsize(path) == 0:
            raise InvalidVideo(f"could not open video: file is empty: {path}")
        try:
            cap = cv2.VideoCapture(path, capture_backend())
        except cv2.error as exc:
            raise InvalidVideo(f"could not open video: {path}: {exc}") from exc
        if not cap.isOpened():
            cap.release()
            raise InvalidVideo(f"could not open video: {path} (not a video, or its container is damaged)")
        self._cap = cap
        self.info = _read_info(cap)
        if self.info.reported_frames > self._max_frames:
            self.close()
            raise InvalidVideo(
                f"video is too long: {self.info.reported_frames} frames, the limit is {self._max_frames}"
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        # The decode thread must be gone before the capture is released under it.
        self._stop_prefetch()
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def batches(self, size: int, prepare: Callable[[np.ndarray], np.ndarray]) -> Iterator[list[DecodedFrame]]:
        """Yield lists of up to ``size`` consecutive DecodedFrame, in order; indices count from 0.

        A background thread decodes each frame, runs ``prepare`` on it (e.g. the downscale to
        the analysis width) and hands full batches over through a queue of PREFETCH batches, so
        decoding overlaps the caller's work on the previous batch (OpenCV and torch release the
        GIL). The batch is smaller than ``size`` when ``size`` frames would exceed
        BATCH_BYTES. A decoder failure is raised here, as InvalidVideo for OpenCV errors.
        Leaving the loop early (an error, a break) stops and joins the thread.

        Frames are decoded into BUFFERS preallocated batch arrays, recycled once the consumer
        asks for the next batch: a fresh array per frame would cost fresh memory pages (and
        their page faults) for every frame while batches are held, which made a threaded
        reader a quarter slower than a plain decode loop.
        """
        if self._cap is None:
            raise RuntimeError("VideoReader used outside its with-block")
        self._queue = queue.Queue(maxsize=PREFETCH)
        self._free = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._produce, args=(max(1, size), prepare), name="video-decode", daemon=True
        )
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    if isinstance(item.error, cv2.error):
                        message = str(item.error).strip().splitlines() or ["cv2.error"]
                        raise InvalidVideo(
                            f"video could not be decoded at frame {item.index}: {message[-1]}"
                        ) from item.error
                    raise item.error
                assert isinstance(item, tuple)
                buffer, batch = item
                if batch[-1].index >= self._max_frames:
                    raise InvalidVideo(f"video is too long: more than {self._max_frames} frames")
                yield batch
                self._free.put(buffer)  # the consumer is done with this batch's frames
        finally:
            self._stop_prefetch()

    def _produce(self, size: int, prepare: Callable[[np.ndarray], np.ndarray]) -> None:
        """Decode thread: put (buffer, list of DecodedFrame) per batch, then _END or a _Failure."""
        cap = self._cap
        assert cap is not None
        index = 0
        batch: list[DecodedFrame] = []
        buffer: np.ndarray | None = None
        allocated = 0
        try:
            ok, frame = cap.read()
            if ok and frame is not None:
                size = max(1, min(size, BATCH_BYTES // max(1, frame.nbytes)))
            while ok and frame is not None and not self._stop.is_set():
                if buffer is None:
                    # The first frame of a batch picks a buffer of its shape (a stream whose
                    # size changes mid-way gets fresh ones; cv2 never writes past a slot).
                    buffer = self._take_buffer(size, frame, allocated < BUFFERS)
                    if buffer is None:
                        return
                    allocated += 1
                slot = buffer[len(batch)]
                if frame.shape == slot.shape and not np.shares_memory(frame, slot):
                    slot[...] = frame
                    frame = slot
                batch.append(DecodedFrame(index, frame, prepare(frame)))
                index += 1
                if len(batch) >= size:
                    if not self._put((buffer, batch)):
                        return
                    batch, buffer = [], None
                    ok, frame = cap.read()
                else:
                    ok, frame = cap.read(image=buffer[len(batch)])
        except BaseException as exc:  # noqa: BLE001 - handed over; the consumer raises it
            # Whatever happens here must reach the consumer, or it would wait forever.
            self._put(_Failure(index, exc))
            return
        if batch and not self._put((buffer, batch)):
            return
        self._put(_END)

    def _take_buffer(self, size: int, frame: np.ndarray, may_allocate: bool) -> np.ndarray | None:
        """A batch buffer for frames shaped like ``frame``: a recycled one, a new one while
        fewer than BUFFERS exist, else the next one the consumer frees. None once stopped."""
        while not self._stop.is_set():
            try:
                buffer = self._free.get(block=not may_allocate, timeout=None if may_allocate else 0.05)
            except queue.Empty:
                if may_allocate:
                    return np.empty((size, *frame.shape), frame.dtype)
                continue
            if buffer.shape[1:] == frame.shape and buffer.dtype == frame.dtype:
                return buffer
            return np.empty((size, *frame.shape), frame.dtype)
        return None

    def _put(self, item: object) -> bool:
        # Bounded waits so a consumer that stopped early (error, too long) never strands us.
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _stop_prefetch(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def check_complete(self, decoded: int) -> None:
        """Raise InvalidVideo when ``decoded`` frames is none, or clearly short of the container's count."""
        if decoded == 0:
            raise InvalidVideo("video has no decodable frames")
        reported = self.info.reported_frames
        if reported > 0 and decoded < TRUNCATION_RATIO * reported:
            raise InvalidVideo(f"video is truncated: decoded {decoded} of {reported} frames")
        if reported > 0 and decoded != reported:
            # Containers often miscount by a frame or two; worth a log line, not a failure.
            logger.info("frame count differs from container decoded=%d reported=%d", decoded, reported)


def capture_backend() -> int:
    """The ``cv2.VideoCapture`` backend scans are read with: FFMPEG when the build has it, as
    CAP_ANY may hand an odd file to the image-sequence backend, and one backend keeps results
    identical from run to run."""
    return cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY


def _read_info(cap: cv2.VideoCapture) -> VideoInfo:
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    # Some containers report 0, NaN or a timebase (e.g. 90000) instead of a frame rate.
    fps_assumed = not math.isfinite(fps) or fps <= 0 or fps > 1000
    count = float(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    reported = int(count) if math.isfinite(count) and count > 0 else 0
    if fps_assumed:
        logger.info("container frame rate unusable fps=%r assumed=%s", fps, DEFAULT_FPS)
    return VideoInfo(fps=DEFAULT_FPS if fps_assumed else fps, fps_assumed=fps_assumed, reported_frames=reported)
