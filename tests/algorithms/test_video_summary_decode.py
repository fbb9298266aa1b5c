"""The decode thread and the YUV views: batches in order, pixels as OpenCV decodes them,
rotation honoured, failures raised in the consumer, no thread left behind; the GPU's decoder
asked for and, where it cannot be had, software decoding with the reason logged once."""

from __future__ import annotations

import logging
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
import torch

from algorithms.video_summary import InvalidParams, decode, hwdecode, run
from algorithms.video_summary.decode import VideoReader, read_views
from algorithms.video_summary.picture import analysis_views, planes_bgr
from algorithms.video_summary.quality import exposure_score, frame_metrics
from service.synthetic import write_scan_video


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "video-decode"]


def _opencv_frames(path: str | Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def downscale(frame: np.ndarray, width: int) -> np.ndarray:
    """OpenCV's own shrink of a BGR frame to ``width`` (INTER_AREA), the reference for our views."""
    height = round(frame.shape[0] * width / frame.shape[1])
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def _mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_scan_video(tmp_path_factory.mktemp("v") / "v.mp4", frames=30, size=(640, 480),
                            blur=None, exposure=None)["path"]


def test_batches_cover_every_frame_in_order_with_opencvs_pixels(video: str) -> None:
    expected = _opencv_frames(video)
    sizes, indices = [], []
    with VideoReader(video, 1000) as reader:
        for batch in reader.batches(4):
            sizes.append(len(batch))
            for decoded in batch:
                indices.append(decoded.index)
                reference = expected[decoded.index]
                # Full resolution: the same decoder, OpenCV's YUV->BGR conversion (chroma
                # upsampling may differ by a grey level or two).
                assert decoded.picture.i420 and decoded.picture.size == (640, 480)
                assert _mean_difference(decoded.picture.bgr(), reference) < 2.0
                # The planes shrunk in YUV match shrinking OpenCV's BGR frame (their chroma has
                # half the view's resolution, as in the video; luma is video range).
                planes = analysis_views(decoded.picture, 320)
                y, u, v = planes
                assert y.shape == (240, 320) and u.shape == v.shape == (120, 160)
                small, view = downscale(reference, 320), planes_bgr(planes)
                assert _mean_difference(view, small) < 5.0  # a colourful texture: chroma detail
                assert np.all(np.abs(view.mean(axis=(0, 1)) - small.mean(axis=(0, 1))) < 2.0)
                grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float64)
                assert np.abs((y - 16.0) * 255 / 219 - grey).mean() < 2.0
        reader.check_complete(sum(sizes))
    assert sizes == [4] * 7 + [2]
    with VideoReader(video, 1000) as reader:
        assert [len(b) for b in reader.batches(32)] == [4, 8, 6, 4, 4, 4]  # ramping up, then down near the end
    assert indices == list(range(30))
    assert not _decode_threads()


def test_kept_pictures_survive_the_decoders_buffer_reuse(video: str) -> None:
    kept = {}
    with VideoReader(video, 1000) as reader:
        for batch in reader.batches(2):
            for decoded in batch:
                if decoded.index in (0, 29):
                    kept[decoded.index] = decoded.picture.copy()
    frames = _opencv_frames(video)
    assert _mean_difference(kept[0].bgr(), frames[0]) < 2.0
    assert _mean_difference(kept[29].bgr(), frames[29]) < 2.0
    assert _mean_difference(kept[0].bgr(), frames[29]) > 5.0  # a panned scene: frames differ


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_video_is_analysed_upright_as_opencv_shows_it(tmp_path: Path, video: str, rotation: int) -> None:
    # A phone held upright stores landscape frames and a display matrix saying how to turn them.
    frames = _opencv_frames(video)[:6]
    path = tmp_path / "turned.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(24))
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.set_display_rotation(rotation)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(stream.encode())
    upright = _opencv_frames(path)[0]  # OpenCV applies the display matrix
    size = (upright.shape[1], upright.shape[0])
    assert size == ((640, 480) if rotation == 180 else (480, 640))
    with VideoReader(path, 1000) as reader:
        decoded = next(iter(reader.batches(6)))[0]
    assert decoded.picture.size == size
    assert _mean_difference(decoded.picture.bgr(), upright) < 2.0
    view = planes_bgr(analysis_views(decoded.picture, size[0] // 2))
    assert view.shape == (size[1] // 2, size[0] // 2, 3)
    assert _mean_difference(view, downscale(upright, size[0] // 2)) < 5.0
    if rotation == 90:
        result = run(path, {"device": "cpu"}, tmp_path / "out")
        assert (result.summary["width"], result.summary["height"]) == size
        keyframe = cv2.imread(str(tmp_path / "out" / result.summary["keyframes"][0]["file"]))
        assert keyframe.shape == (size[1], size[0], 3)


def test_other_pixel_formats_take_the_bgr_path(tmp_path: Path, video: str) -> None:
    # MJPEG decodes to full-range 4:2:2: converted to BGR by FFmpeg, views shrunk from it.
    frames = _opencv_frames(video)[:5]
    path = tmp_path / "scan.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 24.0, (640, 480))
    for frame in frames:
        writer.write(frame)
    writer.release()
    with VideoReader(path, 1000) as reader:
        decoded = [d for batch in reader.batches(8) for d in batch]
    assert len(decoded) == 5 and not decoded[0].picture.i420
    assert planes_bgr(analysis_views(decoded[0].picture, 320)).shape == (240, 320, 3)
    assert _mean_difference(decoded[0].picture.bgr(), frames[0]) < 4.0
    assert len(read_views(path, 320)) == 5


def test_failure_in_the_decode_thread_reaches_the_consumer(video: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = decode._picture

    def failing(frame: object) -> object:
        if len(calls) == 13:
            raise MemoryError("no room for frame 13")
        calls.append(1)
        return real(frame)  # type: ignore[arg-type]

    monkeypatch.setattr(decode, "_picture", failing)
    seen: list[int] = []
    with VideoReader(video, 1000) as reader, pytest.raises(MemoryError, match="frame 13"):
        for batch in reader.batches(4):
            seen.extend(d.index for d in batch)
    assert seen == list(range(12))  # the batches before the failure, then the error
    assert not _decode_threads()


def test_consumer_leaving_early_stops_the_thread(video: str) -> None:
    with VideoReader(video, 1000) as reader:
        for batch in reader.batches(2):
            assert batch[0].index == 0
            break
    assert not _decode_threads()


def test_metrics_on_video_range_luma_read_as_full_range_grey() -> None:
    # frame_metrics reads the decoder's luma (16..235) and reports full-range grey units: the
    # same figures as measuring a full-range grey image of the same frame.
    rng = np.random.default_rng(3)
    grey = cv2.GaussianBlur(rng.integers(0, 256, (240, 320), dtype=np.uint8), (0, 0), 1.0)
    grey[:30] = 255  # a blown-out band
    shifted = np.roll(grey, 3, axis=1)

    def luma(image: np.ndarray) -> np.ndarray:
        return np.round(16 + image * (219 / 255)).astype(np.uint8)

    sharpness, exposure, motion = frame_metrics(luma(grey), luma(shifted))
    laplacian = cv2.Laplacian(grey, cv2.CV_64F)
    assert sharpness == pytest.approx(laplacian.var(), rel=0.03)
    clipped = float(np.mean((grey <= 4) | (grey >= 251)))
    assert exposure == pytest.approx(exposure_score(grey.mean() / 255, clipped), abs=0.01)
    assert motion == pytest.approx(np.abs(grey.astype(float) - shifted).mean() / 255, rel=0.03)


def _software_summary(path: str, out: Path) -> dict:
    summary = run(path, {"device": "cpu", "decoder": "software"}, out).summary
    assert summary["processing"]["decoder"] == "software"
    return summary


def _refuse_device(monkeypatch: pytest.MonkeyPatch) -> str:
    real = av.open

    def opening(*args: object, hwaccel: object = None, **kwargs: object) -> object:
        if hwaccel is not None:
            raise OSError(1, "Operation not permitted")  # what FFmpeg says without a driver
        return real(*args, **kwargs)

    monkeypatch.setattr(hwdecode.av, "open", opening)
    monkeypatch.setattr(hwdecode, "hwdevices_available", lambda: ["cuda"])
    return "the CUDA decoder could not be set up"


def _no_cuda_decoder_for_the_codec(monkeypatch: pytest.MonkeyPatch) -> str:
    real = av.open  # the container opens, but its stream gets no CUDA decoder attached
    monkeypatch.setattr(hwdecode.av, "open", lambda *args, hwaccel=None, **kwargs: real(*args, **kwargs))
    monkeypatch.setattr(hwdecode, "hwdevices_available", lambda: ["cuda"])
    return "FFmpeg has no CUDA decoder for codec mpeg4"


def _ffmpeg_without_cuda(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(hwdecode, "hwdevices_available", lambda: ["vaapi"])
    return "built without CUDA"


def _decoder_does_not_start(monkeypatch: pytest.MonkeyPatch) -> str:
    # The stream has the CUDA decoder attached, yet FFmpeg falls back to software on the first
    # frame (no NVDEC library in the container, a profile NVDEC does not take).
    monkeypatch.setattr(decode, "open_container", lambda path, decoder, device: hwdecode.Opened(av.open(path), True))
    return "the CUDA decoder did not start on a mpeg4 stream (yuv420p, 640x480)"


@pytest.mark.parametrize(
    "refuse", [_refuse_device, _no_cuda_decoder_for_the_codec, _ffmpeg_without_cuda, _decoder_does_not_start],
    ids=lambda f: f.__name__[1:],
)
def test_hardware_decoder_unavailable_falls_back_to_software(
    video: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, refuse: Any
) -> None:
    expected = _software_summary(video, tmp_path / "software")
    monkeypatch.setattr(hwdecode, "_reported", set())
    reason = refuse(monkeypatch)
    with caplog.at_level(logging.DEBUG, logger=hwdecode.__name__):
        first = run(video, {"device": "cpu", "decoder": "hardware"}, tmp_path / "asked").summary
        again = run(video, {"device": "cpu", "decoder": "hardware"}, tmp_path / "again").summary
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and reason in warnings[0], warnings  # once per process and reason
    for summary, out in ((first, "asked"), (again, "again")):
        assert summary["processing"]["decoder"] == "software"
        assert summary.pop("params")["decoder"] == "hardware"
        assert summary == {k: v for k, v in expected.items() if k != "params"}
        assert (tmp_path / out / "frames.csv").read_bytes() == (tmp_path / "software" / "frames.csv").read_bytes()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without CUDA")
def test_hardware_decoder_on_a_machine_without_a_gpu(
    video: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The real thing, nothing patched: PyAV's FFmpeg asks the driver for a CUDA device and gets none.
    expected = _software_summary(video, tmp_path / "software")
    monkeypatch.setattr(hwdecode, "_reported", set())
    with caplog.at_level(logging.INFO, logger=hwdecode.__name__):
        summary = run(video, {"device": "cpu", "decoder": "hardware"}, tmp_path / "asked").summary
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "decoding in software" in warnings[0], warnings
    assert summary["processing"]["decoder"] == "software"
    assert summary.pop("params")["decoder"] == "hardware"
    assert summary == {k: v for k, v in expected.items() if k != "params"}


def test_auto_decoder_asks_for_the_gpu_only_for_a_cuda_network(
    video: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert not hwdecode.wants_hardware("auto", None) and hwdecode.wants_hardware("auto", 0)
    assert hwdecode.wants_hardware("hardware", None) and not hwdecode.wants_hardware("software", 0)
    monkeypatch.setattr(hwdecode, "_reported", set())
    with caplog.at_level(logging.DEBUG, logger=hwdecode.__name__):
        summary = run(video, {"device": "cpu"}, tmp_path).summary
    assert summary["processing"]["decoder"] == "software" and summary["params"]["decoder"] == "auto"
    assert not caplog.records  # not asked for, so nothing to explain


def test_unknown_decoder_is_a_param_error(video: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidParams, match="decoder must be one of auto, software, hardware"):
        run(video, {"decoder": "nvdec"}, tmp_path)
