"""A wire-level stand-in for the ClearML API server, for the endpoints scantide and the ``clearml``
SDK use. A real server needs MongoDB, Elasticsearch and Redis, which cannot run here.

It speaks the server's protocol, so the real SDK talks to it unchanged: requests go to
``/<service>.<action>`` or ``/v<version>/<service>.<action>`` (GET, POST or PUT, JSON body),
answers are ``{"meta": {...}, "data": {...}}`` envelopes whose ``meta.result_code`` /
``result_subcode`` are the server's (``apiserver/apierrors/errors.conf``). ``auth.login`` takes the
access key and secret as HTTP basic auth and returns an HS256 JWT whose ``api_version`` claim
(2.23) the SDK reads; every other endpoint needs that token as a bearer token.

Behaviour copied from clearml-server, because scantide depends on it:

- status changes follow the server's state machine (``bll/task/utils.py``); a same-state change is
  allowed and, like every change, stamps ``status_changed`` with the server's clock;
- ``tasks.enqueue`` goes through that machine (``created``, ``stopped`` or ``failed`` → ``queued``);
  enqueuing a task that is already in the queue stamps it, then answers 400/706
  ``task_already_queued``;
- timestamps have the server's precision (MongoDB: milliseconds) and come from ``clock``, which a
  test may freeze to make many changes share one timestamp; ``stamped_earlier(s)`` makes writes
  land with a stamp ``s`` seconds old, as a server's do when the write comes after a later-stamped
  one (``ChangeStatusRequest.execute`` takes its time before it writes), and ``watchdog()`` runs one
  cycle of the non-responsive tasks watchdog, which stamps its whole batch with one time;
- ``queues.get_next_task`` turns a stopped task back to queued without stamping it;
- queue names are stripped and must keep 3 characters (the ``Queue.name`` field's ``min_length``):
  400/800 ``data_validation_error`` otherwise, from ``queues.create`` and from ``tasks.enqueue`` by
  ``queue_name`` alike;
- a task's console log is its ``log`` events; ``tasks.reset`` and ``tasks.delete`` delete them;
- ``tasks.get_all`` filters (``id``, ``name`` as a regex, ``project``, ``tags`` with ``-``
  exclusion and the ``__$all``/``__$any``/``__$not`` operators, ``status``, ``status_changed``
  with ``>``/``>=``/``<``/``<=``, ``execution.queue``), orders (``order_by``, ``id`` appended so
  pages are stable), projects (``only_fields``) and pages (``page``, ``page_size``, capped at
  ``max_page_size``, the server's ``services._mongo.max_page_size``: 500 unless given; a page asked
  bigger is served at the cap, from offset ``page`` times the cap; without paging fields only the
  first ``max_page_size`` tasks come back);
- unknown ids answer 400 with the server's subcode; an unknown endpoint answers 404.

Endpoints (request fields used → ``data``):

``auth.login``                      basic auth → ``{token}``
``projects.get_all``                id, name (regex) → ``{projects}``
``projects.create``                 name, description → ``{id}``
``queues.create``                   name, tags → ``{id}`` (400/801 when the name exists, 400/800 when it is
                                    shorter than 3 characters)
``queues.get_all``                  id, name (regex), only_fields → ``{queues}``
``queues.get_by_id``                queue, max_task_entries → ``{queue}``
``queues.get_num_entries``          queue → ``{num}``
``queues.peek_task``                queue → ``{task}`` (the head, or null)
``queues.get_next_task``            queue, task → ``{entry: {task, added}}`` or ``{}``: pops the head
                                    atomically (with ``task``: only while that task is the head)
``queues.add_or_update_metadata``   queue, metadata [{key, type, value}], replace_metadata → ``{updated}``
``queues.delete_metadata``          queue, keys → ``{updated}``
``tasks.create``                    name, type, project, tags, hyperparams, configuration, script, container → ``{id}``
``tasks.clone``                     task, new_task_name/tags/project/hyperparams → ``{id}`` (status created;
                                    script and container copied)
``tasks.get_all`` / ``get_by_id``   see above → ``{tasks}`` / ``{task}``
``tasks.edit``                      task, force, editable fields (runtime, hyperparams, …); created only unless force
``tasks.enqueue``                   task, queue or queue_name (created when missing) → ``{queued, updated, fields}``
``tasks.dequeue``                   task, new_status, remove_from_all_queues → ``{dequeued, updated, fields}``:
                                    a queued task leaves its queue; a queued or in-progress one is forced to
                                    new_status, else the status it was enqueued from, else created; never
                                    refused for its status (updated 0 for any other status, or an unknown id)
``tasks.ping``                      task → stamps ``last_update`` (an unknown id is not an error)
``tasks.started``                   task → in_progress, sets ``started``
``tasks.completed`` / ``failed``    task, status_reason, status_message → sets ``completed``
``tasks.stopped``                   task → stopped
``tasks.reset``                     task, force → created; clears runtime, outputs, started/completed, queue;
                                    deletes the task's log
``tasks.delete``                    task, force (needed unless created) → ``{deleted}``
``tasks.add_or_update_artifacts``   task, artifacts [{key, type, mode, uri, type_data}] → ``{updated}``
``workers.register``                worker, timeout, queues (ids), tags
``workers.unregister``              worker (400/1004 when not registered)
``workers.status_report``           worker (400/1001 when not registered), task, queue, queues, tags;
                                    stamps the task's ``last_worker`` and ``last_update``
``workers.get_all``                 last_seen, tags → ``{workers}`` (entries expire after their timeout)
``events.add`` / ``add_batch``       a ``log`` event {task, timestamp (ms), level, worker, msg} / JSON lines of
                                    them → ``{added, errors}``
``events.get_task_log``             task, batch_size, navigate_earlier, from_timestamp, order → ``{events,
                                    returned, total}``: the last ``batch_size`` lines (navigate_earlier: newest
                                    first unless order is ``asc``)
``models.create``                   uri, name, comment, tags, framework, ready, project, metadata [{key, type, value}] → ``{id, created}``
``models.get_all`` / ``get_by_id``  id, name (regex), project, tags, ready, only_fields, order_by, page, page_size → ``{models}`` / ``{model}``
``models.update``                   model, name, comment, tags, ready, … → ``{updated, fields}``; stamps ``last_update``
``models.add_or_update_metadata``   model, metadata [{key, type, value}], replace_metadata → ``{updated}``

The server can be stopped and started again on the same port; its state survives, like a real
server's database. ``maintenance = True`` makes it answer 503, like a server being upgraded.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt

API_VERSION = "2.23"
SERVER_VERSION = "1.16.0"
COMPANY = {"id": "fake-company", "name": "scantide tests"}
USER = {"id": "fake-user", "name": "scantide"}

STATE_MACHINE: dict[str, set[str]] = {  # clearml-server apiserver/bll/task/utils.py
    "created": {"queued", "in_progress"},
    "queued": {"created", "in_progress", "stopped"},
    "in_progress": {"stopped", "failed", "created", "completed"},
    "stopped": {"closed", "created", "failed", "queued", "in_progress", "published", "publishing", "completed"},
    "closed": {"created", "failed", "published", "publishing", "stopped"},
    "failed": {"created", "stopped", "published", "queued"},
    "publishing": {"published"},
    "published": set(),
    "completed": {"published", "in_progress", "created"},
}
EDITABLE = ("name", "tags", "system_tags", "type", "comment", "parent", "project", "script", "hyperparams",
            "configuration", "container", "runtime", "execution")
DATE_FIELDS = {"created", "started", "completed", "status_changed", "last_update", "last_change",
               "last_worker_report", "added", "register_time", "last_activity_time", "last_report_time"}


class ApiError(Exception):
    def __init__(self, code: int, subcode: int, msg: str) -> None:
        super().__init__(msg)
        self.code, self.subcode, self.msg = code, subcode, msg


def bad_request(subcode: int, msg: str) -> ApiError:
    return ApiError(400, subcode, msg)


class FakeClearML:
    """The server's state and endpoints, without HTTP. Thread-safe: one lock around every call."""

    def __init__(self, *, access_key: str, secret_key: str, max_page_size: int = 500,
                 clock: Callable[[], float] = time.time) -> None:
        self.access_key, self.secret_key = access_key, secret_key
        self.max_page_size = max_page_size
        self.clock = clock  # unix seconds
        self.projects: dict[str, dict] = {}
        self.queues: dict[str, dict] = {}
        self.tasks: dict[str, dict] = {}
        self.workers: dict[str, dict] = {}
        self.models: dict[str, dict] = {}
        self.logs: dict[str, list[dict]] = {}  # task id → its log events, in the order they came
        self.calls: list[str] = []  # endpoint names, in order: lets tests count round trips
        self._lock = threading.Lock()
        # Endpoint "<service>.<action>" is the method "<service>__<action>".
        self._endpoints: dict[str, Callable[[dict], dict]] = {
            name.replace("__", "."): getattr(self, name) for name in dir(self)
            if name.partition("__")[0] in ("projects", "queues", "tasks", "workers", "models", "events")
            and "__" in name
        }

    # -- protocol ------------------------------------------------------------------------------
    def handle(self, endpoint: str, body: dict, authorization: str | None) -> tuple[int, dict]:
        """One call: ``(http status, envelope)``."""
        try:
            if endpoint == "auth.login":
                return 200, envelope(endpoint, 200, 0, "OK", self._login(authorization, body))
            handler = self._endpoints.get(endpoint)
            if handler is None:
                raise ApiError(404, 0, f"Unable to find endpoint for name {endpoint} and version {API_VERSION}")
            self._authorize(authorization)
            with self._lock:
                self.calls.append(endpoint)
                data = handler(body)
            return 200, envelope(endpoint, 200, 0, "OK", data)
        except ApiError as exc:
            return exc.code, envelope(endpoint, exc.code, exc.subcode, exc.msg, {})
        except KeyError as exc:
            return 400, envelope(endpoint, 400, 11, f"missing required fields: {exc}", {})
        except Exception as exc:  # noqa: BLE001 - a bug here must answer, not hang the client
            return 500, envelope(endpoint, 500, 0, f"internal server error: {exc!r}", {})

    def _login(self, authorization: str | None, body: dict) -> dict:
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            raise ApiError(401, 20, "unauthorized (missing credentials)")
        key, _, secret = base64.b64decode(value).decode().partition(":")
        if (key, secret) != (self.access_key, self.secret_key):
            raise ApiError(401, 22, "unauthorized (invalid credentials)")
        now = int(self.clock())
        expires = int(body.get("expiration_sec") or 30 * 24 * 3600)
        claims = {"identity": {"company": COMPANY["id"], "user": USER["id"], "role": "user",
                               "company_name": COMPANY["name"], "user_name": USER["name"]},
                  "api_version": API_VERSION, "server_version": SERVER_VERSION, "env": "test",
                  "iat": now, "exp": now + expires}
        return {"token": jwt.encode(claims, self.secret_key, algorithm="HS256")}

    def _authorize(self, authorization: str | None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            raise ApiError(401, 10, "unauthorized (bad authentication header type)")
        try:
            jwt.decode(token, self.secret_key, algorithms=["HS256"])
        except jwt.PyJWTError as exc:
            raise ApiError(401, 21, f"unauthorized (malformed credentials): {exc}") from exc

    def now(self) -> int:
        """The server clock: unix milliseconds, MongoDB's precision."""
        return int(self.clock() * 1000)

    @contextlib.contextmanager
    def stamped_earlier(self, seconds: float) -> Iterator[None]:
        """Everything written in the block is stamped ``seconds`` before now: what a server does to a
        write that lands after a later-stamped one was read (it takes ``status_changed`` first)."""
        clock = self.clock
        self.clock = lambda: clock() - seconds
        try:
            yield
        finally:
            self.clock = clock

    def watchdog(self, threshold_s: float = 7200.0) -> list[str]:
        """One cycle of the non-responsive tasks watchdog (``bll/task/non_responsive_tasks_watchdog.py``):
        tasks in progress whose ``last_update`` is older than ``threshold_s`` are stopped, all stamped
        with the one time taken before the first is written. Returns their ids."""
        with self._lock:
            now = self.now()
            stale = [t for t in self.tasks.values()
                     if t["status"] == "in_progress" and t.get("last_update", now) < now - threshold_s * 1000]
            for task in stale:
                task.update(status="stopped", status_reason="Forced stop (non-responsive)",
                            status_message="Forced stop (non-responsive)", status_changed=now, last_update=now,
                            last_change=now)
            return [t["id"] for t in stale]

    # -- projects ------------------------------------------------------------------------------
    def projects__get_all(self, b: dict) -> dict:
        found = [p for p in self.projects.values() if _matches_common(p, b)]
        return {"projects": [_out(p, b.get("only_fields")) for p in found]}

    def projects__create(self, b: dict) -> dict:
        if any(p["name"] == b["name"] for p in self.projects.values()):
            raise bad_request(801, f"value combination already exists: project name {b['name']!r}")
        pid = new_id()
        self.projects[pid] = {"id": pid, "name": b["name"], "description": b.get("description", ""),
                              "tags": b.get("tags", []), "system_tags": b.get("system_tags", []),
                              "created": self.now(), "company": COMPANY["id"], "user": USER["id"]}
        return {"id": pid}

    # -- queues --------------------------------------------------------------------------------
    def _queue(self, qid: str) -> dict:
        if qid not in self.queues:
            raise bad_request(701, f"invalid queue id: queue={qid}")
        return self.queues[qid]

    def _create_queue(self, name: str, tags: list[str] | None = None) -> dict:
        name = name.strip()  # Queue.name is a StrippedStringField(min_length=3)
        if len(name) < 3:
            raise bad_request(800, f"data validation error: name={name!r}: String value is too short")
        qid = new_id()
        now = self.now()
        self.queues[qid] = {"id": qid, "name": name, "display_name": None, "tags": tags or [], "system_tags": [],
                            "entries": [], "metadata": {}, "created": now, "last_update": now,
                            "company": COMPANY["id"], "user": USER["id"]}
        return self.queues[qid]

    def queues__create(self, b: dict) -> dict:
        if any(q["name"] == b["name"].strip() for q in self.queues.values()):
            raise bad_request(801, f"value combination already exists: queue name {b['name']!r}")
        return {"id": self._create_queue(b["name"], b.get("tags"))["id"]}

    def queues__get_all(self, b: dict) -> dict:
        found = [q for q in self.queues.values() if _matches_common(q, b)]
        return {"queues": [_out(q, b.get("only_fields")) for q in found]}

    def queues__get_by_id(self, b: dict) -> dict:
        queue = copy.deepcopy(self._queue(b["queue"]))
        if b.get("max_task_entries") is not None:
            queue["entries"] = queue["entries"][: b["max_task_entries"]]
        return {"queue": _out(queue)}

    def queues__get_num_entries(self, b: dict) -> dict:
        return {"num": len(self._queue(b["queue"])["entries"])}

    def queues__peek_task(self, b: dict) -> dict:
        entries = self._queue(b["queue"])["entries"]
        return {"task": entries[0]["task"] if entries else None}

    def queues__get_next_task(self, b: dict) -> dict:
        queue = self._queue(b["queue"])
        if not queue["entries"] or (b.get("task") and queue["entries"][0]["task"] != b["task"]):
            return {}
        entry = queue["entries"].pop(0)
        queue["last_update"] = self.now()
        task = self.tasks.get(entry["task"])
        if task is not None and task["status"] == "stopped":  # the server's fix for an agent's abort race
            task["status"] = "queued"
        return {"entry": _out(entry)}

    def queues__add_or_update_metadata(self, b: dict) -> dict:
        queue = self._queue(b["queue"])
        items = {m["key"]: {"key": m["key"], "type": m.get("type"), "value": m.get("value")} for m in b["metadata"]}
        queue["metadata"] = items if b.get("replace_metadata") else {**queue["metadata"], **items}
        queue["last_update"] = self.now()
        return {"updated": 1}

    def queues__delete_metadata(self, b: dict) -> dict:
        queue = self._queue(b["queue"])
        for key in b["keys"]:
            queue["metadata"].pop(key, None)
        return {"updated": 1}

    # -- tasks ---------------------------------------------------------------------------------
    def _task(self, task_id: str) -> dict:
        if task_id not in self.tasks:
            raise bad_request(101, f"invalid task id: id={task_id}")
        return self.tasks[task_id]

    def _new_task(self, fields: dict) -> str:
        if len(fields.get("name") or "") < 3:
            raise bad_request(12, "validation error: name must have at least 3 characters")
        if fields.get("project") and fields["project"] not in self.projects:
            raise bad_request(401, f"invalid project id: id={fields['project']}")
        tid, now = new_id(), self.now()
        self.tasks[tid] = {"id": tid, "status": "created", "status_reason": "", "status_message": "",
                           "created": now, "last_update": now, "last_change": now, "company": COMPANY["id"],
                           "user": USER["id"], "tags": [], "system_tags": [], "hyperparams": {},
                           "configuration": {}, "runtime": {}, "execution": {"artifacts": []}, **fields}
        return tid

    def tasks__create(self, b: dict) -> dict:
        fields = {k: copy.deepcopy(b[k]) for k in (*EDITABLE, "name", "type") if k in b}
        return {"id": self._new_task(fields)}

    def tasks__clone(self, b: dict) -> dict:
        source = self._task(b["task"])
        execution = copy.deepcopy(source.get("execution") or {})
        execution.pop("queue", None)
        execution["artifacts"] = [a for a in execution.get("artifacts", []) if a.get("mode") != "output"]
        fields = {
            "name": b.get("new_task_name") or source["name"], "type": source["type"],
            "project": b.get("new_task_project") or source.get("project"),
            "tags": b.get("new_task_tags") or list(source.get("tags", [])),
            "system_tags": b.get("new_task_system_tags") or list(source.get("system_tags", [])),
            "hyperparams": copy.deepcopy(b.get("new_task_hyperparams") or source.get("hyperparams", {})),
            "configuration": copy.deepcopy(b.get("new_task_configuration") or source.get("configuration", {})),
            "script": copy.deepcopy(source.get("script")), "container": copy.deepcopy(source.get("container")),
            "parent": b.get("new_task_parent") or source["id"],
            "comment": b.get("new_task_comment") or source.get("comment", ""), "execution": execution,
        }
        return {"id": self._new_task(fields)}

    def tasks__get_by_id(self, b: dict) -> dict:
        return {"task": _task_out(self._task(b["task"]))}

    def _page(self, found: list[dict], b: dict) -> list[dict]:
        """``*.get_all`` paging as the server does it: ordered, ``page`` needs ``page_size``, capped."""
        found = _ordered(found, b.get("order_by"))
        page, size = b.get("page"), b.get("page_size")
        if page is not None and size is None:
            raise bad_request(11, "page_size is required when page is requested")
        size = min(size or self.max_page_size, self.max_page_size)
        start = (page or 0) * size
        return [_task_out(d, b.get("only_fields")) for d in found[start:start + size]]

    def tasks__get_all(self, b: dict) -> dict:
        found = [t for t in self.tasks.values() if _task_matches(t, b)]
        return {"tasks": self._page(found, b)}

    def tasks__edit(self, b: dict) -> dict:
        task = self._task(b["task"])
        if task["status"] != "created" and not b.get("force"):
            raise bad_request(110, f"invalid task status: expected=created, status={task['status']}")
        fields = {k: copy.deepcopy(b[k]) for k in EDITABLE if k in b}
        task.update(fields)
        task["last_change"] = task["last_update"] = self.now()
        return {"updated": 1, "fields": _out(fields)}

    def _set_status(self, task: dict, new: str, b: dict, **fields: Any) -> dict:
        current = task["status"]
        if not b.get("force") and new != current and new not in STATE_MACHINE.get(current, set()):
            raise bad_request(110, f"invalid task status: Invalid status change, current_status={current}, "
                                   f"new_status={new}")
        now = self.now()
        change = {"status": new, "status_reason": b.get("status_reason") or "",
                  "status_message": b.get("status_message") or "", "status_changed": now, "last_update": now,
                  "last_change": now, **fields}
        task.update(change)
        return {"updated": 1, "fields": _out(change)}

    def tasks__enqueue(self, b: dict) -> dict:
        task = self._task(b["task"])
        if b.get("queue") and b.get("queue_name"):
            raise bad_request(12, "validation error: either queue id or queue name should be provided")
        if b.get("queue_name"):
            queue = next((q for q in self.queues.values() if q["name"] == b["queue_name"].strip()), None)
            queue = queue or self._create_queue(b["queue_name"])
        elif b.get("queue"):
            queue = self._queue(b["queue"])
        else:
            raise bad_request(707, "no queue is tagged as the default queue for this company")
        previous = task["status"]
        res = self._set_status(task, "queued", b, enqueue_status=previous)
        if any(e["task"] == task["id"] for e in queue["entries"]):
            # like the server: the status change already happened; it is reverted (stamped again) and refused
            self._set_status(task, previous, {"force": True, "status_reason": "failed enqueueing"})
            raise bad_request(706, f"failed adding task to queue since task is already queued: task={task['id']}")
        for other in self.queues.values():
            other["entries"] = [e for e in other["entries"] if e["task"] != task["id"]]
        queue["entries"].append({"task": task["id"], "added": self.now()})
        task.setdefault("execution", {})["queue"] = queue["id"]
        res["fields"]["execution.queue"] = queue["id"]
        return {"queued": 1, **res}

    def tasks__dequeue(self, b: dict) -> dict:
        # clearml-server bll/task/task_operations.py dequeue_task over TaskBLL.dequeue_and_change_status:
        # never refused for the task's status. An unknown id is "dequeued" with nothing updated; a queued
        # task leaves its queue (``execution.queue``; every queue with ``remove_from_all_queues``);
        # a queued *or running* task is then forced to ``new_status``, else the status it was enqueued
        # from, else created (the agent sends new_status=in_progress for the task it just popped);
        # any other status is left alone (updated 0).
        new_status = b.get("new_status")
        if new_status and new_status not in STATE_MACHINE:
            raise bad_request(12, f"validation error: Invalid task status: {new_status}")
        task = self.tasks.get(b["task"])
        if task is None:
            self._remove_from_queues(b["task"])
            return {"dequeued": 1, "updated": 0}
        queue_id = (task.get("execution") or {}).get("queue")
        if task["status"] == "queued" and queue_id in self.queues:
            self._remove_from_queues(task["id"], [self.queues[queue_id]])
        if b.get("remove_from_all_queues"):
            self._remove_from_queues(task["id"])
        if task["status"] not in ("queued", "in_progress"):
            return {"dequeued": 1, "updated": 0}
        res = self._set_status(task, new_status or task.get("enqueue_status") or "created",
                               {**b, "force": True}, enqueue_status=None)
        return {"dequeued": 1, **res}

    def _remove_from_queues(self, task_id: str, queues: list[dict] | None = None) -> None:
        for queue in self.queues.values() if queues is None else queues:
            if any(e["task"] == task_id for e in queue["entries"]):
                queue["entries"] = [e for e in queue["entries"] if e["task"] != task_id]
                queue["last_update"] = self.now()

    def tasks__ping(self, b: dict) -> dict:
        # apiserver/services/tasks.py ping → TaskBLL.set_last_update: stamps last_update and
        # last_change (an unknown id updates nothing and is not an error); answers no data
        task = self.tasks.get(b["task"])
        if task is not None:
            task["last_update"] = task["last_change"] = self.now()
        return {}

    def tasks__started(self, b: dict) -> dict:
        task = self._task(b["task"])
        fields = {} if task["status"] == "in_progress" and task.get("started") else {"started": self.now(),
                                                                                    "completed": None}
        res = self._set_status(task, "in_progress", b, **fields)
        return {"started": res["updated"], **res}

    def tasks__completed(self, b: dict) -> dict:
        return self._set_status(self._task(b["task"]), "completed", b, completed=self.now())

    def tasks__failed(self, b: dict) -> dict:
        return self._set_status(self._task(b["task"]), "failed", b, completed=self.now())

    def tasks__stopped(self, b: dict) -> dict:
        return self._set_status(self._task(b["task"]), "stopped", b)

    def tasks__reset(self, b: dict) -> dict:
        task = self._task(b["task"])
        if task["status"] == "published" and not b.get("force"):
            raise bad_request(110, "invalid task status: published")
        for queue in self.queues.values():
            queue["entries"] = [e for e in queue["entries"] if e["task"] != task["id"]]
        execution = task.setdefault("execution", {})
        execution.pop("queue", None)
        execution["artifacts"] = [a for a in execution.get("artifacts", []) if a.get("mode") == "input"]
        for key in ("started", "completed", "last_worker", "last_worker_report", "enqueue_status"):
            task.pop(key, None)
        task["runtime"] = {}
        self.logs.pop(task["id"], None)  # like the server's _delete_task_events
        return self._set_status(task, "created", {"force": b.get("force"), "status_reason": "reset",
                                                  "status_message": "reset"})

    def tasks__delete(self, b: dict) -> dict:
        task = self._task(b["task"])
        if task["status"] != "created" and not b.get("force"):
            raise bad_request(123, f"task cannot be deleted: due to status, use force=True, task={task['id']}, "
                                   f"expected=created, current={task['status']}")
        for queue in self.queues.values():
            queue["entries"] = [e for e in queue["entries"] if e["task"] != task["id"]]
        del self.tasks[task["id"]]
        self.logs.pop(task["id"], None)
        return {"deleted": True}

    def tasks__add_or_update_artifacts(self, b: dict) -> dict:
        task = self._task(b["task"])
        artifacts = task.setdefault("execution", {}).setdefault("artifacts", [])
        for new in b["artifacts"]:
            new = {"mode": "output", **new}
            artifacts[:] = [a for a in artifacts if (a["key"], a.get("mode")) != (new["key"], new["mode"])]
            artifacts.append(copy.deepcopy(new))
        task["last_change"] = task["last_update"] = self.now()
        return {"updated": len(b["artifacts"])}

    # -- events (the console log) ---------------------------------------------------------------
    def _add_event(self, event: dict) -> None:
        if event.get("type") != "log":
            raise bad_request(12, f"validation error: only log events are kept here, not {event.get('type')!r}")
        task = self._task(event["task"])
        self.logs.setdefault(task["id"], []).append({
            "type": "log", "task": task["id"], "timestamp": int(event.get("timestamp") or self.now()),
            "level": event.get("level") or "info", "worker": event.get("worker"), "msg": event.get("msg") or ""})

    def events__add(self, b: dict) -> dict:
        self._add_event(b)
        return {"added": 1, "errors": 0}

    def events__add_batch(self, b: dict) -> dict:
        for event in b["batched_data"]:
            self._add_event(event)
        return {"added": len(b["batched_data"]), "errors": 0}

    def events__get_task_log(self, b: dict) -> dict:
        # apiserver/services/events.py get_task_log over bll/event/events_iterator.py
        self._task(b["task"])
        lines = sorted(enumerate(self.logs.get(b["task"], [])), key=lambda e: (e[1]["timestamp"], e[0]))
        events = [e for _, e in lines]
        earlier = b.get("navigate_earlier", True) is not False
        since = b.get("from_timestamp")
        if since is not None:
            events = [e for e in events if (e["timestamp"] < since if earlier else e["timestamp"] > since)]
        size = int(b.get("batch_size") or 5000)
        batch = list(reversed(events))[:size] if earlier else events[:size]
        if (earlier and b.get("order") == "asc") or (not earlier and b.get("order") == "desc"):
            batch.reverse()
        return {"events": copy.deepcopy(batch), "returned": len(batch), "total": len(lines)}

    # -- models --------------------------------------------------------------------------------
    def _model(self, model_id: str) -> dict:
        if model_id not in self.models:
            raise bad_request(201, f"invalid model id: id={model_id}")
        return self.models[model_id]

    def models__create(self, b: dict) -> dict:
        if b.get("project") and b["project"] not in self.projects:
            raise bad_request(401, f"invalid project id: id={b['project']}")
        mid, now = new_id(), self.now()
        self.models[mid] = {"id": mid, "name": b["name"], "uri": b["uri"], "comment": b.get("comment", ""),
                            "tags": list(b.get("tags") or []), "system_tags": list(b.get("system_tags") or []),
                            "framework": b.get("framework"), "ready": bool(b.get("ready")),
                            "project": b.get("project"), "created": now, "last_update": now,
                            "company": COMPANY["id"], "user": USER["id"],
                            "metadata": {m["key"]: copy.deepcopy(m) for m in b.get("metadata") or []}}
        return {"id": mid, "created": True}

    def models__get_by_id(self, b: dict) -> dict:
        return {"model": _task_out(self._model(b["model"]))}

    def models__get_all(self, b: dict) -> dict:
        found = [m for m in self.models.values() if _matches_common(m, b)
                 and (not b.get("project") or _list_match(m.get("project"), b["project"]))
                 and (b.get("ready") is None or m["ready"] == b["ready"])]
        return {"models": self._page(found, b)}

    def models__update(self, b: dict) -> dict:
        model = self._model(b["model"])
        fields = {k: copy.deepcopy(b[k]) for k in ("name", "comment", "tags", "system_tags", "ready", "project")
                  if b.get(k) is not None}
        model.update(fields, last_update=self.now())
        return {"updated": 1, "fields": _out(fields)}

    def models__add_or_update_metadata(self, b: dict) -> dict:
        model = self._model(b["model"])
        items = {m["key"]: copy.deepcopy(m) for m in b["metadata"]}
        model["metadata"] = items if b.get("replace_metadata") else {**model["metadata"], **items}
        model["last_update"] = self.now()
        return {"updated": 1}

    # -- workers -------------------------------------------------------------------------------
    def _live_workers(self) -> dict[str, dict]:
        now = self.now()
        for wid in [w for w, e in self.workers.items() if e["last_activity_time"] + e["timeout"] * 1000 < now]:
            del self.workers[wid]  # like the server's Redis entries, which expire
        return self.workers

    def workers__register(self, b: dict) -> dict:
        for qid in b.get("queues") or []:
            self._queue(qid)
        now = self.now()
        self._live_workers()[b["worker"]] = {
            "id": b["worker"], "timeout": int(b.get("timeout") or 600), "queues": list(b.get("queues") or []),
            "queue": None, "task": None, "tags": b.get("tags") or [], "system_tags": b.get("system_tags") or [],
            "register_time": now, "last_activity_time": now, "last_report_time": None}
        return {}

    def workers__unregister(self, b: dict) -> dict:
        if self._live_workers().pop(b["worker"], None) is None:
            raise bad_request(1004, f"worker is not registered: worker={b['worker']}")
        return {}

    def workers__status_report(self, b: dict) -> dict:
        entry = self._live_workers().get(b["worker"])
        if entry is None:
            raise bad_request(1001, f"invalid worker id: worker={b['worker']}")
        now = self.now()
        entry.update(last_activity_time=now, last_report_time=now, queue=b.get("queue"), task=b.get("task"))
        for key in ("queues", "tags", "system_tags"):
            if b.get(key) is not None:
                entry[key] = b[key]
        if b.get("task"):
            task = self._task(b["task"])
            task.update(last_worker=b["worker"], last_worker_report=now, last_update=now, last_change=now)
        return {}

    def workers__get_all(self, b: dict) -> dict:
        now = self.now()
        last_seen = b.get("last_seen", 3600)
        out = []
        for e in self._live_workers().values():
            if last_seen and e["last_activity_time"] < now - max(1, last_seen) * 1000:
                continue
            if b.get("tags") and not _list_match(e["tags"], b["tags"]):
                continue
            task = self.tasks.get(e["task"] or "")
            out.append(_out({
                "id": e["id"], "key": f"worker_{COMPANY['id']}_{USER['id']}_{e['id']}", "user": USER,
                "company": COMPANY, "ip": "127.0.0.1", "register_time": e["register_time"],
                "last_activity_time": e["last_activity_time"], "last_report_time": e["last_report_time"],
                "task": {"id": task["id"], "name": task["name"]} if task else None,
                "queue": self._queue_entry(e["queue"]) if e["queue"] else None,
                "queues": [self._queue_entry(q) for q in e["queues"] if q in self.queues],
                "tags": e["tags"], "system_tags": e["system_tags"]}))
        return {"workers": out}

    def _queue_entry(self, qid: str) -> dict | None:
        queue = self.queues.get(qid)
        if queue is None:
            return {"id": qid}
        entries = queue["entries"]
        return {"id": qid, "name": queue["name"], "num_tasks": len(entries),
                "next_task": {"id": entries[0]["task"]} if entries else None}


# -- queries and serialisation -------------------------------------------------------------------
def new_id() -> str:
    return uuid.uuid4().hex


def envelope(endpoint: str, code: int, subcode: int, msg: str, data: dict) -> dict:
    call_id = new_id()
    return {"meta": {"id": call_id, "trx": call_id,
                     "endpoint": {"name": endpoint, "requested_version": API_VERSION, "actual_version": API_VERSION},
                     "result_code": code, "result_subcode": subcode, "result_msg": msg, "error_stack": None,
                     "error_data": {}},
            "data": data}


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="microseconds")


def parse_time(value: str) -> int:
    """A date filter value (ISO-8601, naive is UTC, or unix seconds) → unix milliseconds."""
    try:
        return int(round(float(value) * 1000))
    except ValueError:
        pass
    when = dt.datetime.fromisoformat(value.strip())
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(round(when.timestamp() * 1000))


def _out(doc: Any, only: list[str] | None = None) -> Any:
    """A stored document as the API returns it: dates as ISO strings, ``only_fields`` projected."""
    if isinstance(doc, dict):
        if only:
            projected: dict = {"id": doc.get("id")} if "id" in doc else {}
            for path in only:
                value, parts = doc, path.split(".")
                for part in parts:
                    value = value.get(part) if isinstance(value, dict) else None
                if value is not None:
                    target = projected
                    for part in parts[:-1]:
                        target = target.setdefault(part, {})
                    target[parts[-1]] = copy.deepcopy(value)
            doc = projected
        return {k: iso(v) if k in DATE_FIELDS and isinstance(v, int) else _out(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_out(v) for v in doc]
    return doc


def _task_out(task: dict, only: list[str] | None = None) -> dict:
    return _out({k: v for k, v in task.items() if v is not None}, only)


def _get(doc: dict, path: str) -> Any:
    for part in path.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


def _list_match(actual: Any, terms: Any) -> bool:
    """The server's list-field query: values match any; ``-x`` (legacy) or ``__$not x`` excludes;
    after ``__$all`` values must all be present, after ``__$any`` any of them; None matches empty."""
    have = set(actual if isinstance(actual, list) else [actual] if actual is not None else [])
    terms = terms if isinstance(terms, list) else [terms]
    legacy = not any(isinstance(t, str) and t.startswith("__$") for t in terms)
    any_of, all_of, none_of, context, negate, allow_empty = [], [], [], "any", False, False
    for term in terms:
        if term is None:
            allow_empty = True
        elif term in ("__$all", "__$and"):
            context = "all"
        elif term in ("__$any", "__$or", "__$nop"):
            context = "any"
        elif term == "__$not":
            negate = True
        elif negate or (legacy and term.startswith("-")):
            none_of.append(term if negate else term[1:])
            negate = False
        else:
            (all_of if context == "all" else any_of).append(term)
    ok = (not any_of or bool(have & set(any_of))) and set(all_of) <= have and not have & set(none_of)
    return ok or (allow_empty and not have)


def _matches_common(doc: dict, b: dict) -> bool:
    if b.get("id") and not _list_match(doc["id"], b["id"]):
        return False
    if b.get("name") and not re.search(b["name"], doc.get("name", "")):
        return False
    return all(not b.get(f) or _list_match(doc.get(f, []), b[f]) for f in ("tags", "system_tags"))


def _date_match(value: int | None, conditions: list[str]) -> bool:
    if value is None:
        return False
    ops = {">=": value.__ge__, ">": value.__gt__, "<=": value.__le__, "<": value.__lt__}
    if len(conditions) == 2 and not any(c and c[0] in "<>" for c in conditions):  # a plain [min, max] range
        low, high = conditions
        return (low is None or value >= parse_time(low)) and (high is None or value <= parse_time(high))
    for cond in conditions:
        m = re.match(r"^(>=|>|<=|<)?(.*)$", cond)
        op = ops[m.group(1)] if m.group(1) else value.__eq__
        if not op(parse_time(m.group(2))):
            return False
    return True


def _task_matches(task: dict, b: dict) -> bool:
    if not _matches_common(task, b):
        return False
    for field in ("project", "status", "type", "parent", "execution.queue"):
        if b.get(field) and not _list_match(_get(task, field), b[field]):
            return False
    return not b.get("status_changed") or _date_match(task.get("status_changed"), b["status_changed"])


def _ordered(docs: list[dict], order_by: list[str] | None) -> list[dict]:
    """Sort like MongoDB (missing values first when ascending); ``id`` is always the last key."""
    keys = list(order_by or [])
    if keys and not {"id", "-id"} & set(keys):
        keys.append("id")
    for key in reversed(keys):  # stable sorts, least significant key first
        field = key.lstrip("-")

        def sort_key(doc: dict, field: str = field) -> tuple:
            value = _get(doc, field)
            return (value is not None, value if value is not None else 0)

        docs = sorted(docs, key=sort_key, reverse=key.startswith("-"))
    return docs


# -- HTTP ----------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: the connection closes after each answer, so a stopped server cuts every client off.
    protocol_version = "HTTP/1.0"
    disable_nagle_algorithm = True  # the header and body writes must not wait on the client's delayed ACK
    server: _HttpServer

    def _serve(self) -> None:
        url = urlsplit(self.path)
        m = re.fullmatch(r"/(?:v\d+\.\d+/)?(\w+\.\w+)", url.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.server.owner.requests += 1
        if self.server.owner.maintenance:
            status, body = 503, envelope(m.group(1) if m else url.path, 503, 0, "Service Unavailable", {})
        elif m is None:
            status, body = 404, envelope(url.path, 404, 0, f"Unable to find endpoint for {url.path}", {})
        else:
            try:
                if "json-lines" in (self.headers.get("Content-Type") or ""):  # a batch: one request a line
                    payload = {"batched_data": [json.loads(line) for line in raw.splitlines() if line.strip()]}
                else:
                    payload = json.loads(raw) if raw.strip() else {}
            except ValueError:
                payload = None
            if not isinstance(payload, dict):
                status, body = 400, envelope(m.group(1), 400, 12, "validation error: body is not a JSON object", {})
            else:
                payload.update({k: int(v) if v.isdigit() else v for k, v in parse_qsl(url.query)})
                status, body = self.server.owner.app.handle(m.group(1), payload, self.headers.get("Authorization"))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FakeClearMLServer


class FakeClearMLServer:
    """``FakeClearML`` served over HTTP on 127.0.0.1; ``stop()`` and ``start()`` keep the port and the state."""

    def __init__(self, port: int = 0, *, access_key: str = "scantide-test-key",
                 secret_key: str = "scantide-test-secret-0123456789abcdef", **options: Any) -> None:
        self.app = FakeClearML(access_key=access_key, secret_key=secret_key, **options)
        self.port = port
        self.maintenance = False
        self.requests = 0  # HTTP requests served, answered or not
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The SDK's standard variables that point a client at this server."""
        return {"CLEARML_API_HOST": self.url, "CLEARML_API_ACCESS_KEY": self.app.access_key,
                "CLEARML_API_SECRET_KEY": self.app.secret_key}

    def start(self) -> FakeClearMLServer:
        httpd = _HttpServer(("127.0.0.1", self.port), _Handler)
        httpd.owner = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
