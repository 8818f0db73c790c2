"""Requests for a model that a child process serves (a model with `rpc`, server/child.py) forwarded to that process,
the body and the answer streamed through; the child dying mid-answer ends it with an error in the route's shape."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from ..child import ChildModel
from ..core.fields import KeepAlive
from ..errors import InvalidRequestError, ServiceUnavailableError
from ..registry import ModelRegistry
from ..wire.body import ClientDisconnected, kept_json, race_disconnect, take_body
from ..wire.context import RequestContext
from ..wire.errors import answer_for
from ..wire.limits import RequestLimits
from ..wire.routes import Endpoint, match
from .auth import CALLER_HEADER, caller_header

log = logging.getLogger(__name__)

# The endpoints whose body names a model; the rest (lists, adapters, lifecycle) the parent answers itself.
FORWARDED = frozenset({"chat", "completions", "embeddings", "create_response", "count_response_tokens", "messages",
                       "count_tokens", "tokenize", "detokenize", "apply_template"})
_DROPPED_REQUEST = frozenset({"host", "authorization", "x-api-key", "content-length", "connection",
                              "transfer-encoding", "accept-encoding", "keep-alive", CALLER_HEADER})
# The parent's own middleware sets these (the request id, CORS) or the server does (date, server).
_DROPPED_RESPONSE = frozenset({"transfer-encoding", "connection", "keep-alive", "content-encoding", "date", "server",
                               "x-request-id"})


class ForwardMiddleware:
    """Pure ASGI: a forwarded request holds its model on its RequestContext (never unloaded under it)."""

    def __init__(self, app: ASGIApp, registry: ModelRegistry, limits: RequestLimits) -> None:
        self.app = app
        self.registry = registry
        self.limits = limits
        # No read timeout: a generation streams as long as it runs, bounded by the child's request timeout.
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = match(scope["method"], scope["path"]).endpoint if scope["type"] == "http" else None
        if endpoint is None or endpoint.name not in FORWARDED or not self.registry.hosts_children():
            await self.app(scope, receive, send)
            return
        body = await take_body(scope, receive, self.limits.max_body_bytes, self.limits.body_timeout)
        context = RequestContext.of(scope)
        try:
            data = kept_json(context)
        except InvalidRequestError:  # not JSON: the handler here refuses it with the 400 the child would send
            await self.app(scope, receive, send)
            return
        fields: dict[str, Any] = data if isinstance(data, dict) else {}  # no model named: the default
        model = fields.get("model")
        base = self.registry.hosted(model if isinstance(model, str) else None)
        if base is None:
            await self.app(scope, receive, send)
            return
        lease = await self.registry.residency.acquire(base, _keep_alive(fields))
        context.hold(lease)
        served = lease.served
        assert served.child is not None
        child = served.child
        child.outstanding += 1
        try:
            await self._forward(child, endpoint, scope, body, receive, send)
        finally:
            child.outstanding -= 1

    async def _forward(self, child: ChildModel, endpoint: Endpoint, scope: Scope, body: bytes, receive: Receive,
                       send: Send) -> None:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k.decode("latin-1").lower() not in _DROPPED_REQUEST]
        headers.append(("authorization", f"Bearer {child.api_key}"))
        # The child knows only the parent's key: it stores responses under, and shows them to, the client's.
        headers.append((CALLER_HEADER, caller_header(RequestContext.of(scope))))
        query = scope.get("query_string", b"").decode("latin-1")
        url = child.base_url + scope["path"] + (f"?{query}" if query else "")
        request = self.client.build_request(scope["method"], url, headers=headers, content=body)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise await _lost(child, exc) from None
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.multi_items()
                                    if k.lower() not in _DROPPED_RESPONSE]})
            streaming = response.headers.get("content-type", "").startswith("text/event-stream")
            try:
                await race_disconnect(receive, _pump(response, send))
            except ClientDisconnected:
                return  # the client left: closing the response cancels the child's generation
            failure = None
        except httpx.HTTPError as exc:
            failure = await _lost(child, exc)
            if not streaming:
                raise failure from None  # the answer has begun: the server closes the connection
        finally:
            await response.aclose()
        tail = _error_event(endpoint, failure) if failure is not None else b""
        await send({"type": "http.response.body", "body": tail, "more_body": False})


async def _pump(response: httpx.Response, send: Send) -> None:
    async for chunk in response.aiter_raw():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _lost(child: ChildModel, exc: httpx.HTTPError) -> ServiceUnavailableError:
    """The error a client gets when the child's answer broke off: the child's own reason once it has exited."""
    reason = await asyncio.to_thread(child.wait_exit, 5.0)
    if reason is None:
        reason = f"the connection to its process broke ({type(exc).__name__})"
    log.error("model %s: a forwarded request failed: %s", child.config.name, reason)
    return ServiceUnavailableError(f"model {child.config.name!r} stopped while answering: {reason}",
                                   code="model_process_exited", retry_after=5)


def _error_event(endpoint: Endpoint, exc: ServiceUnavailableError) -> bytes:
    """The last event of a stream that broke off, in the route's own shape."""
    if endpoint.dialect == "anthropic":
        return b"event: error\ndata: " + _json(answer_for(exc, "messages", "anthropic").body) + b"\n\n"
    error = answer_for(exc).body
    if endpoint.name == "create_response":
        inner = error["error"]  # as the Responses stream's own `error` event (openai/responses.py failure())
        return b"event: error\ndata: " + _json({"type": "error", "code": inner["code"], "message": inner["message"],
                                                "param": inner["param"]}) + b"\n\n"
    return b"data: " + _json(error) + b"\n\n"


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _keep_alive(data: dict[str, Any]) -> float | None:
    """The request's `keep_alive` for the parent's residency (the child refuses an invalid one with a 400)."""
    if "keep_alive" not in data:
        return None
    try:
        return KeepAlive.model_validate({"keep_alive": data["keep_alive"]}).keep_alive
    except ValidationError:
        return None
