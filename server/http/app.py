"""The ASGI app, built by a function from its parts: the route table's handlers, middleware, error handlers.

The app serves; it owns no lifecycle. The Daemon (server/daemon.py) loads the registry before
the app starts and closes it after the app stops.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..anthropic.messages import Messages
from ..core.generate import GenerationCore
from ..errors import ConfigError, InvalidConfigError
from ..files.store import FileStore
from ..metrics import Metrics
from ..openai.adapters import adapter_handlers
from ..openai.chat import ChatCompletions
from ..openai.completions import Completions
from ..openai.embeddings import Embeddings
from ..openai.files import file_handlers
from ..openai.fine_tuning import fine_tuning_handlers, model_delete_handler, tuner_for
from ..openai.index import api_index_handler
from ..openai.models import model_handlers
from ..openai.rerank import Rerank
from ..openai.response_store import ResponseStore
from ..openai.responses import Responses
from ..openai.tokenize import TokenizerRoutes
from ..registry import ModelRegistry, ReloadResult
from ..settings import Settings
from ..tuning.tuner import Tuner
from ..wire.auth import Authenticator, KeyRing
from ..wire.body import ClientDisconnected
from ..wire.errors import answer_for, dialect_body
from ..wire.limits import RequestLimits
from ..wire.routes import Handler, build_routes, match
from .auth import AuthMiddleware
from .boundary import ErrorBoundary
from .forward import ForwardMiddleware
from .lifecycle import lifecycle_handlers
from .limits import ConcurrencyLimiter, ConcurrencyMiddleware
from .openapi import openapi
from .pull import store_handlers
from .requestlog import RequestLogMiddleware
from .status import ServerStatus
from .ui import StaticPage

log = logging.getLogger(__name__)

Reloader = Callable[[], Awaitable[ReloadResult]]


def build_app(
    settings: Settings,
    registry: ModelRegistry,
    metrics: Metrics | None = None,
    *,
    auth: Authenticator | None = None,
    reload: Reloader | None = None,
    files: FileStore | None = None,
    tuner: Tuner | None = None,
) -> Starlette:
    """The whole HTTP surface over a registry someone else loads and closes.

    `reload` is what SIGHUP does (the Daemon's); without it POST /admin/reload answers 404.
    `files` is the Files API's store (by default under the settings' state dir). `tuner` runs the fine-tuning
    jobs (by default one over the registry and the file store; its owner starts and closes it: the Daemon).
    """
    metrics = metrics or Metrics()
    auth = auth or Authenticator(KeyRing.from_settings(settings), metrics_require_key=settings.metrics_require_key)
    metrics.watch_engines(registry.engines, registry.prompt_disk_stats)
    limits = RequestLimits.from_settings(settings)
    files = files or FileStore.from_settings(settings)
    tuner = tuner or tuner_for(settings, registry, files)
    core = GenerationCore(registry, metrics, limits)
    responses = Responses(core, ResponseStore.from_settings(settings))
    limiter = ConcurrencyLimiter(settings.max_concurrent_streams, settings.max_streams_per_key)
    tokenizer = TokenizerRoutes(core)

    async def health(request: Request) -> Response:
        if not registry.ready:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
        return JSONResponse({"status": "ok"})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def admin_reload(request: Request) -> Response:
        assert reload is not None
        try:
            result = await reload()
        except ConfigError as exc:
            raise InvalidConfigError(f"the configuration was not applied; the previous one still serves: {exc}") from None
        return JSONResponse({"object": "reload", "loaded": result.loaded, "removed": result.removed,
                             "unchanged": result.unchanged, "reconfigured": result.reconfigured})

    rerank = Rerank(core, settings.max_rerank_documents)
    handlers: dict[str, Handler] = {
        "health": health,
        "metrics": metrics_endpoint,
        "openapi": openapi,
        "api_index": api_index_handler(page=settings.ui),
        **model_handlers(registry, auth),
        "chat": ChatCompletions(core).handle,
        "completions": Completions(core).handle,
        "embeddings": Embeddings(core).handle,
        "rerank": rerank.rerank, "score": rerank.score,
        **responses.handlers(),
        "messages": (messages := Messages(core)).handle,
        "count_tokens": messages.count_tokens,
        "tokenize": tokenizer.tokenize,
        "detokenize": tokenizer.detokenize,
        "apply_template": tokenizer.apply_template,
        **adapter_handlers(registry, settings.adapter_dirs, settings.max_body_bytes, settings.body_timeout_seconds),
        **file_handlers(files, settings.body_timeout_seconds),
        **fine_tuning_handlers(tuner, settings.max_body_bytes, settings.body_timeout_seconds),
    }
    handlers.update(lifecycle_handlers(registry, settings.max_body_bytes, settings.body_timeout_seconds))
    handlers["status"] = ServerStatus(registry, metrics, auth, runtime_adapters=bool(settings.adapter_dirs)).handle
    # Routes the configuration turns off answer 404; any other route without a handler fails the build.
    off: list[str] = []
    if reload is not None:
        handlers["reload"] = admin_reload
        handlers.update(store_handlers(registry, settings, reload))  # a pull or removal ends with a reload
    else:
        off += ["reload", "pull_model", "list_store"]
    # An `ft:` model is deleted by its job's key; any other, a pulled one, only where pulls are served.
    handlers["remove_model"] = model_delete_handler(tuner, auth, handlers.get("remove_model"))
    if settings.ui:
        handlers.update(StaticPage().handlers())
    else:
        off += ["ui_index", "ui_file"]

    # Outermost first. The request log owns each request's RequestContext: it releases the models the
    # request resolved once the last byte is sent. CORS sits above auth so preflights need no key and errors
    # carry its headers; errors raised below ErrorBoundary are rendered there alone, and logged above it.
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
        Middleware(AuthMiddleware, auth=auth, trust_forwarded_caller=settings.rpc_in_process),
        Middleware(ConcurrencyMiddleware, limiter=limiter, limits=limits),
        Middleware(ForwardMiddleware, registry=registry, limits=limits),  # rpc models' requests, to their process
    ]
    return Starlette(
        routes=build_routes(handlers, off),
        middleware=middleware,
        exception_handlers={
            HTTPException: _http_error,
            ClientDisconnected: _client_gone,
            Exception: _unexpected_error,
        },
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status, dialect = exc.status_code, match(request.method, request.url.path).dialect
    if status == 404:
        body = dialect_body(dialect, status, f"no route {request.method} {request.url.path}", "invalid_request_error",
                            "not_found")
    elif status == 405:
        body = dialect_body(dialect, status, f"method {request.method} is not allowed on {request.url.path}",
                            "invalid_request_error", "method_not_allowed")
    else:
        body = dialect_body(dialect, status, str(exc.detail), "invalid_request_error")
    return JSONResponse(body, status_code=status, headers=exc.headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    answer = answer_for(exc, dialect=match(request.method, request.url.path).dialect)
    return JSONResponse(answer.body, status_code=answer.status)
