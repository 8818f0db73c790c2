"""Per-request bookkeeping: the x-request-id header, one access log record and the request metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..metrics import Metrics
from ..wire.routes import match

log = logging.getLogger("nomoat.access")  # the access log's name: README.md and tests/test_requestlog.py pin it

# A client's id is echoed only if it is short and plain: it goes into headers and log lines.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_TEXT_ORDER = ("model", "adapter", "status", "prompt_tokens", "completion_tokens", "ttft_s", "duration_s",
               "request_id", "key_id", "client")


class RequestLogMiddleware:
    """Outermost middleware: tags every response with x-request-id, then logs and counts the request
    after its last byte is sent. Routes add model, adapter, tokens and ttft to the scope's state."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what an exception escaping the app becomes
        state: dict[str, Any] = scope.setdefault("state", {})
        request_id = state["request_id"] = request_id_from(scope)

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
            self.metrics.in_flight.dec()
            found = match(scope["method"], scope["path"])
            if found.endpoint is None or not found.endpoint.quiet:
                self._record(scope, state, status, time.perf_counter() - started, found.label)

    def _record(self, scope: Scope, state: dict[str, Any], status: int, elapsed: float, endpoint: str) -> None:
        path = scope["path"]
        model, adapter = state.get("model", ""), state.get("adapter", "")
        base_model = state.get("base_model", "")  # metrics label by served model, not by alias
        self.metrics.requests.labels(base_model, adapter, endpoint, str(status)).inc()
        if base_model:
            self.metrics.request_duration.labels(base_model, adapter, endpoint).observe(elapsed)
        tokens = state.get("tokens")
        ttft = state.get("ttft")
        client = scope.get("client")
        fields = {
            "request_id": state["request_id"],
            "method": scope["method"],
            "path": path,
            "status": status,
            "model": model or None,
            "adapter": adapter or None,
            "prompt_tokens": tokens[0] if tokens else None,
            "completion_tokens": tokens[1] if tokens else None,
            "ttft_s": round(ttft, 4) if ttft is not None else None,
            "duration_s": round(elapsed, 4),
            "key_id": state.get("key_id"),
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
