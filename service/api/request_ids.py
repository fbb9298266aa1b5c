"""``X-Request-ID``: every request gets an id, the caller's when it is sane (``service.logs.request_id_from``)
or a new one. Every line logged while the request is served carries it, uvicorn's access line
included, the answer returns it in ``X-Request-ID``, and a scan it submits keeps it with its task."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import bind_here, request_id_from

HEADER = "X-Request-ID"
_HEADER = HEADER.lower().encode()


class RequestIds:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((v for k, v in scope.get("headers", ()) if k == _HEADER), None)
        request_id = request_id_from(sent.decode("latin-1") if sent is not None else None)
        # Bound for the rest of this request's asyncio task, not reset on the way out: uvicorn logs the
        # access line from inside it, and an unhandled error after the app has returned.
        bind_here(request_id=request_id)

        async def answer(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _HEADER]
                message = {**message, "headers": [*headers, (_HEADER, request_id.encode())]}
            await send(message)

        await self.app(scope, receive, answer)


def install_request_ids(app: FastAPI) -> None:
    """Wrap the whole app, outside Starlette's own error middleware too, so even an answer to an
    unhandled error carries the id (``add_middleware`` can only go inside that one)."""
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: RequestIds(build())  # type: ignore[method-assign]
