"""Step inputs across compute targets: what a step's task is told to read, moved where it can read it.

A target whose outputs live in remote storage (S3: a ClearML fleet) cannot read this machine's
files, so a local scan or upstream output a step reads is uploaded under that target's output root
(``runs/<run_id>/…``), each file hashed on the way and compared with the sha256 its step recorded.
Remote inputs are left where they are: a worker of any target fetches them (through its input
cache) and checks each file's sha256 itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.errors import ScantideError
from service.pipelines.store import Run
from service.pipelines.targets import Target
from service.storage import is_remote, storage_for
from service.storage.base import file_sha256
from service.storage.local import local_path


class InputMismatch(ScantideError):
    """An upstream output no longer has the sha256 its step recorded."""

    code = "input_mismatch"


def place_inputs(run: Run, step: str, inputs: tuple[str, ...], target: Target) -> tuple[str, dict[str, Any], int]:
    """The scan URI, the ``step_inputs`` param (``{"scan": bool, "steps": {upstream: {"uri", "files":
    {name: sha256}}}}``) and the bytes uploaded for ``step`` of ``run`` on ``target``."""
    root = target.settings.output_root_uri
    remote = is_remote(root)
    moved = 0
    scan_uri = run.scan_uri
    if remote and "scan" in inputs and not is_remote(scan_uri):
        source = local_path(scan_uri)
        scan_uri = f"{root}/runs/{run.run_id}/scan/{source.name}"
        moved += _upload(source, scan_uri, None, target)
    upstream: dict[str, Any] = {}
    for name in inputs:
        done = run.steps[name] if name != "scan" else None
        if done is None or done.state != "completed" or not done.result:
            continue  # the scan, or a skipped step: nothing of it lands in {inputs}
        base = str(done.result.get("output_uri", "")).rstrip("/")
        files = dict(done.result.get("checksums") or {})
        if remote and not is_remote(base):
            new_base = f"{root}/runs/{run.run_id}/{name}"
            for rel, digest in sorted(files.items()):
                moved += _upload(local_path(f"{base}/{rel}"), f"{new_base}/{rel}", digest, target)
            base = new_base
        upstream[name] = {"uri": base, "files": files}
    return scan_uri, {"scan": "scan" in inputs, "steps": upstream}, moved


def _upload(source: Path, uri: str, digest: str | None, target: Target) -> int:
    """Store ``source`` at ``uri``; the bytes uploaded. Refuses a file whose sha256 is not ``digest``
    (when given). A scan (no digest) already at ``uri`` (an earlier step of the run) is not sent again."""
    storage = storage_for(uri, target.settings)
    if digest is None and storage.exists(uri):
        return 0
    if digest is not None and (found := file_sha256(source)) != digest:
        raise InputMismatch(f"{source} has sha256 {found[:12]}…, not the {digest[:12]}… its step recorded: "
                            "it changed after the step ended")
    storage.put_file(source, uri)
    return source.stat().st_size
