"""Middleware: each request's key checked against the route's access, its id and role recorded for the handlers."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from ..wire.auth import Authenticator
from ..wire.context import RequestContext


class AuthMiddleware:
    """Pure ASGI: refuses requests whose key may not use the route, and records on the RequestContext the key's
    id (`key_id`) and whether it is an admin key (`admin`): what a stored response's owner check reads.

    `trust_forwarded_caller` is for the child process of a split model (server/child.py) alone: its one key is
    the parent's, so the parent names the key its client used in CALLER_HEADER, and that is the caller here.
    """

    def __init__(self, app: ASGIApp, auth: Authenticator, trust_forwarded_caller: bool = False) -> None:
        self.app = app
        self.auth = auth
        self.trust_forwarded_caller = trust_forwarded_caller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            authorization, api_key = _header(scope, b"authorization"), _header(scope, b"x-api-key")
            found = self.auth.check(scope["method"], scope["path"], authorization, api_key)
            if found is not None:
                context = RequestContext.of(scope)
                forwarded = _header(scope, CALLER_HEADER.encode()) if self.trust_forwarded_caller else None
                if forwarded is not None:
                    key, _, role = forwarded.partition(";")
                    context.key_id, context.admin = key or None, role == "admin"
                else:
                    context.key_id, context.admin = found, self.auth.is_admin_key(authorization, api_key)
        await self.app(scope, receive, send)


# What the parent of a split model tells its child about the caller: "KEY_ID" or "KEY_ID;admin" ("" where the
# parent needs no key). The parent drops it from what clients send; the child trusts it only from its parent.
CALLER_HEADER = "x-nomoat-caller"


def caller_header(context: RequestContext) -> str:
    """CALLER_HEADER's value for the caller AuthMiddleware recorded on `context`."""
    return (context.key_id or "") + (";admin" if context.admin else "")


def _header(scope: Scope, name: bytes) -> str | None:
    return next((v.decode("utf-8", "replace") for k, v in scope["headers"] if k == name), None)
