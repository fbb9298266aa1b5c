"""A pipeline end to end on the embedded default: registered over the API, submitted like a scan,
driven by a real conductor process over real workers, announced once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.conftest import ApiServer, Workers
from tests.pipelines.conftest import ConductorProcess, outcome_events, register_pipeline, wait_run


def test_triage_runs_each_step_where_its_when_allows(api: ApiServer, workers: Workers, conductor: ConductorProcess,
                                                      registered: None, settings, make_video: Callable) -> None:
    make_video("long.mp4", frames=72, fps=24.0, size=(96, 72))  # 3 s, bright: summarised
    make_video("short.mp4", frames=24, fps=24.0, size=(96, 72))  # 1 s: the summary is skipped
    with api.client() as client:
        reply = register_pipeline(client)
        assert reply.status_code == 201, reply.text
        assert register_pipeline(client).status_code == 200  # the same content again: nothing changes
        assert [p["name"] for p in client.get("/v1/pipelines").json()["pipelines"]] == ["triage"]
        runs = {}
        for scan in ("long", "short"):
            r = client.post("/v1/scans", json={"scan_id": scan, "scan_uri": f"{scan}.mp4", "pipeline": "triage",
                                               "metadata": {"clinic": "north"}})
            assert r.status_code == 202, r.text
            body = r.json()
            assert set(body) == {"run_id", "scan_id", "pipeline", "version", "state", "created", "links"}
            runs[scan] = body["run_id"]
        again = client.post("/v1/scans", json={"scan_id": "long", "scan_uri": "long.mp4", "pipeline": "triage"})
        assert again.status_code == 200 and again.json()["run_id"] == runs["long"]

        conductor.start()
        workers.start(2)
        long, short = wait_run(client, runs["long"]), wait_run(client, runs["short"])

        assert long["state"] == "completed", long
        assert {n: s["state"] for n, s in long["steps"].items()} == \
            {"stats": "completed", "summary": "completed", "report": "completed"}
        assert long["steps"]["report"]["result"]["upstream_steps"] == ["stats", "summary"]
        assert long["steps"]["report"]["result"]["analysed"] is True
        assert all(s["compute"] == "local" and s["task_id"] for s in long["steps"].values())

        assert short["state"] == "completed", short
        assert {n: s["state"] for n, s in short["steps"].items()} == \
            {"stats": "completed", "summary": "skipped", "report": "completed"}
        assert short["steps"]["summary"]["task_id"] is None
        assert short["steps"]["summary"]["error"]["message"].startswith("when is false: ")
        assert short["steps"]["report"]["result"]["upstream_steps"] == ["stats"]

        scan = client.get("/v1/scans/short").json()
        assert [r["run_id"] for r in scan["runs"]] == [runs["short"]]

    def outcomes() -> list[dict] | None:
        found = outcome_events(settings)
        return found if len(found) >= 2 else None

    from tests.conftest import wait_for

    events = wait_for(outcomes, timeout_s=30, what="two pipeline events")
    assert sorted((e["type"], e["data"]["scan_id"]) for e in events) == \
        [("pipeline.completed", "long"), ("pipeline.completed", "short")]
    short_event = next(e for e in events if e["data"]["scan_id"] == "short")
    assert short_event["data"]["metadata"] == {"clinic": "north"}
    assert short_event["data"]["steps"]["summary"]["state"] == "skipped"
    assert "report.json" in short_event["data"]["steps"]["report"]["outputs"]["files"]


def test_enqueue_refuses_what_a_pipeline_cannot_run(api: ApiServer, registered: None, data_root: Path) -> None:
    (data_root / "x.png").write_bytes(b"an image")
    with api.client() as client:
        assert register_pipeline(client).status_code == 201
        cases = [
            ({"scan_id": "a", "scan_uri": "x.mp4", "pipeline": "nope"}, 422, "unknown_pipeline"),
            ({"scan_id": "a", "scan_uri": "x.mp4", "pipeline": "triage", "pipeline_version": "9"}, 422,
             "unknown_pipeline"),
            ({"scan_id": "a", "scan_uri": "x.mp4", "pipeline": "triage", "algorithm": "frame_stats"}, 422,
             "invalid_request"),
            ({"scan_id": "a", "scan_uri": "../x.mp4", "pipeline": "triage"}, 422, "invalid_scan_uri"),
            ({"scan_id": "a", "scan_uri": "x.png", "pipeline": "triage"}, 422, "invalid_scan_uri"),  # stats: video
            ({"scan_id": "a", "scan_uri": "x.mp4", "pipeline_version": "1"}, 422, "invalid_request"),
        ]
        for body, status, code in cases:
            r = client.post("/v1/scans", json=body)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), (body, r.text)
        assert client.get("/v1/runs/run_nope").status_code == 404
        assert client.post("/v1/runs/run_nope/retry").json()["error"]["code"] == "run_not_found"
        bad = register_pipeline(client, "name: broken\nversion: '1'\nsteps:\n  - {name: a, algorithm: frame_stats, "
                                        "params: {min_brightness: 300}}\n  - {name: b, algorithm: nope, needs: [a]}\n")
        assert bad.status_code == 422
        assert bad.json()["error"]["code"] == "invalid_pipeline"
        assert "steps[0].params.min_brightness: 300 is greater than the maximum of 255" in bad.json()["error"]["message"]
        assert "steps[1].algorithm: unknown algorithm 'nope': register it first" in bad.json()["error"]["message"]
        assert client.post("/v1/pipelines", content="name: x", headers={"Content-Type": "text/plain"}
                           ).json()["error"]["code"] == "unsupported_media_type"
        bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nname: *b\n"
        refused = register_pipeline(client, bomb)
        assert refused.status_code == 422 and "aliases (*name) are not allowed" in refused.json()["error"]["message"]
        deep = register_pipeline(client, "[" * 5000 + "]" * 5000)
        assert deep.status_code == 422 and deep.json()["error"]["code"] == "invalid_pipeline"
    with api.client("test-token-read") as reader:
        assert register_pipeline(reader).status_code == 403


def test_a_repeated_run_request_answers_the_run_it_made(api: ApiServer, registered: None,
                                                        make_video: Callable) -> None:
    """Even once the scan file is gone or a newer version is registered: the repeat is a read."""
    video = make_video("gone.mp4", frames=12, fps=12.0, size=(32, 24))
    with api.client() as client:
        assert register_pipeline(client).status_code == 201
        first = client.post("/v1/scans", json={"scan_id": "g", "scan_uri": "gone.mp4", "pipeline": "triage"})
        assert first.status_code == 202
        Path(video["path"]).unlink()
        again = client.post("/v1/scans", json={"scan_id": "g", "scan_uri": "gone.mp4", "pipeline": "triage"})
        assert again.status_code == 200 and again.json()["run_id"] == first.json()["run_id"]
