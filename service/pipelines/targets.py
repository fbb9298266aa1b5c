"""Compute targets: where a pipeline step runs. Each is a (backend, queue, storage) triple built
from this deployment's settings with some of them changed; the deployment's own backend is the
target named ``settings.own_compute``. Opened lazily: a target a run never uses is never contacted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from service.errors import ConfigError
from service.settings import Settings, load_settings

if TYPE_CHECKING:
    from service.backends.base import TaskBackend
    from service.enqueue import Enqueuer


@dataclass
class Target:
    name: str
    settings: Settings
    _backend: TaskBackend | None = field(default=None, repr=False)

    @property
    def backend(self) -> TaskBackend:
        if self._backend is None:
            from service.backends import open_backend

            self._backend = open_backend(self.settings)
        return self._backend

    @cached_property
    def enqueuer(self) -> Enqueuer:
        from service.enqueue import Enqueuer

        return Enqueuer.from_settings(self.settings)


class Targets(dict[str, Target]):
    """Every target by name; ``default`` is where a step without ``compute`` runs."""

    default: str

    def close(self) -> None:
        for target in self.values():
            if target._backend is not None:
                target._backend.close()


def targets_for(settings: Settings, own: TaskBackend | None = None) -> Targets:
    """The deployment's targets. ``own``: its backend, when already open."""
    targets = Targets({settings.own_compute: Target(settings.own_compute, settings, own)})
    base = settings.model_dump()
    for name, overrides in settings.compute_targets.items():
        if name in targets:
            raise ConfigError(f"compute_targets.{name}: the name of this deployment's own target; choose another")
        try:
            targets[name] = Target(name, load_settings(**{**base, **overrides}))
        except ConfigError as exc:
            raise ConfigError(f"compute_targets.{name}: {exc.message}") from exc
    targets.default = settings.default_compute or settings.own_compute
    if targets.default not in targets:
        raise ConfigError(f"default_compute: unknown target {targets.default!r}; known: {', '.join(targets)}")
    return targets
