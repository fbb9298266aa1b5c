"""Opening a video for the GPU's decoder (NVDEC) or for FFmpeg's software decoders.

param ``decoder``: "software" never asks for the GPU; "hardware" asks for it and decodes in
software when it cannot be had; "auto" (the default) asks for it only when the network runs on
a CUDA device, whose frames go to that GPU anyway. PyAV's ``hwaccel`` drives NVDEC through
FFmpeg, on the CUDA primary context (the one torch uses, so no second context is created); each
frame is downloaded to host memory as NV12, which picture.Picture takes as it is.

Why the hardware decoder is not used (no CUDA in this FFmpeg, no driver or GPU, no CUDA
decoder for the codec, or one that refuses the stream's profile, bit depth or size) is logged
once per process and reason: a worker analyses scan after scan, and the reason is the same for
each. The software decoder then gives the frames the run would have had with
``decoder="software"``: the outputs are the same.
"""

from __future__ import annotations

import logging
import threading
from typing import NamedTuple

import av
from av.codec.hwaccel import HWAccel, hwdevices_available

logger = logging.getLogger(__name__)

# Formats FFmpeg downloads CUDA frames to (8-bit 4:2:0, 10/16-bit 4:2:0); a software decoder
# of the codecs NVDEC takes gives yuv420p and its relatives instead.
_DOWNLOADED = frozenset({"nv12", "p010le", "p016le"})

_reported: set[str] = set()
_reported_lock = threading.Lock()


def wants_hardware(decoder: str, cuda_device: int | None) -> bool:
    """Whether to ask for NVDEC: always for "hardware", for "auto" when the network is on CUDA
    (``cuda_device``: its index, None when the network runs on the CPU)."""
    return decoder == "hardware" or (decoder == "auto" and cuda_device is not None)


class Opened(NamedTuple):
    """container: opened for decoding. hardware: its first video stream has the CUDA decoder
    attached. refused: why not, when the GPU's decoder was asked for (also logged)."""

    container: av.container.InputContainer
    hardware: bool
    refused: str | None = None


def open_container(path: str, decoder: str, cuda_device: int | None) -> Opened:
    """Open ``path`` for decoding with the decoder ``decoder`` asks for. Raises what ``av.open``
    raises for a file it cannot open."""
    if not wants_hardware(decoder, cuda_device):
        return Opened(av.open(path, mode="r"), False)
    reason = None if "cuda" in hwdevices_available() else "this FFmpeg (PyAV's) was built without CUDA"
    if reason is None:
        try:
            container = av.open(path, mode="r", hwaccel=_cuda(cuda_device))
        except (av.FFmpegError, OSError) as exc:
            # No driver, no GPU, or a file FFmpeg cannot open at all: the software open below
            # tells them apart (it raises for the file, and only then is nothing reported).
            reason = f"the CUDA decoder could not be set up ({_short(exc)}: no usable NVIDIA driver or GPU)"
        else:
            if not container.streams.video or container.streams.video[0].codec_context.is_hwaccel:
                return Opened(container, bool(container.streams.video))
            codec = container.streams.video[0].codec_context.name
            reason = f"FFmpeg has no CUDA decoder for codec {codec}"
            report_software(reason, decoder)
            return Opened(container, False, reason)  # the stream's context is a plain software decoder
    container = av.open(path, mode="r")
    report_software(reason, decoder)
    return Opened(container, False, reason)


def decoded_by_hardware(context: av.video.codeccontext.VideoCodecContext, frame: av.VideoFrame) -> bool:
    """Whether ``frame`` (the first) came from the GPU's decoder, for a context that has one
    attached: FFmpeg falls back to software itself when NVDEC refuses the stream."""
    return context.pix_fmt == "cuda" or frame.format.name in _DOWNLOADED


def report_software(reason: str, decoder: str) -> None:
    """Log once per process and reason why frames are decoded in software although the GPU's
    decoder was asked for (a warning when it was asked for by name)."""
    with _reported_lock:
        first = reason not in _reported
        _reported.add(reason)
    level = logging.WARNING if decoder == "hardware" else logging.INFO
    logger.log(level if first else logging.DEBUG, "hardware decoding unavailable, decoding in software "
               "decoder=%s reason=%r", decoder, reason)


def _cuda(device: int | None) -> HWAccel:
    # allow_software_fallback: a stream NVDEC refuses (a 4:2:2 profile, too large) is decoded
    # in software rather than failing the scan.
    return HWAccel(device_type="cuda", device=None if device is None else str(device),
                   allow_software_fallback=True, options={"primary_ctx": "1"})


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
