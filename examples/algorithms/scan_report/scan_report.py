"""scan_report: gather what the earlier steps of a pipeline found into one report.

``python scan_report.py INPUTS OUTPUTS`` reads ``INPUTS/<step>/result.json`` (every command step
leaves one) and ``INPUTS/<step>/summary.json`` (video_summary's) for each upstream step whose
outputs the pipeline passed in, and writes ``OUTPUTS/report.json`` and ``OUTPUTS/result.json``.
A step that was skipped has no folder: the report says so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def main(inputs: Path, outputs: Path) -> int:
    steps = {}
    for folder in sorted(p for p in inputs.iterdir() if p.is_dir()):
        found = read(folder / "result.json") or read(folder / "summary.json") or {}
        steps[folder.name] = {"files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()),
                              "figures": {k: v for k, v in found.items() if isinstance(v, (int, float, str, bool))}}
    stats = steps.get("stats", {}).get("figures", {})
    report = {"steps": steps, "analysed": "summary" in steps,
              "headline": f"{stats.get('duration_s', '?')} s at mean brightness {stats.get('mean_brightness', '?')}"
                          + ("" if "summary" in steps else "; the summary step was skipped")}
    (outputs / "report.json").write_text(json.dumps(report, indent=2))
    (outputs / "result.json").write_text(json.dumps({"analysed": report["analysed"], "headline": report["headline"],
                                                     "upstream_steps": sorted(steps)}))
    print(report["headline"], flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: scan_report.py INPUTS OUTPUTS", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
