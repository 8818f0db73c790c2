"""The route table: every endpoint once, with what auth, limits and the access log need to know of it.

Auth, the concurrency limiter and the request log all ask `match()`; the app mounts the same
table, so a new route cannot silently disagree between them.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, compile_path

Handler = Callable[[Request], Awaitable[Response]]
# The wire protocol a route's errors speak (wire/errors.py renders each): OpenAI's or Anthropic's shape.
Dialect = Literal["openai", "anthropic"]


class Access(Enum):
    PUBLIC = "public"  # no key ever (/health)
    METRICS = "metrics"  # a user key only when metrics_require_key is set
    USER = "user"  # a user (or admin) key when keys are configured
    ADMIN = "admin"  # the admin key


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # a starlette path template
    name: str  # the handler's name in the app's handler map
    access: Access = Access.USER
    generates: bool = False  # holds a generation slot from its start to its last byte (limits)
    quiet: bool = False  # scraped often: no access log line, no request metric
    unprefixed: bool = True  # also answers without its /v1 prefix, as llama.cpp's server does
    dialect: Dialect = "openai"  # the error shape of its answers, and of 404/405s on paths below it

    def paths(self) -> list[str]:
        if self.unprefixed and self.path.startswith("/v1/"):
            return [self.path, self.path[len("/v1"):]]
        return [self.path]


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/health", "health", Access.PUBLIC, quiet=True),
    Endpoint("GET", "/metrics", "metrics", Access.METRICS, quiet=True),
    # The models and their load errors, as /v1/models lists them: the same access (issue #28).
    Endpoint("GET", "/status", "status", Access.USER, quiet=True),
    Endpoint("GET", "/openapi.json", "openapi", Access.PUBLIC),
    Endpoint("GET", "/v1/models", "list_models"),
    Endpoint("GET", "/v1/models/{model_id:path}", "get_model"),
    Endpoint("POST", "/v1/chat/completions", "chat", generates=True),
    Endpoint("POST", "/v1/completions", "completions", generates=True),
    Endpoint("POST", "/v1/embeddings", "embeddings", generates=True),
    Endpoint("POST", "/v1/responses", "create_response", generates=True),
    # Before /v1/responses/{response_id}, whose pattern would take "input_tokens" for an id.
    Endpoint("POST", "/v1/responses/input_tokens", "count_response_tokens"),
    Endpoint("GET", "/v1/responses/{response_id}/input_items", "list_response_input_items"),
    Endpoint("GET", "/v1/responses/{response_id}", "get_response"),
    Endpoint("DELETE", "/v1/responses/{response_id}", "delete_response"),
    Endpoint("POST", "/v1/messages", "messages", generates=True, dialect="anthropic"),
    Endpoint("POST", "/v1/messages/count_tokens", "count_tokens", dialect="anthropic"),
    Endpoint("POST", "/v1/tokenize", "tokenize"),
    Endpoint("POST", "/v1/detokenize", "detokenize"),
    Endpoint("POST", "/v1/apply-template", "apply_template"),
    Endpoint("GET", "/v1/adapters", "list_adapters"),
    Endpoint("POST", "/v1/adapters", "load_adapter", Access.ADMIN),
    Endpoint("DELETE", "/v1/adapters/{name:path}", "unload_adapter", Access.ADMIN),
    Endpoint("POST", "/admin/reload", "reload", Access.ADMIN),
    Endpoint("POST", "/models/load", "load_model", Access.ADMIN),
    Endpoint("POST", "/models/unload", "unload_model", Access.ADMIN),
    # The web page (issue #17): public, as the API it calls keeps its own auth. Last, so that "/"
    # is never the endpoint an unknown path lies below when another one is (its errors' dialect).
    Endpoint("GET", "/", "ui_index", Access.PUBLIC),
    Endpoint("GET", "/ui/{path:path}", "ui_file", Access.PUBLIC),
)


@dataclass(frozen=True)
class Match:
    """What the table knows of a request: its endpoint, or None (unknown path or method)."""

    endpoint: Endpoint | None
    label: str  # the metrics label: the route's path template, or "other"
    admin_path: bool  # the path belongs to an admin endpoint (any method)
    dialect: Dialect = "openai"  # how errors on this path are rendered


def _compile() -> list[tuple[re.Pattern[str], str, Endpoint]]:
    compiled = []
    for endpoint in ENDPOINTS:
        for path in endpoint.paths():
            regex, template, _ = compile_path(path)
            compiled.append((regex, template, endpoint))
    return compiled


_COMPILED = _compile()


def match(method: str, path: str) -> Match:
    """The endpoint serving `method path`; HEAD matches GET as starlette does."""
    wanted = "GET" if method == "HEAD" else method
    label, admin_path, found, near = "other", False, None, None
    for regex, template, endpoint in _COMPILED:
        if regex.match(path) is None:
            continue
        admin_path = admin_path or endpoint.access is Access.ADMIN
        if label == "other":
            label, near = template, endpoint
        if endpoint.method == wanted and found is None:
            found, label = endpoint, template
    near = found or near or _below(path)
    return Match(found, label, admin_path, near.dialect if near is not None else "openai")


def _below(path: str) -> Endpoint | None:
    """The endpoint an unknown path lies below (/v1/messages/batches: /v1/messages), for its 404's dialect."""
    for _, template, endpoint in _COMPILED:
        if path.startswith(template.rstrip("/") + "/"):
            return endpoint
    return None


def build_routes(handlers: Mapping[str, Handler]) -> list[Route]:
    """Starlette routes for every endpoint whose handler is given (a missing one is not mounted)."""
    routes = []
    for endpoint in ENDPOINTS:
        handler = handlers.get(endpoint.name)
        if handler is None:
            continue
        for path in endpoint.paths():
            routes.append(Route(path, handler, methods=[endpoint.method], name=f"{endpoint.name}:{path}"))
    return routes
