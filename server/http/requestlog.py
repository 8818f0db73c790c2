"""Per-request bookkeeping: the x-request-id header, one access log record and the request metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..metrics import Metrics
from ..wire.context import RequestContext
from ..wire.routes import match

log = logging.getLogger("nomoat.access")  # the access log's name: README.md and tests/test_requestlog.py pin it

# A client's id is echoed only if it is short and plain: it goes into headers and log lines.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_TEXT_ORDER = ("model", "adapter", "status", "prompt_tokens", "completion_tokens", "ttft_s", "duration_s",
               "request_id", "key_id", "client")


class RequestLogMiddleware:
    """Outermost middleware, the owner of each request's RequestContext: tags every response with x-request-id,
    then, once its last byte is sent (or the request failed), releases what the request held, and logs and counts
    it. Routes add model, adapter, tokens and ttft to the context."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what an exception escaping the app becomes
        context = RequestContext.of(scope)
        request_id = context.request_id = request_id_from(scope)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            context.release()
            self.metrics.in_flight.dec()
            found = match(scope["method"], scope["path"])
            if found.endpoint is None or not found.endpoint.quiet:
                self._record(scope, context, status, time.perf_counter() - started, found.label)

    def _record(self, scope: Scope, context: RequestContext, status: int, elapsed: float, endpoint: str) -> None:
        path = scope["path"]
        model, adapter = context.model, context.adapter
        base_model = context.base_model  # metrics label by served model, not by alias
        self.metrics.requests.labels(base_model, adapter, endpoint, str(status)).inc()
        if base_model:
            self.metrics.request_duration.labels(base_model, adapter, endpoint).observe(elapsed)
        tokens, ttft = context.tokens, context.ttft
        client = scope.get("client")
        fields = {
            "request_id": context.request_id,
            "method": scope["method"],
            "path": path,
            "status": status,
            "model": model or None,
            "adapter": adapter or None,
            "prompt_tokens": tokens[0] if tokens else None,
            "completion_tokens": tokens[1] if tokens else None,
            "ttft_s": round(ttft, 4) if ttft is not None else None,
            "duration_s": round(elapsed, 4),
            "key_id": context.key_id,
            "client": client[0] if client else None,
        }
        text = " ".join(f"{k}={fields[k]}" for k in _TEXT_ORDER if fields[k] is not None)
        log.info("%s %s %s", scope["method"], path, text, extra={"fields": fields})


def request_id_from(scope: Scope) -> str:
    """The client's x-request-id when it is a plain token, else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _CLIENT_ID.fullmatch(candidate):
                return candidate
            break
    return "req_" + uuid.uuid4().hex
