"""Concurrent generations, globally and per key: the limiter and the middleware that holds its slots."""

from __future__ import annotations

import logging
from collections import Counter

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import RateLimitError
from ..wire.body import take_body
from ..wire.context import RequestContext
from ..wire.limits import RequestLimits
from ..wire.routes import match

log = logging.getLogger(__name__)


class ConcurrencyLimiter:
    """Counts generation requests in flight, in total and per caller; refuses past either limit (429).

    Touched only on the event loop, so plain counters suffice.
    """

    def __init__(self, total: int, per_key: int) -> None:
        self.total = total
        self.per_key = per_key
        self.running = 0
        self._by_key: Counter[str] = Counter()

    def acquire(self, key: str) -> None:
        if self.per_key and self._by_key[key] >= self.per_key:
            raise RateLimitError(
                f"this API key already has {self.per_key} generation requests running "
                "(max_streams_per_key); retry when one finishes", retry_after=1, code="rate_limit_exceeded",
            )
        if self.total and self.running >= self.total:
            raise RateLimitError(
                f"the server is running its limit of {self.total} concurrent generation requests "
                "(max_concurrent_streams); retry shortly", retry_after=1,
            )
        self.running += 1
        self._by_key[key] += 1

    def release(self, key: str) -> None:
        self.running -= 1
        self._by_key[key] -= 1
        if self._by_key[key] <= 0:
            del self._by_key[key]


class ConcurrencyMiddleware:
    """Pure ASGI: holds a slot for each generation request from its body's last byte to the answer's
    (streams too). The body is received first, bounded in size and time, so a slow sender holds no slot."""

    def __init__(self, app: ASGIApp, limiter: ConcurrencyLimiter, limits: RequestLimits) -> None:
        self.app = app
        self.limiter = limiter
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = match(scope["method"], scope["path"]).endpoint if scope["type"] == "http" else None
        if endpoint is None or not endpoint.generates:
            await self.app(scope, receive, send)
            return
        await take_body(scope, receive, self.limits.max_body_bytes, self.limits.body_timeout)
        key = caller(scope)
        self.limiter.acquire(key)
        try:
            await self.app(scope, receive, send)
        finally:
            self.limiter.release(key)


def caller(scope: Scope) -> str:
    """Who a limit applies to: the API key's id when auth is on, else the client address."""
    key_id = RequestContext.of(scope).key_id
    if key_id:
        return key_id
    client = scope.get("client")
    return f"client-{client[0]}" if client else "client-unknown"
