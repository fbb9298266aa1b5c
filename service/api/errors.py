"""Every error leaves the API as ``{"error": {"code", "message"}}`` with the right status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.errors import MalformedRequest, PayloadTooLarge, ScantideError, UnsupportedMediaType, invalid_input

log = logging.getLogger(__name__)

_HTTP_CODES = {400: MalformedRequest.code, 404: "not_found", 405: "method_not_allowed", 413: PayloadTooLarge.code,
               415: UnsupportedMediaType.code}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ScantideError)
    async def scantide_error(_: Request, exc: ScantideError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status >= 500:
            log.warning("request_failed code=%s message=%s", exc.code, exc.message)
        return error_response(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = invalid_input(list(exc.errors()))
        return error_response(error.status, error.code, error.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def client_disconnected(request: Request, _: ClientDisconnect) -> JSONResponse:
        # The client went away before sending the whole body: nothing failed here and nobody reads the
        # answer (uvicorn drops it). Handled here, it never reaches the catch-all below and uvicorn,
        # which would each log a traceback.
        log.info("client_disconnected method=%s path=%s", request.method, request.url.path)
        return error_response(400, "client_disconnected", "the client closed the connection before sending the "
                                                          "whole request body")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error")
        return error_response(500, "internal_error", "internal error; the server log has the details")
