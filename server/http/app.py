"""The ASGI app: routes, error handlers, request logging and metrics, built by a function from its parts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator, Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..openai.adapters import adapter_routes
from ..openai.models import model_routes
from ..adapters.watch import AdapterWatcher
from .auth import Authenticator, AuthMiddleware, KeyRing
from ..openai.embeddings import EmbeddingService
from ..errors import ConfigError, InvalidConfigError
from .limits import ConcurrencyLimiter, ConcurrencyMiddleware, RequestLimits
from ..metrics import Metrics
from .errors import ErrorBoundary, answer_for, error_body
from ..registry import ModelRegistry, ReloadResult
from .requestlog import RequestLogMiddleware
from ..core.generate import ClientDisconnected, CompletionService
from ..settings import Settings

log = logging.getLogger("nomoat.http")

Reloader = Callable[[], Awaitable[ReloadResult]]


def build_app(
    settings: Settings,
    registry: ModelRegistry,
    metrics: Metrics | None = None,
    *,
    auth: Authenticator | None = None,
    reload: Reloader | None = None,
) -> Starlette:
    """The whole HTTP surface. The lifespan loads the registry's models off the event loop.

    `reload` is what SIGHUP does (the Daemon's); without it POST /admin/reload answers 404.
    """
    metrics = metrics or Metrics()
    auth = auth or Authenticator(KeyRing.from_settings(settings), metrics_require_key=settings.metrics_require_key)
    metrics.watch_engines(registry.engines)
    limits = RequestLimits.from_settings(settings)
    service = CompletionService(registry, metrics, limits)
    embeddings = EmbeddingService(registry, metrics, limits)
    limiter = ConcurrencyLimiter(settings.max_concurrent_streams, settings.max_streams_per_key)

    async def health(request: Request) -> Response:
        if not registry.ready:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
        return JSONResponse({"status": "ok"})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def admin_reload(request: Request) -> Response:
        try:
            result = await reload()  # type: ignore[misc]
        except ConfigError as exc:
            raise InvalidConfigError(f"the configuration was not applied; the previous one still serves: {exc}") from None
        return JSONResponse({"object": "reload", "loaded": result.loaded, "removed": result.removed,
                             "unchanged": result.unchanged})

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    routes += model_routes(registry)
    routes += adapter_routes(registry, settings.adapter_dirs, settings.max_body_bytes)
    if reload is not None:
        routes.append(Route("/admin/reload", admin_reload, methods=["POST"]))
    for prefix in ("/v1", ""):  # llama.cpp's server answers both; some clients drop the /v1
        routes += [
            Route(f"{prefix}/chat/completions", service.chat, methods=["POST"]),
            Route(f"{prefix}/completions", service.completions, methods=["POST"]),
            Route(f"{prefix}/embeddings", embeddings.embeddings, methods=["POST"]),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not registry.ready:
            await asyncio.to_thread(registry.load)
        log.info("serving %s on http://%s:%d/v1", ", ".join(registry.engines()), settings.host, settings.port)
        watcher = AdapterWatcher(registry, settings.adapter_dirs) if settings.watch_adapters else None
        if watcher is not None:
            await watcher.start()
        try:
            yield
        finally:
            if watcher is not None:
                await watcher.stop()
            await registry.aclose()

    # Outermost first. CORS sits above auth so preflights need no key and errors carry its
    # headers; errors raised below ErrorBoundary are rendered there alone, and logged above it.
    middleware = [Middleware(RequestLogMiddleware, metrics=metrics)]
    if settings.cors_origin_list:
        middleware.append(Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["*"],  # Authorization, Content-Type, the SDKs' X-Stainless-* headers
            expose_headers=["x-request-id", "retry-after", "x-nomoat-adapters"],
            max_age=600,
        ))
    middleware += [
        Middleware(ErrorBoundary),
        Middleware(AuthMiddleware, auth=auth),
        Middleware(ConcurrencyMiddleware, limiter=limiter),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={
            HTTPException: _http_error,
            ClientDisconnected: _client_gone,
            Exception: _unexpected_error,
        },
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        body = error_body(f"no route {request.method} {request.url.path}", "invalid_request_error", "not_found")
    elif exc.status_code == 405:
        body = error_body(f"method {request.method} is not allowed on {request.url.path}",
                          "invalid_request_error", "method_not_allowed")
    else:
        body = error_body(str(exc.detail), "invalid_request_error")
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    answer = answer_for(exc)
    return JSONResponse(answer.body, status_code=answer.status)
