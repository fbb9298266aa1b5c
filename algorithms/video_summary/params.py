"""Parameter validation: the platform's loose mapping in, one typed, checked ``Params`` out.

Unknown keys are ignored on purpose: the platform sends every task parameter (scan_id,
metadata, ...) and only the ones below concern this algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .errors import InvalidParams


@dataclass(frozen=True)
class Params:
    """Effective parameters of one run.

    keyframes: how many keyframes to aim for (one per equal-length window of the scan).
    segments: how many equal-length segments the summary reports.
    analysis_width: width in pixels frames are downscaled to before any metric is computed.
    dedupe_similarity: cosine similarity of frame embeddings (-1..1) at or above which a
        keyframe candidate counts as a near-duplicate of one already chosen.
    min_quality: network quality score (0..1) below which a frame is poor and never chosen if
        avoidable. 0.5 by default: the score is trained as the probability that a frame is
        clean, so below 0.5 the network finds it more likely damaged than not.
    thumb_width: width in pixels of each contact-sheet tile.
    max_frames: longest scan accepted, in frames.
    batch_size: frames per forward pass of the network.
    device: "auto" (CUDA when available, else CPU), "cpu" or "cuda".
    decoder: "auto" (the GPU's video decoder when the network runs on CUDA and the codec has
        one, else FFmpeg's software decoder), "software" or "hardware" (the GPU's decoder when
        it can be had, else software, the reason logged); see hwdecode.py.
    model_version: the registry's version of the weights, echoed into the summary; None outside
        a registry.
    model_path: local weights file; None means the committed DEFAULT_WEIGHTS.
    previous_summary: local path of the summary.json of an earlier scan of the same patient, to
        compare with; None for no comparison.
    """

    keyframes: int = 8
    segments: int = 10
    analysis_width: int = 320
    dedupe_similarity: float = 0.9
    min_quality: float = 0.5
    thumb_width: int = 320
    max_frames: int = 100_000
    batch_size: int = 32
    device: str = "auto"
    decoder: str = "auto"
    model_version: str | None = None
    model_path: str | None = None
    previous_summary: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The params echoed into summary.json: local paths are left out, they differ from
        machine to machine and say nothing about the result (the model's sha256 does)."""
        echoed = asdict(self)
        del echoed["model_path"], echoed["previous_summary"]
        return echoed


# name -> (kind, lowest, highest), bounds inclusive.
_SPEC: dict[str, tuple[type, float, float]] = {
    "keyframes": (int, 1, 64),
    "segments": (int, 1, 100),
    "analysis_width": (int, 64, 1920),
    "dedupe_similarity": (float, -1.0, 1.0),
    "min_quality": (float, 0.0, 1.0),
    "thumb_width": (int, 32, 1920),
    "max_frames": (int, 1, 10_000_000),
    "batch_size": (int, 1, 1024),
}
_DEVICES = ("auto", "cpu", "cuda")
DECODERS = ("auto", "software", "hardware")
# String params: name -> longest accepted length.
_STRINGS = {"model_version": 200, "model_path": 4096, "previous_summary": 4096}


def parse_params(raw: Mapping[str, Any] | None) -> Params:
    """Validate ``raw`` and return the effective ``Params``; raise ``InvalidParams`` otherwise."""
    if raw is None:
        return Params()
    if not isinstance(raw, Mapping):
        raise InvalidParams(f"params must be a mapping, got {type(raw).__name__}")
    values: dict[str, Any] = {}
    for name, (kind, low, high) in _SPEC.items():
        if name not in raw or raw[name] is None:
            continue
        value = _coerce_int(name, raw[name]) if kind is int else _coerce_float(name, raw[name])
        if not low <= value <= high:
            raise InvalidParams(f"{name} must be between {_fmt(low)} and {_fmt(high)}, got {value!r}")
        values[name] = value
    for name, longest in _STRINGS.items():
        if raw.get(name) is not None:
            values[name] = _coerce_str(name, raw[name], longest)
    for name, allowed in (("device", _DEVICES), ("decoder", DECODERS)):
        value = raw.get(name)
        if value is not None:
            if value not in allowed:
                raise InvalidParams(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
            values[name] = value
    return Params(**values)


def _coerce_str(name: str, value: Any, longest: int) -> str:
    # A version may arrive as a number from JSON ("model_version": 3).
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or len(value) > longest:
        raise InvalidParams(f"{name} must be a non-empty string of at most {longest} characters, got {value!r}")
    return value


def _coerce_int(name: str, value: Any) -> int:
    # bool is an int subclass; True as a frame count is a caller bug, not 1.
    if isinstance(value, bool):
        raise InvalidParams(f"{name} must be an integer, got a boolean")
    if isinstance(value, int):
        return value
    # JSON round trips can turn 8 into 8.0; accept whole floats only.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise InvalidParams(f"{name} must be an integer, got {value!r}")


def _coerce_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParams(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidParams(f"{name} must be finite, got {value!r}")
    return float(value)


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)
