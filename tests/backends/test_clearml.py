"""What only the ClearML backend has: the server going away and coming back, what scantide writes
in ClearML (project, queue, template, tags), settling racing submits, leases, the state mapping."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from clearml.backend_api.services.v2_23 import events, queues, tasks, workers

from service.backends.clearml_client import ClearMLRefused
from service.backends.clearml_tasks import RESULT_ARTIFACT, run_history, scan_tags, task_info
from service.domain import JobState, SubmitItem, Template
from service.errors import BackendUnavailable, ConfigError, LeaseLost, TaskNotFound
from tests.backends.conftest import ALGO, MAX_ATTEMPTS, QUEUE, Store, clearml_backend
from tests.fakes.clearml_server import FakeClearMLServer

RETRIES = 2


def fast_failing() -> Any:
    return clearml_backend(retries=RETRIES, backoff_s=0.05, timeout_s=2.0)


def every_kind_of_call(backend: Any, task_id: str) -> list[Callable[[], object]]:
    return [lambda: backend.get_task(task_id), lambda: backend.submit(ALGO, "scan-new", {}, "/out/new"),
            lambda: backend.changes(None), lambda: backend.queue_stats(QUEUE), lambda: backend.workers(),
            lambda: backend.claim(QUEUE, "w1", 30), lambda: backend.heartbeat("w1", None, 30),
            lambda: backend.list_tasks()]


# -- outages -------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_server_down_is_backend_unavailable_and_recovery(clearml_server: FakeClearMLServer) -> None:
    backend = fast_failing()
    backend.register_template(Template(name=ALGO, queue=QUEUE))
    task = backend.submit(ALGO, "scan-1", {"scan_id": "scan-1"}, "/out/scan-1").task

    clearml_server.stop()
    for call in every_kind_of_call(backend, task.task_id):
        with pytest.raises(BackendUnavailable) as info:  # returns (after a few quick retries) instead of hanging
            call()
        assert info.value.status == 503

    clearml_server.start()  # the same port and the same state, like a restarted server
    assert backend.get_task(task.task_id) == task
    again = backend.submit(ALGO, "scan-1", {"scan_id": "scan-1"}, "/out/scan-1")
    assert again.created is False and again.task.task_id == task.task_id
    assert backend.queue_stats(QUEUE).pending == 1
    backend.close()


@pytest.mark.timeout(120)
def test_a_server_in_maintenance_is_retried_a_bounded_number_of_times(clearml_server: FakeClearMLServer) -> None:
    """The SDK waits forever on 503 by default; ours gives up after RETRIES retries."""
    backend = fast_failing()
    backend.register_template(Template(name=ALGO, queue=QUEUE))
    task = backend.submit(ALGO, "scan-1", {}, "/out/scan-1").task
    clearml_server.maintenance = True
    for call in every_kind_of_call(backend, task.task_id)[:4]:
        before = clearml_server.requests
        with pytest.raises(BackendUnavailable):
            call()
        assert clearml_server.requests - before == RETRIES + 1  # the first request fails: no second call
    clearml_server.maintenance = False
    assert backend.get_task(task.task_id).state is JobState.queued
    backend.close()


@pytest.mark.timeout(120)
def test_a_backend_opened_while_the_server_is_down_works_once_it_is_up(clearml_server: FakeClearMLServer) -> None:
    clearml_server.stop()
    backend = fast_failing()  # opening does not touch the server
    with pytest.raises(BackendUnavailable):
        backend.templates()
    clearml_server.start()
    backend.register_template(Template(name=ALGO, queue=QUEUE))
    assert [t.name for t in backend.templates()] == [ALGO]
    backend.close()


def test_missing_or_wrong_credentials_are_config_errors(clearml_server: FakeClearMLServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLEARML_API_SECRET_KEY", "not-the-secret")
    with pytest.raises(ConfigError, match="credentials"):
        fast_failing().templates()
    monkeypatch.delenv("CLEARML_API_ACCESS_KEY")
    monkeypatch.delenv("CLEARML_API_SECRET_KEY")
    with pytest.raises(ConfigError, match="CLEARML_API_ACCESS_KEY"):
        fast_failing().templates()


def test_open_backend_picks_clearml(clearml_server: FakeClearMLServer, tmp_path) -> None:
    from service.backends import open_backend
    from service.backends.clearml import ClearMLBackend
    from service.settings import load_settings

    settings = load_settings(state_dir=tmp_path, backend="clearml", clearml_project="elsewhere", clearml_retries=1)
    backend = open_backend(settings)
    assert isinstance(backend, ClearMLBackend)
    assert backend.store.project == "elsewhere" and backend.store.client.retries == 1
    assert backend.templates() == []  # no project yet: nothing registered, nothing created
    assert clearml_server.app.projects == {}


# -- what scantide writes in ClearML -------------------------------------------------------------


def test_register_template_creates_the_project_queue_and_one_template(clearml_store: Store) -> None:
    app = clearml_store.server.app
    (project,) = app.projects.values()
    assert project["name"] == "scantide-tests"
    assert [q["name"] for q in app.queues.values()] == [QUEUE]
    (template,) = app.tasks.values()
    assert (template["name"], template["tags"], template["status"], template["project"]) == (
        f"template/{ALGO}", ["scantide-template"], "created", project["id"])
    assert template["hyperparams"]["Args"]["keyframes"] == {"section": "Args", "name": "keyframes", "value": "8",
                                                          "type": "int"}
    props = {k: v["value"] for k, v in template["hyperparams"]["properties"].items()}
    assert props == {"algorithm": ALGO, "queue": QUEUE, "max_runtime_s": "1800.0", "entry_point": "algorithms.entry"}

    # Registering again updates the same task; a new queue is created on the way.
    clearml_store.backend.register_template(Template(name=ALGO, queue="q-gpu", params={"keyframes": 4},
                                                     max_runtime_s=60))
    assert list(app.tasks) == [template["id"]]
    assert clearml_store.backend.get_template(ALGO) == Template(name=ALGO, queue="q-gpu", params={"keyframes": 4},
                                                                max_runtime_s=60.0)
    assert sorted(q["name"] for q in app.queues.values()) == ["q-gpu", QUEUE]


def test_a_scan_task_is_a_tagged_clone_with_the_scans_args(clearml_store: Store) -> None:
    meta = {"patient": "p-1", "nested": {"x": [1, 2]}}
    task = clearml_store.backend.submit(ALGO, "scan-1", {"scan_id": "scan-1", "metadata": meta,
                                                         "model_version": None}, "/out/scan-1").task
    doc = clearml_store.server.app.tasks[task.task_id]
    template = next(t for t in clearml_store.server.app.tasks.values() if t["name"] == f"template/{ALGO}")
    assert sorted(doc["tags"]) == sorted(["scantide-scan", *scan_tags(ALGO, "scan-1")])
    assert (doc["name"], doc["parent"], doc["status"]) == (f"{ALGO}/scan-1", template["id"], "queued")
    assert doc["hyperparams"]["Args"]["metadata"]["type"] == "dict"
    assert task.params["metadata"] == meta and task.params["model_version"] is None
    props = {k: v["value"] for k, v in doc["hyperparams"]["properties"].items()}
    assert (props["scan_id"], props["output_uri"], props["queue"]) == ("scan-1", "/out/scan-1", QUEUE)
    assert doc["execution"]["queue"] == next(q["id"] for q in clearml_store.server.app.queues.values())


def test_drain_is_recorded_on_the_workers_queue(clearml_store: Store) -> None:
    b = clearml_store.backend
    b.register_worker("ip-10-0-0-1.ec2.internal:123", QUEUE)
    b.request_drain("ip-10-0-0-1.ec2.internal:123")
    (queue,) = clearml_store.server.app.queues.values()
    (item,) = queue["metadata"].values()
    assert (item["type"], item["value"]) == ("scantide.drain", "ip-10-0-0-1.ec2.internal:123")
    b.unregister_worker("ip-10-0-0-1.ec2.internal:123")
    assert queue["metadata"] == {}


def test_a_stand_in_worker_leaves_a_foreign_task_in_the_queue(clearml_store: Store) -> None:
    """A task someone else put on the queue is for a clearml-agent; a stand-in must not drop it."""
    from clearml.backend_api.services.v2_23 import projects

    b = clearml_store.backend
    other = b.store.send(projects.CreateRequest(name="someone-else", description=""))["id"]
    foreign = b.store.send(tasks.CreateRequest(name="training run", type="training", project=other))["id"]
    b.store.send(tasks.EnqueueRequest(task=foreign, queue_name=QUEUE))
    assert b.claim(QUEUE, "w1", lease_s=30) is None
    assert [e["task"] for q in clearml_store.server.app.queues.values() for e in q["entries"]] == [foreign]
    with pytest.raises(TaskNotFound):
        b.get_task(foreign)  # not one of ours either


# -- settling racing submits ---------------------------------------------------------------------


def clone(store: Store, scan_id: str) -> str:
    """A clone of the template for ``scan_id``, as a submit makes it before enqueuing."""
    template = next(t for t in store.server.app.tasks.values() if t["name"] == f"template/{ALGO}")
    return store.backend.store.send(tasks.CloneRequest(
        task=template["id"], new_task_name=f"{ALGO}/{scan_id}",
        new_task_tags=["scantide-scan", *scan_tags(ALGO, scan_id)]))["id"]


def test_a_clone_left_by_a_dead_submit_is_enqueued_not_duplicated(clearml_store: Store) -> None:
    orphan = clone(clearml_store, "scan-1")  # its submitter died before enqueuing it
    assert clearml_store.backend.get_task(orphan).state is JobState.queued  # created reads as queued
    again = clearml_store.backend.submit(ALGO, "scan-1", {"scan_id": "scan-1"}, "/out/scan-1")
    assert (again.created, again.task.task_id) == (False, orphan)
    assert clearml_store.server.app.tasks[orphan]["status"] == "queued"
    assert clearml_store.backend.queue_stats(QUEUE).pending == 1


def test_two_enqueued_duplicates_settle_on_the_first_in_the_queue(clearml_store: Store) -> None:
    b = clearml_store.backend
    first, second = clone(clearml_store, "scan-1"), clone(clearml_store, "scan-1")
    for task_id in (second, first):  # the younger clone was enqueued first
        b.store.send(tasks.EnqueueRequest(task=task_id, queue_name=QUEUE))
    tags = scan_tags(ALGO, "scan-1")
    assert b._settle(tags, QUEUE, None, b._candidates(tags))["id"] == second  # an onlooker's view
    assert b._settle(tags, QUEUE, first, b._candidates(tags))["id"] == second  # the loser deletes its clone
    assert first not in clearml_store.server.app.tasks
    assert [t.task_id for t in b.tasks_for_scan("scan-1")] == [second]
    assert b.queue_stats(QUEUE).pending == 1


# -- leases (stand-in workers) -------------------------------------------------------------------


def test_an_expired_lease_requeues_then_fails_worker_lost(clearml_store: Store) -> None:
    b = clearml_store.backend
    task = b.submit(ALGO, "scan-1", {}, "/out/scan-1").task
    first = b.claim(QUEUE, "w1", lease_s=0.05)
    assert first is not None and first.attempt == 1
    time.sleep(0.1)
    (requeued,) = b.reap_expired()
    assert (requeued.task_id, requeued.state, requeued.attempt, requeued.worker_id) == (
        task.task_id, JobState.queued, 1, None)
    with pytest.raises(LeaseLost):
        b.heartbeat("w1", task.task_id, lease_s=30)

    second = b.claim(QUEUE, "w2", lease_s=0.05)
    assert second is not None and (second.task_id, second.attempt, second.worker_id) == (task.task_id, 2, "w2")
    time.sleep(0.1)
    (failed,) = b.reap_expired()
    assert (failed.state, failed.attempt) == (JobState.failed, MAX_ATTEMPTS)
    assert failed.error is not None and failed.error.code == "worker_lost"
    assert b.reap_expired() == []
    with pytest.raises(LeaseLost):
        b.finish(task.task_id, "w2", result={"late": True})


# -- real agents that vanish ---------------------------------------------------------------------

AGENT_TIMEOUT_S = 60  # the agents' registration lapses this long after their last report


def later(server: FakeClearMLServer, seconds: float) -> None:
    """Move the stand-in's clock ``seconds`` on (registrations lapse, the watchdog finds stale tasks)."""
    clock = server.app.clock
    server.app.clock = lambda: clock() + seconds


def agent_runs_next(store: Store, worker: str, *output: str) -> str:
    """What a ``clearml-agent`` does with the next task of the queue, over the same calls: register,
    pop, mark started, report it, and send the task's console output as log events."""
    send, server = store.backend.store.send, store.server
    qid = store.backend.store.queue_id(QUEUE)
    send(workers.RegisterRequest(worker=worker, timeout=AGENT_TIMEOUT_S, queues=[qid]))
    task_id = send(queues.GetNextTaskRequest(queue=qid))["entry"]["task"]
    send(tasks.StartedRequest(task=task_id, status_reason="worker started execution", force=True))
    send(workers.StatusReportRequest(worker=worker, timestamp=server.app.now(), task=task_id, queue=qid,
                                     queues=[qid]))
    if output:
        send(events.AddBatchRequest(requests=[events.TaskLogEvent(task=task_id, worker=worker, level="info",
                                                                  msg=line, timestamp=server.app.now() + i)
                                              for i, line in enumerate(output)]))
    return task_id


def vanish(server: FakeClearMLServer, how: str) -> None:
    if how == "registration_lapsed":  # the agent's host died: it stops reporting
        later(server, AGENT_TIMEOUT_S + 1)
    else:  # no reaper ran for hours: ClearML's watchdog stopped the task
        later(server, 7200 + 1)
        assert server.app.watchdog(7200)


def history_of(store: Store, task_id: str) -> list[dict]:
    (doc,) = store.backend.store.find_tasks(id=[task_id], only_fields=["id", "configuration"])
    return run_history(doc)


@pytest.mark.parametrize("how", ["registration_lapsed", "watchdog_stopped"])
def test_a_lost_agents_task_runs_again_then_fails_worker_lost(clearml_store: Store, how: str) -> None:
    b, server = clearml_store.backend, clearml_store.server
    task = b.submit(ALGO, "scan-1", {}, "/out/scan-1").task
    assert agent_runs_next(clearml_store, "agent-1", "loading weights", "step 1 of 3") == task.task_id
    assert b.reap_expired() == []  # its agent is alive
    vanish(server, how)

    (requeued,) = b.reap_expired()
    assert (requeued.task_id, requeued.state, requeued.attempt) == (task.task_id, JobState.queued, 1)
    (run,) = history_of(clearml_store, task.task_id)
    assert (run["attempt"], run["error"]["code"]) == (1, "worker_lost")
    assert run["error"]["log_tail"] == "loading weights\nstep 1 of 3"  # kept: the reset deleted the log
    assert task.task_id not in server.app.logs

    agent_runs_next(clearml_store, "agent-2", "second run")
    assert (b.get_task(task.task_id).state, b.get_task(task.task_id).attempt) == (JobState.running, 2)
    vanish(server, how)
    (failed,) = b.reap_expired()
    assert (failed.state, failed.attempt) == (JobState.failed, MAX_ATTEMPTS)
    assert failed.error is not None and failed.error.code == "worker_lost"
    assert failed.error.log_tail == "second run"
    assert len(history_of(clearml_store, task.task_id)) == 1
    assert b.reap_expired() == []


def test_a_tasks_own_attempt_limit_counts(clearml_store: Store) -> None:
    b, server = clearml_store.backend, clearml_store.server
    (once,) = b.submit_many([SubmitItem(ALGO, "scan-1", {}, "/out/scan-1", max_attempts=1)])
    assert not isinstance(once, Exception)
    agent_runs_next(clearml_store, "agent-1")
    vanish(server, "registration_lapsed")
    (failed,) = b.reap_expired()
    assert (failed.task_id, failed.state, failed.attempt) == (once.task.task_id, JobState.failed, 1)


def test_a_task_an_agent_just_took_is_not_lost(clearml_store: Store) -> None:
    """A task re-queued after a lost run keeps that run's last_worker until its new agent reports."""
    b, server = clearml_store.backend, clearml_store.server
    task = b.submit(ALGO, "scan-1", {}, "/out/scan-1").task
    agent_runs_next(clearml_store, "agent-1")
    vanish(server, "registration_lapsed")
    b.reap_expired()
    qid = b.store.queue_id(QUEUE)
    b.store.send(queues.GetNextTaskRequest(queue=qid))  # agent-2 popped it and has not reported it yet
    b.store.send(tasks.StartedRequest(task=task.task_id, force=True))
    assert b.reap_expired() == [] and b.get_task(task.task_id).state is JobState.running


# -- queue names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["q", "ab", " ab ", "   "])
def test_a_queue_name_under_3_characters_is_refused_like_a_server_does(clearml_store: Store, name: str) -> None:
    b = clearml_store.backend
    with pytest.raises(ClearMLRefused) as refused:
        b.store.send(queues.CreateRequest(name=name))
    assert (refused.value.result_code, refused.value.subcode) == (400, 800)
    task = b.submit(ALGO, "scan-1", {}, "/out/scan-1").task
    with pytest.raises(ClearMLRefused) as refused:  # enqueue by name makes the queue: the same rule
        b.store.send(tasks.EnqueueRequest(task=task.task_id, queue_name=name))
    assert refused.value.subcode == 800
    with pytest.raises(ClearMLRefused):
        b.register_template(Template(name="other", queue=name))
    assert b.store.send(queues.CreateRequest(name="abc"))["id"]


@pytest.mark.parametrize(("overrides", "named"), [
    ({"default_queue": "q"}, "default_queue"),
    ({"default_queue": " gpu"}, "default_queue"),
    ({"algorithm_queues": {"gpu": "gp"}}, "algorithm_queues['gpu']"),
])
def test_short_queue_names_are_refused_when_settings_load(overrides: dict, named: str, tmp_path) -> None:
    from service.settings import load_settings

    with pytest.raises(ConfigError) as refused:
        load_settings(state_dir=tmp_path, **overrides)
    message = refused.value.message
    assert named in message and ("3 characters" in message or "spaces around it" in message)


def test_short_pool_queue_names_are_refused_when_the_autoscaler_config_loads(tmp_path) -> None:
    from autoscaler.config import parse_config
    from service.settings import load_settings

    pool = {"name": "gpu", "queue": "gp", "options": [{"instance_type": "g5.xlarge"}]}
    with pytest.raises(ConfigError) as refused:
        parse_config({"pools": [pool]}, load_settings(state_dir=tmp_path), source="pools.toml")
    assert "pools.toml: pools[0].queue" in refused.value.message
    assert parse_config({"pools": [{**pool, "queue": "gpu"}]}, load_settings(state_dir=tmp_path)).pools[0].queue \
        == "gpu"


# -- a real scantide worker as the agent ---------------------------------------------------------


@pytest.mark.timeout(120)
def test_scantide_worker_stands_in_for_a_clearml_agent(clearml_server: FakeClearMLServer, settings) -> None:
    """``scantide worker`` processes in ClearML mode run real task processes (tests.support.slow_entry)."""
    from service.backends import open_backend
    from service.settings import load_settings
    from tests.conftest import Workers, wait_for, wait_terminal

    s = load_settings(**{**settings.model_dump(), "backend": "clearml", "clearml_project": "scantide-tests"})
    backend = open_backend(s)
    backend.register_template(Template(name="slow", entry_point="tests.support.slow_entry", queue=QUEUE))
    ok = backend.submit("slow", "scan-ok", {"scan_id": "scan-ok", "mode": "sleep", "seconds": 1}, "/none/ok").task
    bad = backend.submit("slow", "scan-bad", {"scan_id": "scan-bad", "mode": "fail"}, "/none/bad").task
    workers = Workers(s)  # inherits CLEARML_API_* from this process
    try:
        (proc,) = workers.start(1, "--queue", QUEUE)
        done = wait_terminal(backend, ok.task_id, 90)
        assert done.state is JobState.completed, done.error
        assert done.result is not None and done.result["task_id"] == ok.task_id and done.progress == 1.0
        assert done.worker_id is not None and f":{proc.pid}:" in done.worker_id
        failed = wait_terminal(backend, bad.task_id, 90)
        assert failed.state is JobState.failed and failed.error is not None and failed.error.code == "bad_input"
        # The worker reports itself idle on its next heartbeat after the task ends.
        wait_for(lambda: [(w.task_id, w.draining) for w in backend.workers(QUEUE)] == [(None, False)],
                 timeout_s=30, what="the worker to report itself idle")
        backend.request_drain(backend.workers(QUEUE)[0].worker_id)  # a drained stand-in exits
        assert wait_for(lambda: proc.poll() is not None, 60, what="the drained worker to exit")
        assert backend.workers(QUEUE) == []  # it unregistered on its way out
    finally:
        workers.stop_all()
        backend.close()


# -- reading ClearML's states --------------------------------------------------------------------


def doc(status: str, **extra: Any) -> dict:
    return {"id": "t1", "status": status, "tags": scan_tags(ALGO, "scan-1"), "created": "2024-05-01T10:00:00+00:00",
            **extra}


RESULT = {"execution": {"artifacts": [{"key": RESULT_ARTIFACT, "type": "JSON", "mode": "output",
                                       "type_data": {"preview": '{"ok": true}'}}]}}


@pytest.mark.parametrize(("status", "extra", "state", "code"), [
    ("created", {}, JobState.queued, None),
    ("queued", {}, JobState.queued, None),
    ("in_progress", {"started": "2024-05-01T10:00:01+00:00"}, JobState.running, None),
    ("completed", RESULT, JobState.completed, None),
    ("published", RESULT, JobState.completed, None),
    ("closed", RESULT, JobState.completed, None),
    ("completed", {}, JobState.failed, "no_result"),  # an agent killed by SIGTERM
    ("published", {}, JobState.failed, "no_result"),
    ("failed", {"status_message": "Process failed, exit code 1"}, JobState.failed, "task_failed"),
    ("failed", {"runtime": {"error": '{"code": "bad_input", "message": "m", "log_tail": "t"}'}},
     JobState.failed, "bad_input"),
    ("stopped", {"status_reason": "Forced stop (non-responsive)"}, JobState.stopped, "worker_lost"),
    ("stopped", {"status_message": "Stopped by ann"}, JobState.stopped, "stopped"),
])
def test_clearml_states_map_to_ours(status: str, extra: dict, state: JobState, code: str | None) -> None:
    info = task_info(doc(status, **extra))
    assert info.state is state
    assert (info.error.code if info.error else None) == code
    assert (info.algorithm, info.scan_id) == (ALGO, "scan-1")  # from the tags when the properties are missing
    if state is JobState.completed:
        assert info.result == {"ok": True}
    assert info.attempt == (1 if "started" in extra else 0)


def test_the_monitor_requeues_a_lost_agents_task_in_production(clearml_store: Store, tmp_path: Path) -> None:
    """Nothing else reaps in production: the one monitor does, each alert tick."""
    import os
    import signal
    import subprocess

    from service.settings import load_settings
    from service.supervisor import cli_argv, settings_env
    from tests.conftest import wait_for

    b, server = clearml_store.backend, clearml_store.server
    task = b.submit(ALGO, "scan-1", {}, "/out/scan-1").task
    assert agent_runs_next(clearml_store, "agent-1", "step 1") == task.task_id
    settings = load_settings(backend="clearml", state_dir=tmp_path / "monitor", clearml_project="scantide-tests",
                             monitor_poll_s=0.2)
    with open(tmp_path / "monitor.log", "wb") as log:
        monitor = subprocess.Popen(cli_argv("monitor"), env={**os.environ, **settings_env(settings)}, stdout=log,
                                   stderr=log, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: "monitor_started" in (tmp_path / "monitor.log").read_text(), timeout_s=60)
        time.sleep(0.5)  # its first requests made: the stand-in's clock jumps only after its token is issued
        vanish(server, "registration_lapsed")
        wait_for(lambda: b.get_task(task.task_id).state is JobState.queued, timeout_s=60,
                 what="the monitor to re-queue the lost agent's task")
        assert [h["error"]["code"] for h in b.get_task(task.task_id).history] == ["worker_lost"]
    finally:
        monitor.send_signal(signal.SIGTERM)
        monitor.wait(timeout=60)


def test_a_task_the_agent_could_not_start_says_why(clearml_store: Store) -> None:
    """A stock agent whose environment lacks scantide fails the task before our entry point runs: its
    status_reason and the tail of its console log are the only explanation, so they are the error."""
    b = clearml_store.backend
    task = b.submit(ALGO, "scan-1", {}, "/out/scan-1").task
    agent_runs_next(clearml_store, "agent-1", "Traceback (most recent call last):",
                    "ModuleNotFoundError: No module named 'algorithms'")
    b.store.send(tasks.FailedRequest(task=task.task_id, status_reason="worker execution exit code 1", force=True))
    failed = b.get_task(task.task_id)
    assert failed.state is JobState.failed and failed.error is not None
    assert (failed.error.code, failed.error.message) == ("task_failed", "worker execution exit code 1")
    assert failed.error.log_tail.endswith("ModuleNotFoundError: No module named 'algorithms'")
    (change,) = [c for c in b.changes(None, limit=1000).changes if c.task_id == task.task_id]
    assert change.task.error is not None and "No module named 'algorithms'" in change.task.error.log_tail
