"""Treatment tracking: this scan against an earlier summary.json of the same patient.

A pure function of two summaries, computed from the rounded embeddings both store, so comparing
a live run or a re-read file gives the same numbers.

- Keyframe matches: each keyframe of this scan paired with the previous scan's keyframe whose
  embedding is most similar (cosine similarity, -1..1).
- Regions: a region is one of this scan's ``segments`` (an equal-length stretch of the scan, so
  a part of the mouth as the camera passed it). Each is matched to the previous scan's most
  similar segment, wherever it lies (two scans need not follow the same path or speed); its
  ``change`` is ``1 - similarity`` clipped to [0, 1]: 0 = looks the same, 1 = unlike anything
  seen before. ``quality_delta`` is this segment's quality minus the matched one's.
- ``change_score``: the mean change over regions (segments are equal-length, so every part of
  the scan counts the same).

Embeddings of different weights are not comparable: a previous summary made with another model
(sha256) is refused rather than compared into a meaningless number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidParams
from .model import EMBEDDING_DIM

_SCORE = 4


def load_previous(path: str, model_sha256: str, version: str) -> dict[str, Any]:
    """Read and check the previous summary at ``path``: made by this algorithm ``version`` (how
    frames are read and scored) with the same weights. Raises InvalidParams with the reason."""
    where = f"previous_summary {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidParams(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidParams(f"{where}: cannot be read ({exc})") from exc
    try:
        previous = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParams(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(previous, dict) or previous.get("algorithm") != "video_summary":
        raise InvalidParams(f"{where}: not a video_summary summary.json")
    theirs_version = previous.get("algorithm_version")
    if theirs_version != version:
        raise InvalidParams(
            f"{where}: made by video_summary version {theirs_version!r}, this run is version {version!r}; "
            "re-run that scan with this version first"
        )
    theirs = (previous.get("model") or {}).get("sha256")
    if theirs != model_sha256:
        raise InvalidParams(
            f"{where}: made with model sha256 {str(theirs)[:12]}, this run uses {model_sha256[:12]}; "
            "embeddings of different models are not comparable, re-run the earlier scan with this model"
        )
    for key in ("keyframes", "segments"):
        entries = previous.get(key)
        if not isinstance(entries, list) or not entries or not all(_has_embedding(e) for e in entries):
            raise InvalidParams(f"{where}: {key} missing or without {EMBEDDING_DIM}-d embeddings")
    return previous


def compare(current: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """The ``comparison`` object of summary.json (see the module docstring)."""
    matches = []
    for ordinal, keyframe in enumerate(current["keyframes"]):
        best, similarity = _best(keyframe["embedding"], previous["keyframes"])
        matches.append(
            {
                "keyframe": ordinal,
                "index": keyframe["index"],
                "previous_keyframe": best,
                "previous_index": previous["keyframes"][best].get("index"),
                "similarity": _round(similarity),
            }
        )
    regions = []
    for segment in current["segments"]:
        best, similarity = _best(segment["embedding"], previous["segments"])
        matched = previous["segments"][best]
        regions.append(
            {
                "segment": segment["index"],
                "start_s": segment["start_s"],
                "end_s": segment["end_s"],
                "previous_segment": best,
                "similarity": _round(similarity),
                "change": _round(min(1.0, max(0.0, 1.0 - similarity))),
                "quality_delta": _round(segment["quality_mean"] - float(matched.get("quality_mean", 0.0))),
            }
        )
    return {
        "previous": {
            "frame_count": previous.get("frame_count"),
            "duration_s": previous.get("duration_s"),
            "model_version": (previous.get("model") or {}).get("version"),
            "keyframes": len(previous["keyframes"]),
        },
        "keyframe_matches": matches,
        "keyframe_similarity_mean": _round(float(np.mean([m["similarity"] for m in matches])) if matches else 0.0),
        "regions": regions,
        "change_score": _round(float(np.mean([r["change"] for r in regions])) if regions else 0.0),
    }


def _best(vector: list[float], entries: list[dict[str, Any]]) -> tuple[int, float]:
    """Index of the entry whose embedding is most similar to ``vector`` (earliest on ties)."""
    matrix = np.asarray([e["embedding"] for e in entries], dtype=np.float64)
    similarities = matrix @ np.asarray(vector, dtype=np.float64)
    best = int(np.argmax(similarities))
    return best, float(similarities[best])


def _has_embedding(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return False
    vector = entry.get("embedding")
    return (
        isinstance(vector, list)
        and len(vector) == EMBEDDING_DIM
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vector)
    )


def _round(value: float) -> float:
    return round(float(value), _SCORE) + 0.0
