"""The ``ComputeProvider`` interface: the autoscaler's one seam to a source of machines.

The provider is the source of truth: ``list_instances`` reads what exists (EC2 by tag
``scantide:pool``, local processes from their pid files), so a restarted daemon rebuilds its whole
view from it and never forgets an instance. Instance ids double as worker ids: a worker started on
an instance registers under the instance's id, or, one per slot, ``<instance id>:<k>``
(``autoscaler.model.slot_worker_ids``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from autoscaler.model import InstanceOption


@dataclass(frozen=True)
class ProviderInstance:
    """An instance as the provider reports it."""

    id: str
    pool: str
    option: InstanceOption
    provider_state: str  # pending | running | stopping | stopped | shutting-down | terminated
    launched_at: float  # unix seconds of the last launch or start
    interrupted: bool = False  # the provider is taking it back (a spot interruption), not we


class CapacityError(Exception):
    """The provider has no capacity for this option now (try the next option)."""


class ComputeProvider(ABC):
    @abstractmethod
    def list_instances(self, pool: str) -> list[ProviderInstance]:
        """Every live instance of the pool (terminated ones excluded), stopped ones included."""

    @abstractmethod
    def launch(self, pool: str, option: InstanceOption, count: int) -> list[str]:
        """Launch ``count`` instances of ``option``; returns their ids. Raises ``CapacityError``."""

    @abstractmethod
    def terminate(self, instance_ids: list[str]) -> None:
        """Terminate instances (idempotent: unknown or gone ids are ignored)."""

    def stop(self, instance_ids: list[str]) -> None:
        """Stop instances into the warm pool. Providers without stop/start terminate instead."""
        self.terminate(instance_ids)

    def start(self, instance_ids: list[str]) -> list[str]:
        """Start stopped instances; returns those that started. Raises ``CapacityError``."""
        return []
