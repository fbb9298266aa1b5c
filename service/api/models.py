"""The model-registry endpoints: read an algorithm's versions and audit trail (``read`` scope),
promote a version or roll back (``promote`` scope). Registration is the CLI's
(``scantide models register``): the file must load in the algorithm before it is accepted."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from service.api.auth import TokenAuth
from service.api.responses import AUTH, JSON_BODY, STORE, errors
from service.api.schemas import ModelChange, ModelRegistry
from service.backends.base import TaskBackend
from service.errors import ModelVersionNotFound, NothingToRollBack
from service.models import VERSION_PATTERN, registry


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(pattern=VERSION_PATTERN, description="A registered version of the algorithm's model.")
    by: str | None = Field(default=None, max_length=128,
                           description="Who asks, for the audit trail (recorded next to the token's fingerprint).")


def models_router(backend: TaskBackend, auth: TokenAuth) -> APIRouter:
    router = APIRouter(prefix="/v1/models", tags=["models"])

    def who(request: Request, by: str | None) -> str:
        token = auth.identity(request)
        return f"{by} ({token})" if by else token

    @router.get("/{algorithm}", dependencies=[Depends(auth.require("read"))], response_model=ModelRegistry,
                responses=errors(*AUTH, *STORE),
                summary="An algorithm's model versions, the promoted one, and the audit trail")
    def get_models(algorithm: str) -> dict[str, Any]:
        return registry(backend, algorithm)

    @router.post("/{algorithm}/promote", dependencies=[Depends(auth.require("promote"))], response_model=ModelChange,
                 responses=errors(*AUTH, *STORE, *JSON_BODY, ModelVersionNotFound),
                 summary="Promote a version: tasks enqueued from now on run it; queued and running ones keep theirs",
                 description="404 model_version_not_found for a version never registered.")
    def promote(algorithm: str, body: PromoteRequest, request: Request) -> dict[str, Any]:
        entry = backend.promote_model(algorithm, body.version, by=who(request, body.by))
        return {**registry(backend, algorithm), "changed": entry is not None,
                "audit": entry.to_dict() if entry else None}

    @router.post("/{algorithm}/rollback", dependencies=[Depends(auth.require("promote"))], response_model=ModelChange,
                 responses=errors(*AUTH, *STORE, NothingToRollBack),
                 summary="Promote again the version promoted before the current one",
                 description="409 nothing_to_roll_back when no earlier promotion is left.")
    def rollback(algorithm: str, request: Request) -> dict[str, Any]:
        entry = backend.rollback_model(algorithm, by=who(request, None))
        return {**registry(backend, algorithm), "changed": True, "audit": entry.to_dict()}

    return router
