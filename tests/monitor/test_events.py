"""What a scan.completed event says of a task's outputs, whatever the algorithm: links by the roles
it named, every file, and its headline figures."""

from __future__ import annotations

from monitor.events import from_change
from service.domain import Change, JobState, TaskInfo


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
