"""Middleware: a domain or engine error raised below becomes its JSON answer (wire/errors.py's table)."""

from __future__ import annotations

import copy

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ModelLoadError
from ..wire.body import ClientDisconnected
from ..wire.context import RequestContext
from ..wire.errors import answer_for, is_client_error
from ..wire.redact import without_paths
from ..wire.routes import match


class ErrorBoundary:
    """Middleware: a domain or engine error raised anywhere below becomes its JSON answer here.

    Errors inside a stream that has begun are reported in-band by the stream itself.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnected:
            if not started:  # nobody reads it; the access log and metrics record a 499
                await Response(status_code=499)(scope, receive, send)
        except Exception as exc:
            if started or not is_client_error(exc):
                raise
            context = RequestContext.of(scope)
            if isinstance(exc, ModelLoadError) and context.key_id is not None and not context.admin:
                # llama.cpp's reason names the model's file: a key that is not an admin's is not shown where it is.
                exc = copy.copy(exc)
                exc.message = without_paths(exc.message, *([exc.path] if exc.path else []))
            answer = answer_for(exc, context.prompt_field, match(scope["method"], scope["path"]).dialect)
            await JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)(scope, receive, send)
