"""Task backends: where tasks, queues and workers live (embedded SQLite or ClearML)."""

from __future__ import annotations

from service.backends.base import TaskBackend
from service.domain import Template
from service.settings import Settings


def default_templates(settings: Settings) -> list[Template]:
    """The templates every fresh store starts with: one per shipped algorithm."""
    return [
        Template(
            name="video_summary",
            entry_point="algorithms.entry",
            queue=settings.default_queue,
            params={"keyframes": 8, "segments": 10},
            max_runtime_s=settings.task_timeout_s,
        )
    ]


def open_backend(settings: Settings) -> TaskBackend:
    """The backend the settings name, ready to use."""
    if settings.backend == "embedded":
        from service.backends.embedded import EmbeddedBackend

        backend = EmbeddedBackend(settings.db_path, max_attempts=settings.max_attempts)
        backend.ensure_templates(default_templates(settings))
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
