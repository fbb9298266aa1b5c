"""The ``TaskBackend`` interface: the one seam between scantide's logic and a task store.

Two sides use it. The platform side (enqueue, API, monitor, autoscaler) submits tasks and reads
states, changes, queue statistics and workers. The agent side (workers) claims tasks under a
lease, renews it and finishes them. Implementations: ``embedded`` (SQLite) and ``clearml``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Protocol

from service.domain import (
    ChangePage,
    JobState,
    QueueStats,
    Submission,
    SubmitItem,
    TaskError,
    TaskInfo,
    Template,
    WorkerInfo,
)
from service.doorbell import Listener
from service.errors import NotSupported, ScantideError

if TYPE_CHECKING:
    from service.algorithms import AlgorithmVersion
    from service.models import AuditEntry, ModelVersion


class TaskBackend(ABC):
    def listener(self, topic: str) -> Listener:
        """A wait for ``topic`` (``service.doorbell``: ``queue``, ``changes``) that returns early when
        this store signals it. Default: no signal, the wait is the caller's poll interval."""
        return Listener(None, topic)

    # -- templates -------------------------------------------------------------------------
    @abstractmethod
    def register_template(self, template: Template) -> None:
        """Create or replace the template of ``template.name``."""

    @abstractmethod
    def get_template(self, algorithm: str) -> Template:
        """The template for an algorithm; raises ``UnknownAlgorithm``."""

    @abstractmethod
    def templates(self) -> list[Template]:
        """Every registered template."""

    # -- platform side ---------------------------------------------------------------------
    @abstractmethod
    def submit(self, algorithm: str, scan_id: str, params: dict[str, Any], output_uri: str) -> Submission:
        """Clone the algorithm's template with ``params`` and enqueue it, atomically.

        Idempotent on ``(algorithm, scan_id)``: a repeat returns the existing task with
        ``created=False`` and changes nothing.
        """

    def submit_many(self, items: list[SubmitItem]) -> list[Submission | ScantideError]:
        """``submit`` for several items; each gets its submission or its error, in order.

        Backends that can should do this in one round trip (the API batches concurrent requests).
        """
        out: list[Submission | ScantideError] = []
        for item in items:
            try:
                out.append(self.submit(item.algorithm, item.scan_id, item.params, item.output_uri))
            except ScantideError as exc:
                out.append(exc)
        return out

    @abstractmethod
    def get_task(self, task_id: str) -> TaskInfo:
        """One task; raises ``TaskNotFound``."""

    @abstractmethod
    def tasks_for_scan(self, scan_id: str) -> list[TaskInfo]:
        """Every task of a scan (one per algorithm), oldest first."""

    @abstractmethod
    def list_tasks(self, state: JobState | None = None, limit: int = 50) -> list[TaskInfo]:
        """Most recently created tasks first, optionally of one state."""

    @abstractmethod
    def changes(self, cursor: str | None, limit: int = 500) -> ChangePage:
        """State changes recorded after ``cursor`` (None: from the start), oldest first.

        Ordered by the store's own sequence, never a client clock, so paging until
        ``more`` is False sees every change exactly once.
        """

    @abstractmethod
    def cancel(self, task_id: str) -> TaskInfo:
        """Stop a queued task before any worker takes it (state ``stopped``, error ``cancelled``).

        Raises ``TaskNotCancellable`` when it is running or finished, ``TaskNotFound``.
        """

    def retry(self, task_id: str) -> TaskInfo:
        """Queue a failed or stopped task again as a new attempt, its ended run kept in its history;
        the attempt limit counts from here. Raises ``TaskNotRetryable``, ``TaskNotFound``."""
        raise NotSupported(f"this task store cannot run task {task_id} again")

    @abstractmethod
    def queue_stats(self, queue: str) -> QueueStats:
        """Pending and running counts and the age of the oldest queued task."""

    @abstractmethod
    def queues(self) -> list[str]:
        """Every queue a template or task names."""

    @abstractmethod
    def workers(self, queue: str | None = None) -> list[WorkerInfo]:
        """Registered workers, optionally of one queue."""

    @abstractmethod
    def request_drain(self, worker_id: str) -> None:
        """Ask a worker to finish its task and take no new one."""

    # -- agent side ------------------------------------------------------------------------
    @abstractmethod
    def register_worker(self, worker_id: str, queue: str) -> None:
        """Announce a worker (idempotent)."""

    @abstractmethod
    def unregister_worker(self, worker_id: str) -> None:
        """Remove a worker that is exiting cleanly."""

    @abstractmethod
    def claim(self, queue: str, worker_id: str, lease_s: float) -> TaskInfo | None:
        """Atomically take the oldest queued task of ``queue``, or None.

        Two workers never get the same task. The task is leased for ``lease_s`` seconds;
        a lease that runs out re-queues the task (up to the attempt limit) or fails it with
        ``worker_lost``. A worker asked to drain gets None.
        """

    @abstractmethod
    def heartbeat(self, worker_id: str, task_id: str | None, lease_s: float, progress: float | None = None) -> bool:
        """Mark the worker alive, extend its task's lease to now + ``lease_s`` and record
        ``progress`` (0..1) when given.

        Returns True when the worker has been asked to drain. Raises ``LeaseLost`` when the
        task is no longer this worker's.
        """

    @abstractmethod
    def finish(
        self, task_id: str, worker_id: str, *, result: dict[str, Any] | None = None, error: TaskError | None = None
    ) -> TaskInfo:
        """Record the outcome: ``result`` → completed, ``error`` → failed. Raises ``LeaseLost``."""

    @abstractmethod
    def hand_back(self, task_id: str, worker_id: str, reason: TaskError) -> TaskInfo:
        """Queue a task ``worker_id`` holds again without counting its run against the attempt limit:
        the worker leaves for a reason that is not the task's (``reason.code`` ``spot_interruption``:
        EC2 takes its instance back). The run goes to the task's ``history`` as ``stopped`` with
        ``reason`` as its error. Raises ``LeaseLost``."""

    @abstractmethod
    def reap_expired(self) -> list[TaskInfo]:
        """Re-queue or fail tasks whose lease ran out; returns the tasks it changed."""

    def close(self) -> None:
        """Release connections."""

    # -- model registry (service.models holds the rules; files are placed before register_model) --
    # Each backend keeps its registry in ``self.models`` (embedded_models, clearml_models); the
    # backend's model methods are that registry's.
    models: ModelRegistry

    def register_model(self, model: ModelVersion) -> ModelVersion:
        """Record a new version (not promoted) and its ``register`` audit entry; returns it as stored.

        Raises ``ModelVersionExists`` when ``(algorithm, version)`` is taken: versions are immutable.
        """
        return self.models.register(model)

    def model_version(self, algorithm: str, version: str) -> ModelVersion | None:
        """One version, or None."""
        return self.models.get(algorithm, version)

    def list_models(self, algorithm: str | None = None) -> list[ModelVersion]:
        """Registered versions, by algorithm then oldest first."""
        return self.models.listing(algorithm)

    def promoted_model(self, algorithm: str) -> ModelVersion | None:
        """The version new tasks of ``algorithm`` get, or None (the algorithm's bundled weights).

        Exact: a promote that returned is seen by the very next call, from any process. Enqueue
        calls it once per algorithm per batch.
        """
        return self.models.promoted(algorithm)

    def promote_model(self, algorithm: str, version: str, by: str) -> AuditEntry | None:
        """Make ``version`` the promoted one; None when it already is (nothing changes).
        Raises ``ModelVersionNotFound``."""
        return self.models.promote(algorithm, version, by)

    def rollback_model(self, algorithm: str, by: str) -> AuditEntry:
        """Promote the version promoted before the current one (``service.models.rollback_target``).
        Raises ``NothingToRollBack``."""
        return self.models.rollback(algorithm, by)

    def model_history(self, algorithm: str | None = None) -> list[AuditEntry]:
        """The audit trail, oldest first."""
        return self.models.history(algorithm)


    # -- algorithm registry (service.algorithms holds the rules; bundles are stored before) ----------
    algorithms: AlgorithmRegistry

    def register_algorithm(self, version: AlgorithmVersion) -> AlgorithmVersion:
        """Record a version and make it its algorithm's template; returns the version as stored, which
        is an earlier registration's when ``(name, version)`` was taken (the caller compares sha256)."""
        return self.algorithms.register(version)[0]

    def algorithm_version(self, name: str, version: str) -> AlgorithmVersion | None:
        """One version, or None."""
        return self.algorithms.get(name, version)

    def latest_algorithm(self, name: str) -> AlgorithmVersion | None:
        """The newest registered version (what enqueue pins when the request names none), or None."""
        return self.algorithms.latest(name)

    def list_algorithms(self, name: str | None = None) -> list[AlgorithmVersion]:
        """Registered versions, by name then oldest first."""
        return self.algorithms.listing(name)


class AlgorithmRegistry(Protocol):
    """A backend's store of algorithm versions (see TaskBackend's methods)."""

    def register(self, version: AlgorithmVersion) -> tuple[AlgorithmVersion, bool]: ...

    def get(self, name: str, version: str) -> AlgorithmVersion | None: ...

    def latest(self, name: str) -> AlgorithmVersion | None: ...

    def listing(self, name: str | None) -> list[AlgorithmVersion]: ...


class ModelRegistry(Protocol):
    """A backend's store of model versions and their audit trail (see TaskBackend's methods)."""

    def register(self, model: ModelVersion) -> ModelVersion: ...

    def get(self, algorithm: str, version: str) -> ModelVersion | None: ...

    def listing(self, algorithm: str | None) -> list[ModelVersion]: ...

    def promoted(self, algorithm: str) -> ModelVersion | None: ...

    def promote(self, algorithm: str, version: str, by: str) -> AuditEntry | None: ...

    def rollback(self, algorithm: str, by: str) -> AuditEntry: ...

    def history(self, algorithm: str | None) -> list[AuditEntry]: ...
