"""Frame iteration over one video file with PyAV (FFmpeg), every way a file can be bad turned
into InvalidVideo.

Frames stay in the decoder's YUV and are handed over as their full-resolution planes
(picture.Picture), views into the decoder's buffers, with whatever the consumer asked the decode
thread to prepare from each (the small analysis views on the CPU, so that the shrinks run on the
decoder's core beside decoding; nothing on the GPU, where gpu.py shrinks on the device); only the
few keyframe candidates are ever converted to BGR. The container's rotation is honoured, as players do.
The GPU's decoder (NVDEC) is used when asked for and available (hwdecode.py); its frames
arrive as NV12, software-decoded ones as I420.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import av
import numpy as np

from .errors import InvalidVideo
from .hwdecode import decoded_by_hardware, open_container, report_software
from .picture import Picture, Planes, analysis_views

logger = logging.getLogger(__name__)

# When the container's frame rate is missing or absurd, timestamps use this (frames per second).
DEFAULT_FPS = 30.0
# Fewer decoded frames than this share of the container's count means the file was cut short.
TRUNCATION_RATIO = 0.9
# Batches decoded ahead of the consumer: one being filled while one waits is enough to keep the
# decoder busy while the model works; memory stays a few batches of frames.
PREFETCH = 2
# Full-resolution frames of one batch may take about this much memory (bytes): 4K scans get
# smaller batches.
BATCH_BYTES = 128 * 1024 * 1024
# The first batch holds this many frames and each next one twice as many, up to the batch size,
# and near the container's frame count they shrink again (half the frames left): the analysis
# starts after a few frames instead of a whole batch and ends a few frames after decoding, time
# in which one core would otherwise wait for the other (results do not depend on batch sizes).
FIRST_BATCH = 4
# Pixel formats handed over as planes (I420 from software decoders, NV12 from the GPU's);
# FFmpeg converts any other to BGR.
_I420, _NV12 = "yuv420p", "nv12"

# Queue markers from the decode thread: end of stream, or a decoder failure at a frame index.
_END = object()


@dataclass(frozen=True)
class _Failure:
    index: int
    error: BaseException


@dataclass(frozen=True)
class DecodedFrame:
    """index: frame index from 0. picture: the full-resolution frame, possibly a view into the
    decoder's buffers (``picture.copy()`` what must outlive the batch). prepared: what the
    ``prepare`` given to ``VideoReader.batches`` made of the picture, None without one."""

    index: int
    picture: Picture
    prepared: Any = None


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


def decoder_threads() -> int:
    """Decoder threads: every core but one, which the analysis thread uses (at least one)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


class VideoReader:
    """Context manager over one video stream that yields its frames once, in order.

    Usage: ``with VideoReader(path, max_frames) as reader: for batch in reader.batches(n):
    ...`` then ``reader.check_complete(decoded)`` once the loop ends.

    decoder: "auto", "software" or "hardware" (hwdecode.py); cuda_device: the index of the GPU
    the frames go to, None when the analysis runs on the CPU. ``reader.decoder`` says which
    decoder gave the frames: "hardware" or "software" (known once the first frame is decoded).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_frames: int,
        decoder: str = "software",
        cuda_device: int | None = None,
    ) -> None:
        self._path = os.fspath(path)
        self._max_frames = max_frames
        self._decoder = decoder
        self._cuda_device = cuda_device
        self.decoder = "software"
        self._container: av.container.InputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=PREFETCH)
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
            container, hardware, _ = open_container(path, self._decoder, self._cuda_device)
        except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
            raise InvalidVideo(f"could not open video: {path} (not a video, or its container is damaged: "
                               f"{_short(exc)})") from exc
        self._container = container
        if not container.streams.video:
            self.close()
            raise InvalidVideo(f"could not open video: {path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = decoder_threads()
        self._stream = stream
        self.decoder = "hardware" if hardware else "software"
        self.info = _read_info(stream)
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
        # The decode thread must be gone before the container is closed under it.
        self._stop_prefetch()
        if self._container is not None:
            self._container.close()
            self._container = None
            self._stream = None

    def batches(self, size: int, prepare: Callable[[Picture], Any] | None = None) -> Iterator[list[DecodedFrame]]:
        """Yield lists of up to ``size`` consecutive DecodedFrame, in order; indices count from 0.

        A background thread decodes each frame, calls ``prepare`` on its picture (kept as the
        frame's ``prepared``) and hands full batches over through a queue of PREFETCH batches,
        so decoding overlaps the caller's work on the previous batch (FFmpeg, OpenCV and torch release the GIL). The batch is smaller than
        ``size`` when ``size`` frames would exceed BATCH_BYTES, and ramps from and to
        FIRST_BATCH at the ends. A decoder failure is raised
        here, as InvalidVideo for FFmpeg errors. Leaving the loop early (an error, a break)
        stops and joins the thread.
        """
        if self._container is None:
            raise RuntimeError("VideoReader used outside its with-block")
        self._queue = queue.Queue(maxsize=PREFETCH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(max(1, size), prepare), name="video-decode",
                                        daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    if isinstance(item.error, av.FFmpegError):
                        raise InvalidVideo(
                            f"video could not be decoded at frame {item.index}: {_short(item.error)}"
                        ) from item.error
                    raise item.error
                assert isinstance(item, list)
                if item[-1].index >= self._max_frames:
                    raise InvalidVideo(f"video is too long: more than {self._max_frames} frames")
                yield item
        finally:
            self._stop_prefetch()

    def _produce(self, size: int, prepare: Callable[[Picture], Any] | None) -> None:
        """Decode thread: put a list of DecodedFrame per batch, then _END or a _Failure."""
        assert self._container is not None and self._stream is not None
        index = sent = 0
        batch: list[DecodedFrame] = []
        try:
            for frame in self._container.decode(self._stream):
                if self._stop.is_set():
                    return
                picture = _picture(frame)
                if index == 0:
                    size = max(1, min(size, BATCH_BYTES // max(1, picture.nbytes)))
                    self._check_hardware(frame)
                batch.append(DecodedFrame(index, picture, prepare(picture) if prepare else None))
                index += 1
                if len(batch) >= self._batch_limit(size, sent, index) or index > self._max_frames:
                    if not self._put(batch):
                        return
                    batch, sent = [], sent + 1
                    if index > self._max_frames:
                        return  # the consumer raises "too long" on this batch
        except BaseException as exc:  # noqa: BLE001 - handed over; the consumer raises it
            # Whatever happens here must reach the consumer, or it would wait forever.
            self._put(_Failure(index, exc))
            return
        if batch and not self._put(batch):
            return
        self._put(_END)

    def _check_hardware(self, first: av.VideoFrame) -> None:
        assert self._stream is not None
        if self.decoder == "hardware" and not decoded_by_hardware(self._stream.codec_context, first):
            self.decoder = "software"
            context = self._stream.codec_context
            report_software(f"the CUDA decoder did not start on a {context.name} stream ({first.format.name}, "
                            f"{first.width}x{first.height}): no NVDEC library (a container without the driver's "
                            "video capability) or a profile, bit depth or size it does not take", self._decoder)

    def _batch_limit(self, size: int, sent: int, decoded: int) -> int:
        """Frames in the batch being filled after ``sent`` batches and ``decoded`` frames."""
        reported = self.info.reported_frames  # a hint: a wrong count only changes batch sizes
        ending = max(FIRST_BATCH, (reported - decoded) // 2) if reported else size
        return min(size, FIRST_BATCH << sent, ending)

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


def read_views(path: str | os.PathLike[str], analysis_width: int, max_frames: int = 100_000) -> list[Planes]:
    """Every frame's planes at ``analysis_width``, exactly as ``run()`` sees them (training's
    evaluation on real video files, tests). Raises InvalidVideo like the reader."""
    views: list[Planes] = []
    with VideoReader(path, max_frames) as reader:
        for batch in reader.batches(32, lambda picture: analysis_views(picture, analysis_width)):
            views.extend(decoded.prepared for decoded in batch)
        reader.check_complete(len(views))
    return views


def _picture(frame: av.VideoFrame) -> Picture:
    """The decoder's frame as a Picture: zero-copy plane views for even-sided yuv420p and nv12,
    else one BGR conversion by FFmpeg (4:2:2 and 4:4:4, full-range JPEG YUV, 10-bit, odd sizes)."""
    rotation = round(frame.rotation) % 360 if frame.rotation else 0
    even = frame.width % 2 == 0 and frame.height % 2 == 0
    if even and frame.format.name == _I420:
        return Picture(tuple(_plane_view(plane) for plane in frame.planes), rotation)
    if even and frame.format.name == _NV12:
        luma, pairs = frame.planes
        return Picture((_plane_view(luma), _plane_view(pairs, 2)), rotation)
    return Picture((frame.to_ndarray(format="bgr24"),), rotation)


def _plane_view(plane: av.video.plane.VideoPlane, channels: int = 1) -> np.ndarray:
    # Rows are line_size bytes apart (padding for SIMD); the view skips the padding, no copy.
    # NV12's second plane holds U/V pairs: ``channels`` bytes per pixel of plane.width.
    rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
    view = rows[: plane.height, : plane.width * channels]
    return view if channels == 1 else view.reshape(plane.height, plane.width, channels)


def _read_info(stream: av.video.stream.VideoStream) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    # Some containers report 0, NaN or a timebase (e.g. 90000) instead of a frame rate.
    fps_assumed = not math.isfinite(fps) or fps <= 0 or fps > 1000
    reported = int(stream.frames) if stream.frames and stream.frames > 0 else 0
    if fps_assumed:
        logger.info("container frame rate unusable fps=%r assumed=%s", fps, DEFAULT_FPS)
    return VideoInfo(fps=DEFAULT_FPS if fps_assumed else fps, fps_assumed=fps_assumed, reported_frames=reported)


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
