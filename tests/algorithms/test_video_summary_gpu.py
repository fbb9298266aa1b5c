"""The torch analysis path (gpu.py, torch_frames.py) against the OpenCV path, on the CPU device
everywhere (so CI covers it) and on CUDA wherever there is a GPU; NV12 frames (what the GPU's
decoder gives) against I420; the tolerances are gpu.py's."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch

from algorithms.video_summary import DEFAULT_WEIGHTS, decode, run, torch_frames
from algorithms.video_summary.decode import VideoReader
from algorithms.video_summary.gpu import TorchMeasure
from algorithms.video_summary.measure import BatchResult, OpenCVMeasure
from algorithms.video_summary.model import model_inputs
from algorithms.video_summary.picture import Picture, analysis_views, small_size
from algorithms.video_summary.quality import frame_metrics, metrics_from_sums
from algorithms.video_summary.scorer import FrameScorer
from service.synthetic import write_scan_video

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
# (width, height) of the video, analysis_width: one halving; halvings then an area step; a 1.5x
# area step; odd chroma sides (181 rows); a frame smaller than the network's view.
SHAPES = [((640, 480), 320), ((1280, 720), 250), ((1920, 1080), 320), ((650, 362), 320), ((90, 40), 320)]
# Sharpness against OpenCV's (its sum of squares is a square root squared).
SHARPNESS_REL = 1e-12
# On CUDA the network runs in float16: scores and embeddings against the float32 CPU network.
CUDA_SCORE_ABS, CUDA_EMBEDDING_ABS = 0.02, 0.05


def _pictures(path: str, rotation: int = 0) -> list[Picture]:
    with VideoReader(path, 1000) as reader:
        pictures = [Picture(d.picture.copy().planes, rotation) for batch in reader.batches(8) for d in batch]
        reader.check_complete(len(pictures))
    return pictures


def _tensors(picture: Picture, device: str) -> torch_frames.TensorPlanes:
    y, u, v = (torch.from_numpy(np.ascontiguousarray(p))[None].to(device) for p in picture.planes)
    return y, u, v


def _host(planes: torch_frames.TensorPlanes) -> tuple[np.ndarray, ...]:
    return tuple(p[0].cpu().numpy().astype(np.uint8) for p in planes)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, width", SHAPES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
@pytest.mark.parametrize("rotation", [0, 90])
def test_torch_views_inputs_and_metrics_equal_opencvs(
    tmp_path: Path, device: str, shape: tuple[int, int], width: int, rotation: int
) -> None:
    video = write_scan_video(tmp_path / "v.mp4", frames=3, size=shape, blur=None, exposure=None, seed=4)
    previous_cpu: np.ndarray | None = None
    previous: torch.Tensor | None = None
    for picture in _pictures(video["path"], rotation):
        expected = analysis_views(picture, width)
        size = small_size(picture.planes[0].shape, width, rotation)
        views = torch_frames.views(_tensors(picture, device), size, rotation)
        for mine, theirs in zip(_host(views), expected, strict=True):
            assert np.array_equal(mine, theirs)
        inputs = torch_frames.model_inputs(views)[0].cpu().numpy()
        reference = model_inputs([expected])[0]
        height, view_width = expected[0].shape
        if view_width >= 64 and height >= 48:
            assert np.array_equal(inputs, reference)
        else:  # the small-frame path: one grey level on a few pixels (torch_frames.py)
            difference = np.abs(inputs.astype(int) - reference)
            assert difference.max() <= 1 and (difference > 0).mean() <= 0.02
        sums = [float(s) for s in torch_frames.metric_sums(views[0], previous).cpu().numpy()[0]]
        metrics = metrics_from_sums(height * view_width, *sums[:4], None if sums[4] < 0 else sums[4])
        sharpness, exposure, motion = frame_metrics(expected[0], previous_cpu)
        # OpenCV (IPP) takes the Laplacian's sum of squares as a norm squared: exact to an ulp.
        assert metrics == (pytest.approx(sharpness, rel=SHARPNESS_REL), exposure, motion)
        previous, previous_cpu = views[0][0], expected[0]


def _measure(measure: Any, path: str, batch_size: int = 5) -> tuple[list[list[int]], BatchResult]:
    """Every batch through ``measure``; the frame indices per batch and the results joined."""
    indices, results = [], []
    with VideoReader(path, 1000) as reader:
        for batch, result in measure.measure(reader.batches(batch_size, measure.prepare)):
            indices.append([d.index for d in batch])
            results.append(result)
    joined = BatchResult(*(np.concatenate([getattr(r, f) for r in results]) for f in ("quality", "embedding", "metrics")))
    return indices, joined


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return write_scan_video(tmp_path_factory.mktemp("scan") / "scan.mp4", frames=40, size=(640, 480),
                            blur=(10, 20), exposure=(25, 32), seed=6)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_measure_gives_opencvs_results(scan: dict[str, Any], device: str) -> None:
    # The whole staged pipeline (pinned buffers, streams and events on CUDA), one batch in flight.
    scorer = FrameScorer(DEFAULT_WEIGHTS, device)
    with scorer.session():
        torch_batches, torch_result = _measure(TorchMeasure(scorer, 320), scan["path"])
        opencv_batches, opencv_result = _measure(OpenCVMeasure(scorer, 320), scan["path"])
    assert torch_batches == opencv_batches and sum(map(len, torch_batches)) == 40
    assert np.allclose(torch_result.metrics, opencv_result.metrics, rtol=SHARPNESS_REL, atol=0)
    # The same inputs to the same network on the same device (float16 kernels may differ in the
    # last bits between calls on CUDA).
    same = 1e-5 if device == "cpu" else 1e-3
    assert np.allclose(torch_result.quality, opencv_result.quality, rtol=0, atol=same)
    assert np.allclose(torch_result.embedding, opencv_result.embedding, rtol=0, atol=same)


def _frames_csv(out: Path) -> list[dict[str, float]]:
    with open(out / "frames.csv", newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def test_run_with_the_torch_backend_on_the_cpu_equals_the_default(scan: dict[str, Any], tmp_path: Path) -> None:
    params = {"device": "cpu", "keyframes": 4}
    default = run(scan["path"], params, tmp_path / "opencv")
    torch_run = run(scan["path"], params, tmp_path / "torch", analysis_backend="torch")
    assert default.summary.pop("processing") == {"decoder": "software", "analysis": "opencv"}
    assert torch_run.summary.pop("processing") == {"decoder": "software", "analysis": "torch"}
    assert torch_run.summary == default.summary  # same keyframes, scores, metrics, segments
    assert (tmp_path / "torch" / "frames.csv").read_bytes() == (tmp_path / "opencv" / "frames.csv").read_bytes()


@needs_cuda
def test_run_on_cuda_matches_the_cpu_path(scan: dict[str, Any], tmp_path: Path) -> None:
    # The torch path on the GPU (float16 network) against the OpenCV path on the CPU (float32),
    # both fed by the software decoder: metrics equal, scores within gpu.py's tolerances.
    cpu = run(scan["path"], {"device": "cpu", "decoder": "software"}, tmp_path / "cpu").summary
    gpu = run(scan["path"], {"device": "cuda", "decoder": "software"}, tmp_path / "gpu").summary
    assert gpu["model"]["device"] == "cuda" and gpu["processing"] == {"decoder": "software", "analysis": "torch"}
    cpu_rows, gpu_rows = _frames_csv(tmp_path / "cpu"), _frames_csv(tmp_path / "gpu")
    for a, b in zip(cpu_rows, gpu_rows, strict=True):
        assert (a["exposure"], a["motion"]) == (b["exposure"], b["motion"])
        assert a["sharpness"] == pytest.approx(b["sharpness"], abs=0.0011)  # an ulp may round the 3rd decimal
        assert a["quality"] == pytest.approx(b["quality"], abs=CUDA_SCORE_ABS)
    for a, b in zip(cpu["segments"], gpu["segments"], strict=True):
        assert np.allclose(a["embedding"], b["embedding"], rtol=0, atol=CUDA_EMBEDDING_ABS)
    assert len(gpu["keyframes"]) == len(cpu["keyframes"])
    same = {k["index"] for k in gpu["keyframes"]} & {k["index"] for k in cpu["keyframes"]}
    # Neighbouring frames of a panned scene score alike: float16 may pick a neighbour.
    assert len(same) >= 0.75 * len(cpu["keyframes"])


@needs_cuda
def test_hardware_decoding_on_cuda_gives_close_results(scan: dict[str, Any], tmp_path: Path) -> None:
    software = run(scan["path"], {"device": "cuda", "decoder": "software"}, tmp_path / "sw").summary
    hardware = run(scan["path"], {"device": "cuda", "decoder": "hardware"}, tmp_path / "hw").summary
    sw_rows, hw_rows = _frames_csv(tmp_path / "sw"), _frames_csv(tmp_path / "hw")
    assert len(sw_rows) == len(hw_rows) == 40
    if hardware["processing"]["decoder"] == "software":  # no NVDEC here: the reason was logged
        assert sw_rows == hw_rows and hardware["keyframes"] == software["keyframes"]
        return
    # MPEG-4 part 2 leaves the inverse DCT's rounding to the decoder: NVDEC's pixels may differ
    # by a grey level here and there, which moves the metrics a little.
    for a, b in zip(sw_rows, hw_rows, strict=True):
        assert b["sharpness"] == pytest.approx(a["sharpness"], rel=0.05, abs=1.0)
        assert b["exposure"] == pytest.approx(a["exposure"], abs=0.01)
        assert b["motion"] == pytest.approx(a["motion"], abs=0.005)
        assert b["quality"] == pytest.approx(a["quality"], abs=0.05)


def test_nv12_frames_measure_as_their_i420(
    scan: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The GPU's decoder hands NV12 over; the same frames as I420 and as NV12 give the same views,
    # pictures and results on both paths.
    with av.open(scan["path"]) as container:
        frame = next(container.decode(video=0))
        i420, nv12 = decode._picture(frame), decode._picture(frame.reformat(format="nv12"))
    assert (i420.layout, nv12.layout) == ("i420", "nv12") and nv12.nbytes == i420.nbytes
    assert np.array_equal(nv12.bgr(), i420.bgr())
    for mine, theirs in zip(analysis_views(nv12, 250), analysis_views(i420, 250), strict=True):
        assert np.array_equal(mine, theirs)
    real = decode._picture
    expected = run(scan["path"], {"device": "cpu"}, tmp_path / "i420-opencv", analysis_backend="opencv").summary
    for backend in ("opencv", "torch"):
        with monkeypatch.context() as patch:
            patch.setattr(decode, "_picture", lambda f: real(f.reformat(format="nv12")))
            got = run(scan["path"], {"device": "cpu"}, tmp_path / f"nv12-{backend}", analysis_backend=backend).summary
        assert got.pop("processing")["analysis"] == backend
        assert {k: v for k, v in expected.items() if k != "processing"} == got, backend
    assert json.loads((tmp_path / "nv12-torch" / "summary.json").read_text())["processing"]["analysis"] == "torch"


def test_unknown_analysis_backend_is_refused(scan: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="analysis_backend"):
        run(scan["path"], {}, tmp_path, analysis_backend="cupy")
