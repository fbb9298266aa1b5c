"""What a scan.completed event says of a task's outputs, whatever the algorithm: links by the roles
it named, every file, and its headline figures."""

from __future__ import annotations

from monitor.events import from_change, local_link, pipeline_outcome
from service.domain import Change, JobState, TaskInfo
from service.pipelines.store import Run, StepRun
from service.storage import StorageError


def refusing_s3(uri: str) -> str:
    """A linker that cannot reach S3, as the real one without credentials."""
    if uri.startswith("s3://"):
        raise StorageError(f"no AWS credentials to reach {uri}")
    return local_link(uri)


def completed(result: dict) -> Change:
    task = TaskInfo(task_id="t1", algorithm="frame_stats", scan_id="s1", queue="default", state=JobState.completed,
                    params={}, output_uri="/out/frame_stats/s1", attempt=1, result=result)
    return Change(cursor="1", task_id="t1", state=JobState.completed, attempt=1, at=0.0, task=task)


def test_a_command_algorithms_files_and_figures() -> None:
    event = from_change(completed({"output_uri": "/out/frame_stats/s1", "algorithm_version": "1",
                                   "duration_s": 2.0, "mean_brightness": 113.7, "brightness_per_second": [1, 2],
                                   "outputs": {"files": ["brightness.csv", "result.json"]}}))
    assert event is not None and event.type == "scan.completed"
    outputs = event.data["outputs"]
    assert outputs["files"] == {"brightness.csv": "file:///out/frame_stats/s1/brightness.csv",
                                "result.json": "file:///out/frame_stats/s1/result.json"}
    assert outputs["figures"] == {"duration_s": 2.0, "mean_brightness": 113.7}  # plain values, ours left out


def test_video_summary_roles_keep_their_links() -> None:
    event = from_change(completed({"output_uri": "/o", "summary": {"frame_count": 48},
                                   "outputs": {"summary": "summary.json", "keyframes": ["kf_00.jpg"],
                                               "contact_sheet": "sheet.jpg", "files": ["summary.json"]}}))
    assert event is not None
    outputs = event.data["outputs"]
    assert outputs["summary"] == "file:///o/summary.json" and outputs["keyframes"] == ["file:///o/kf_00.jpg"]
    assert outputs["contact_sheet"] == "file:///o/sheet.jpg" and outputs["figures"] == {"frame_count": 48}


def test_a_pipeline_steps_task_sends_no_scan_event_unless_asked() -> None:
    change = completed({"output_uri": "/o", "checksums": {"result.json": "ab" * 32}, "duration_s": 1.0,
                        "outputs": {"files": ["result.json"]}})
    change.task.params.update(pipeline_run="run_1", pipeline_step="stats")
    assert from_change(change) is None  # the run sends pipeline.completed for it
    event = from_change(change, step_events=True)
    assert event is not None and event.type == "scan.completed"
    assert event.data["outputs"]["figures"] == {"duration_s": 1.0}  # checksums are ours, not a figure


def test_an_output_that_cannot_be_linked_keeps_its_event_and_says_why() -> None:
    event = from_change(completed({"output_uri": "s3://b/o", "summary": {"frame_count": 48},
                                   "outputs": {"summary": "summary.json", "keyframes": ["kf_00.jpg"],
                                               "files": ["summary.json", "kf_00.jpg"]}}), refusing_s3)
    assert event is not None and event.type == "scan.completed"
    outputs = event.data["outputs"]
    assert outputs["summary"] is None and outputs["keyframes"] == [None]
    assert outputs["files"] == {"summary.json": None, "kf_00.jpg": None}
    assert outputs["figures"] == {"frame_count": 48}
    assert outputs["link_errors"] == [  # one per file, however many roles name it
        {"file": "summary.json", "code": "storage_error", "message": "no AWS credentials to reach s3://b/o/summary.json"},
        {"file": "kf_00.jpg", "code": "storage_error", "message": "no AWS credentials to reach s3://b/o/kf_00.jpg"}]

    run = Run("run_1", "p", "1", "s1", "file:///scan.mp4", {}, state="completed", steps={
        "stats": StepRun("frame_stats", "1", "local", state="completed", task_id="t1",
                         result={"output_uri": "s3://b/run", "outputs": {"files": ["result.json"]}}),
        "local": StepRun("frame_stats", "1", "local", state="completed", task_id="t2",
                         result={"output_uri": "/out/run", "outputs": {"files": ["result.json"]}})})
    steps = pipeline_outcome(run, refusing_s3).data["steps"]
    assert steps["stats"]["outputs"]["files"] == {"result.json": None}
    assert [e["file"] for e in steps["stats"]["outputs"]["link_errors"]] == ["result.json"]
    assert steps["local"]["outputs"] == {"uri": "/out/run", "files": {"result.json": "file:///out/run/result.json"}}
