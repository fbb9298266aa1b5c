"""Parameter validation: the platform's loose mapping in, one typed, checked ``Params`` out.

Unknown keys are ignored on purpose: the platform sends every task parameter (scan_id,
model_version, metadata, ...) and only the ones below concern this algorithm.
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
    dedupe_threshold: mean absolute difference (0..1 grey levels, on 32x32 grey thumbnails) below
        which a keyframe candidate counts as a near-duplicate of one already chosen.
    min_quality: quality score (0..1) below which a frame is poor and never chosen if avoidable.
    thumb_width: width in pixels of each contact-sheet tile.
    max_frames: longest scan accepted, in frames.
    """

    keyframes: int = 8
    segments: int = 10
    analysis_width: int = 320
    dedupe_threshold: float = 0.03
    min_quality: float = 0.3
    thumb_width: int = 320
    max_frames: int = 100_000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# name -> (kind, lowest, highest), bounds inclusive.
_SPEC: dict[str, tuple[type, float, float]] = {
    "keyframes": (int, 1, 64),
    "segments": (int, 1, 100),
    "analysis_width": (int, 64, 1920),
    "dedupe_threshold": (float, 0.0, 1.0),
    "min_quality": (float, 0.0, 1.0),
    "thumb_width": (int, 32, 1920),
    "max_frames": (int, 1, 10_000_000),
}


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
    return Params(**values)


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
