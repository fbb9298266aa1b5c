"""The analysis on the network's device: frames uploaded as decoded, measured there with torch.

On CUDA the analysis thread would otherwise spend half its time shrinking frames with OpenCV
while the GPU idles. Here each batch's full-resolution planes (I420 from the software decoder,
NV12 from the GPU's) are copied into pinned host memory and uploaded with non-blocking copies
on a copy stream; a compute stream waits for that copy (an event), shrinks the planes, takes
the metrics' sums and builds the network's inputs (torch_frames.py), runs the network and
copies the few results back into pinned memory. The results of batch n are read only after
batch n+1 has been staged and queued, so the upload of n+1 overlaps the compute of n, and the
staging of n+1 on the CPU overlaps both. On the CPU device the same code runs without streams,
pinned memory or events: every step is synchronous (what the tests run where there is no GPU).

Frames the decoder gave as BGR (4:2:2 MJPEG, 10-bit, odd sizes) are shrunk on the CPU with
OpenCV (picture.analysis_views) and uploaded small.

Tolerances against the OpenCV path (measure.OpenCVMeasure), asserted by
tests/algorithms/test_video_summary_gpu.py (on the CPU device everywhere, on CUDA where present):

- Views (the I420 planes at analysis_width) and network inputs: equal, bit for bit, on any
  device (torch_frames.py reproduces OpenCV's arithmetic; it names the one rounding case that
  could differ by a grey level).
- Metrics: exposure and motion equal; sharpness within 1e-12 relative (the same integer sums,
  but OpenCV's sum of squares comes back as a norm squared, exact only to an ulp).
- On one device, scores and embeddings: the same network on the same inputs, equal to 1e-5
  on the CPU (1e-3 on CUDA, float16); on the CPU the summary, frames.csv and keyframes of a
  run are the same with either path.
- CUDA against the CPU: the network runs in float16 there, so scores may differ from the
  float32 CPU network's by up to 0.02 and embedding components by up to 0.05; the metrics do
  not depend on it. Keyframes then usually agree; a neighbouring frame that scores alike may
  be chosen instead (at least 3 in 4 the same on the test scan).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby

import numpy as np
import torch

from . import torch_frames
from .decode import DecodedFrame
from .measure import BatchResult, FrameMeasure
from .picture import Picture, analysis_views, small_size
from .quality import metrics_from_sums
from .scorer import FrameScorer


@dataclass
class _Pending:
    """A batch queued on the device: its results land in ``floats`` (N x (1 + D): quality, then
    the embedding) and ``sums`` (N x 5, torch_frames.metric_sums) once ``done`` has passed."""

    batch: list[DecodedFrame]
    pixels: list[int]
    floats: torch.Tensor
    sums: torch.Tensor
    done: torch.cuda.Event | None


class TorchMeasure(FrameMeasure):
    """Measures with torch on the scorer's device, one batch in flight while the next is staged."""

    name = "torch"

    def __init__(self, scorer: FrameScorer, analysis_width: int) -> None:
        self._scorer = scorer
        self._device = scorer.device
        self._width = analysis_width
        cuda = self._device.type == "cuda"
        # Pinned memory makes host<->device copies asynchronous; without CUDA it is pointless
        # (and fails on CPU-only builds of torch).
        self._pin = cuda
        self._copy_stream = torch.cuda.Stream(self._device) if cuda else None
        self._compute_stream = torch.cuda.Stream(self._device) if cuda else None
        self._previous: torch.Tensor | None = None  # the last frame's small luma, on the device

    def measure(self, batches: Iterable[list[DecodedFrame]]) -> Iterator[tuple[list[DecodedFrame], BatchResult]]:
        pending: _Pending | None = None
        for batch in batches:
            queued = self._submit(batch)
            if pending is not None:
                yield pending.batch, self._collect(pending)
            pending = queued
        if pending is not None:
            yield pending.batch, self._collect(pending)

    @torch.inference_mode()
    def _submit(self, batch: list[DecodedFrame]) -> _Pending:
        """Stage and upload ``batch`` (copy stream), then queue its measuring (compute stream)."""
        groups = [list(group) for _, group in groupby((_host_planes(d.picture, self._width) for d in batch),
                                                         key=_Planes.key)]
        with self._on(self._copy_stream):
            uploads = [[self._upload(frames, i) for i in range(len(frames[0].planes))] for frames in groups]
            copied = self._record(self._copy_stream)
        with self._on(self._compute_stream):
            self._wait(copied, [tensor for planes in uploads for tensor in planes])
            inputs, sums, pixels = [], [], []
            for frames, planes in zip(groups, uploads, strict=True):
                first = frames[0]
                size = small_size(first.planes[0].shape, self._width, first.rotation)
                views = torch_frames.views(_i420(first.layout, planes), size, first.rotation)
                sums.append(torch_frames.metric_sums(views[0], self._previous))
                self._previous = views[0][-1]
                inputs.append(torch_frames.model_inputs(views))
                pixels += [views[0].shape[-2] * views[0].shape[-1]] * len(frames)
            quality, embedding = self._scorer.score_tensor(torch.cat(inputs))
            floats = self._download(torch.cat([quality[:, None], embedding], dim=1))
            sums_host = self._download(torch.cat(sums))
            done = self._record(self._compute_stream)
        return _Pending(batch, pixels, floats, sums_host, done)

    def _collect(self, pending: _Pending) -> BatchResult:
        if pending.done is not None:
            pending.done.synchronize()
        floats, sums = pending.floats.numpy(), pending.sums.numpy()
        metrics = [metrics_from_sums(pixels, float(row[0]), float(row[1]), float(row[2]), float(row[3]),
                                     None if row[4] < 0 else float(row[4]))
                   for pixels, row in zip(pending.pixels, sums, strict=True)]
        # Copies: the pinned buffers go back to torch's cache instead of living in the table.
        return BatchResult(floats[:, 0].astype(np.float64), np.array(floats[:, 1:]),
                           np.asarray(metrics, dtype=np.float64).reshape(-1, 3))

    def _upload(self, frames: list[_Planes], plane: int) -> torch.Tensor:
        """One plane of every frame in a group, stacked in (pinned) host memory and copied to
        the device without waiting."""
        host = torch.empty((len(frames), *frames[0].planes[plane].shape), dtype=torch.uint8, pin_memory=self._pin)
        rows = host.numpy()
        for i, frame in enumerate(frames):
            # numpy's single-threaded copy: torch's would wake its thread pool, whose spinning
            # takes cores from the decoder's threads (as OpenCV's did, see analysis.py).
            np.copyto(rows[i], frame.planes[plane])
        return host.to(self._device, non_blocking=True)

    def _download(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self._pin:
            return tensor.cpu()
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return host.copy_(tensor, non_blocking=True)

    def _on(self, stream: torch.cuda.Stream | None) -> contextlib.AbstractContextManager[object]:
        return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()

    @staticmethod
    def _record(stream: torch.cuda.Stream | None) -> torch.cuda.Event | None:
        return stream.record_event() if stream is not None else None

    def _wait(self, copied: torch.cuda.Event | None, uploaded: list[torch.Tensor]) -> None:
        """The compute stream waits for the upload; the uploaded tensors, allocated on the copy
        stream, are marked as used by the compute stream so their memory is not reused early."""
        if self._compute_stream is None or copied is None:
            return
        self._compute_stream.wait_event(copied)
        for tensor in uploaded:
            tensor.record_stream(self._compute_stream)


@dataclass(frozen=True)
class _Planes:
    """A frame's planes as they are uploaded: layout "i420" or "nv12", as stored (rotation
    applied on the device)."""

    layout: str
    planes: tuple[np.ndarray, ...]
    rotation: int

    def key(self) -> tuple[object, ...]:
        """Frames with equal keys are uploaded and measured together."""
        return (self.layout, self.rotation, *(plane.shape for plane in self.planes))


def _host_planes(picture: Picture, width: int) -> _Planes:
    if picture.layout == "bgr":
        # Rare formats: shrunk and converted on the CPU, uploaded small and upright.
        return _Planes("i420", analysis_views(picture, width), 0)
    return _Planes(picture.layout, picture.planes, picture.rotation)


def _i420(layout: str, planes: list[torch.Tensor]) -> torch_frames.TensorPlanes:
    if layout == "nv12":
        luma, pairs = planes
        return luma, pairs[..., 0], pairs[..., 1]
    y, u, v = planes
    return y, u, v
