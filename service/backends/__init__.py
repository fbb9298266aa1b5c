"""Task backends: where tasks, queues and workers live (embedded SQLite or ClearML)."""

from __future__ import annotations

from service.backends.base import TaskBackend
from service.settings import Settings


def open_backend(settings: Settings) -> TaskBackend:
    """The backend the settings name, ready to use."""
    if settings.backend == "embedded":
        from service.algorithms import ensure_builtin
        from service.backends.embedded import EmbeddedBackend

        backend = EmbeddedBackend(settings.db_path, max_attempts=settings.max_attempts,
                                  worker_expiry_s=max(settings.lease_s, 3 * settings.heartbeat_s),
                                  wake_ups=settings.wake_ups)
        ensure_builtin(backend, settings)
        return backend
    from service.errors import ConfigError

    if settings.backend == "clearml":
        try:
            from service.backends.clearml import ClearMLBackend  # the SDK loads only in ClearML mode
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("clearml"):
                raise
            raise ConfigError("backend 'clearml' needs the ClearML SDK: pip install 'scantide[clearml]'") from exc
        return ClearMLBackend.from_settings(settings)

    raise ConfigError(f"backend {settings.backend!r} is not available in this build")
