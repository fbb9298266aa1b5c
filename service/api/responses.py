"""What ``/openapi.json`` says about auth and errors, route by route.

``errors(*classes)`` turns the error classes a route can answer with (of the one tree in
``service.errors``) into one documented response per HTTP status, whose body is
``{"error": {"code", "message"}}`` with ``code`` an enum of exactly those classes' codes. A route
names the groups below and the errors of its own handler and of what the handler calls;
``tests/test_openapi.py`` answers each route's error cases and checks every code it gets is in
that route's enum.

``install_openapi`` keeps the description OpenAPI 3.1: it takes out FastAPI's own 422
``HTTPValidationError`` response, which FastAPI adds to every route with parameters (our validation
errors have the error shape, and a route documents them, ``JSON_BODY``, only where a body can fail
validation), and moves an event stream's OpenAPI 3.2 ``itemSchema`` to ``x-itemSchema`` beside a
3.1 ``schema``.

Not per route: 404 ``not_found`` and 405 ``method_not_allowed`` (no route matched), and 400
``client_disconnected`` (nobody is left to read it).
"""

from __future__ import annotations

from collections import defaultdict
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.security import HTTPBearer

from service.errors import (
    AuthError,
    BackendUnavailable,
    ClearMLRefused,
    Forbidden,
    InvalidRequest,
    InvalidToken,
    MalformedJson,
    MalformedRequest,
    PayloadTooLarge,
    RateLimited,
    RequestHeaderTooLarge,
    ScantideError,
)
from service.settings import SCOPES
from service.storage.base import StorageError, StorageUnavailable

BEARER = HTTPBearer(
    scheme_name="bearer", auto_error=False,
    description="`Authorization: Bearer <token>`. Tokens carry scopes (SCANTIDE_API_TOKENS): "
    "`enqueue` submits scans and pipeline runs, cancels and retries; `read` reads everything; `promote` promotes "
    "and rolls back model versions; `register` registers algorithms and pipelines and uploads blobs (it decides "
    "what code workers run). Each operation's security requirement names the scope it needs.")

# Around every route: a head or a body over the limits, an unexpected failure.
ANY: tuple[type[ScantideError], ...] = (RequestHeaderTooLarge, PayloadTooLarge, ScantideError)
# A route behind a bearer token (the rate limit counts tokens before anything else runs).
AUTH = (AuthError, InvalidToken, Forbidden, RateLimited)
# A route that reads or writes the task store (ClearML refuses calls with 502).
STORE = (BackendUnavailable, ClearMLRefused)
# A route that reads or writes outputs, bundles or blobs in storage (local files, S3).
STORAGE = (StorageError, StorageUnavailable)
# A route whose body FastAPI parses as JSON into a model.
JSON_BODY = (MalformedJson, MalformedRequest, InvalidRequest)

_FASTAPI_422 = {"$ref": "#/components/schemas/HTTPValidationError"}
_STREAM = "A stream of events, each as x-itemSchema describes (OpenAPI 3.2's itemSchema)."


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` an OpenAPI 3.1 description (see the module docstring)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            for operations in (*schema.get("paths", {}).values(), *schema.get("webhooks", {}).values()):
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    if responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema") \
                            == _FASTAPI_422:
                        del responses["422"]
                    for response in responses.values():
                        for media in response.get("content", {}).values():
                            if "itemSchema" in media:
                                media["x-itemSchema"] = media.pop("itemSchema")
                                media.setdefault("schema", {"type": "string", "description": _STREAM})
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def security(scope: str) -> dict[str, Any]:
    """``openapi_extra`` of a route that checks its token by hand: it needs ``scope``."""
    assert scope in SCOPES, scope
    return {"security": [{BEARER.scheme_name: [scope]}]}


def errors(*classes: type[ScantideError]) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route that can answer with ``classes`` (``ANY`` added)."""
    by_status: dict[int, list[str]] = defaultdict(list)
    for cls in (*ANY, *classes):
        if cls.code not in by_status[cls.status]:
            by_status[cls.status].append(cls.code)
    return {status: {"description": f"{HTTPStatus(status).phrase}: {', '.join(codes)}",
                     "content": {"application/json": {"schema": error_schema(codes)}}}
            for status, codes in sorted(by_status.items())}


def error_schema(codes: list[str]) -> dict[str, Any]:
    """``{"error": {"code": <one of codes>, "message": str}}`` as a JSON schema."""
    detail = {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string", "enum": codes, "description": "Stable: clients branch on it."},
        "message": {"type": "string", "description": "For a person: what went wrong and what to do."}}}
    return {"type": "object", "required": ["error"], "properties": {"error": detail},
            "examples": [{"error": {"code": codes[0], "message": "what went wrong and what to do"}}]}
