"""The route table: every endpoint once, with what auth, limits and the access log need to know of it.

Auth, the concurrency limiter and the request log all ask `match()`; the app mounts the same
table, so a new route cannot silently disagree between them.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, compile_path

from ..errors import NotFoundError

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
    slash: bool = False  # also answers with a trailing slash (a base URL, as typed into a browser)

    def paths(self) -> list[str]:
        if self.unprefixed and self.path.startswith("/v1/"):
            return [self.path, self.path[len("/v1"):]]
        return [self.path, self.path + "/"] if self.slash else [self.path]


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/health", "health", Access.PUBLIC, quiet=True),
    Endpoint("GET", "/metrics", "metrics", Access.METRICS, quiet=True),
    # The models and their load errors, as /v1/models lists them: the same access (issue #28).
    Endpoint("GET", "/status", "status", Access.USER, quiet=True),
    Endpoint("GET", "/openapi.json", "openapi", Access.PUBLIC),
    # The API's base URL, as clients are given it: an index, public as /openapi.json (it tells no more than that).
    Endpoint("GET", "/v1", "api_index", Access.PUBLIC, slash=True),
    Endpoint("GET", "/v1/models", "list_models"),
    Endpoint("GET", "/v1/models/{model_id:path}", "get_model"),
    # OpenAI's own delete: a fine-tuned `ft:` model, by the key whose job made it (openai/fine_tuning.py); any other
    # model is a pulled one, forgotten and its files removed (`nomoat rm` through a server), with the admin key alone.
    Endpoint("DELETE", "/v1/models/{model_id:path}", "remove_model"),
    Endpoint("POST", "/v1/chat/completions", "chat", generates=True),
    Endpoint("POST", "/v1/completions", "completions", generates=True),
    Endpoint("POST", "/v1/embeddings", "embeddings", generates=True),
    # Jina's and Cohere's rerank (llama.cpp's and vLLM's servers answer it), /rerank too; Cohere's v2 path; vLLM's score.
    Endpoint("POST", "/v1/rerank", "rerank", generates=True),
    Endpoint("POST", "/v2/rerank", "rerank", generates=True),
    Endpoint("POST", "/v1/score", "score", generates=True),
    Endpoint("POST", "/v1/responses", "create_response", generates=True),
    # Before /v1/responses/{response_id}, whose pattern would take "input_tokens" for an id.
    Endpoint("POST", "/v1/responses/input_tokens", "count_response_tokens"),
    Endpoint("GET", "/v1/responses/{response_id}/input_items", "list_response_input_items"),
    Endpoint("GET", "/v1/responses/{response_id}", "get_response"),
    Endpoint("DELETE", "/v1/responses/{response_id}", "delete_response"),
    # OpenAI's Files API (#32): uploads kept under the state dir, each its key's (openai/files.py).
    Endpoint("POST", "/v1/files", "create_file"),
    Endpoint("GET", "/v1/files", "list_files"),
    Endpoint("GET", "/v1/files/{file_id}", "get_file"),
    Endpoint("GET", "/v1/files/{file_id}/content", "file_content"),
    Endpoint("DELETE", "/v1/files/{file_id}", "delete_file"),
    # OpenAI's fine-tuning jobs (#32): a LoRA trained in a child process, each job its key's (openai/fine_tuning.py).
    Endpoint("POST", "/v1/fine_tuning/jobs", "create_fine_tuning_job"),
    Endpoint("GET", "/v1/fine_tuning/jobs", "list_fine_tuning_jobs"),
    Endpoint("GET", "/v1/fine_tuning/jobs/{job_id}", "get_fine_tuning_job"),
    Endpoint("POST", "/v1/fine_tuning/jobs/{job_id}/cancel", "cancel_fine_tuning_job"),
    Endpoint("POST", "/v1/fine_tuning/jobs/{job_id}/pause", "pause_fine_tuning_job"),
    Endpoint("POST", "/v1/fine_tuning/jobs/{job_id}/resume", "resume_fine_tuning_job"),
    Endpoint("GET", "/v1/fine_tuning/jobs/{job_id}/events", "list_fine_tuning_events"),
    Endpoint("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints", "list_fine_tuning_checkpoints"),
    Endpoint("POST", "/v1/messages", "messages", generates=True, dialect="anthropic"),
    Endpoint("POST", "/v1/messages/count_tokens", "count_tokens", dialect="anthropic"),
    Endpoint("POST", "/v1/tokenize", "tokenize"),
    Endpoint("POST", "/v1/detokenize", "detokenize"),
    Endpoint("POST", "/v1/apply-template", "apply_template"),
    Endpoint("GET", "/v1/adapters", "list_adapters"),
    Endpoint("POST", "/v1/adapters", "load_adapter", Access.ADMIN),
    Endpoint("DELETE", "/v1/adapters/{name:path}", "unload_adapter", Access.ADMIN),
    Endpoint("POST", "/admin/reload", "reload", Access.ADMIN),
    # Each model the server serves, with its source, files' size and path (`nomoat ls` through a server).
    Endpoint("GET", "/admin/store", "list_store", Access.ADMIN),
    Endpoint("POST", "/models/load", "load_model", Access.ADMIN),
    Endpoint("POST", "/models/unload", "unload_model", Access.ADMIN),
    # Download from the Hugging Face Hub into the server's own cache, progress as SSE (`nomoat pull`, #31).
    Endpoint("POST", "/models/pull", "pull_model", Access.ADMIN),
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
    """The endpoint an unknown path lies deepest below (/v1/messages/batches: /v1/messages, not /v1), for its
    404's dialect."""
    below = [(len(template), endpoint) for _, template, endpoint in _COMPILED
             if path.startswith(template.rstrip("/") + "/")]
    return max(below, key=lambda b: b[0])[1] if below else None


class RouteWiringError(RuntimeError):
    """The app's handlers and the route table disagree: a bug, found when the app is built, not at a request."""


def build_routes(handlers: Mapping[str, Handler], off: Collection[str] = ()) -> list[Route]:
    """Starlette routes for every endpoint, each served by the handler of its name.

    `off` names the endpoints the configuration turns off (the web page, /admin/reload without a reloader):
    those answer a 404 saying so (unmounted, a path another route's pattern also matches, as POST /models/pull
    and GET /models/{id}, would answer 405). A table name with neither a handler nor a place in `off`, or a handler or
    `off` name the table does not hold, raises: a route renamed in one place must not silently vanish.
    """
    names = {endpoint.name for endpoint in ENDPOINTS}
    unknown = sorted((set(handlers) | set(off)) - names)
    if unknown:
        raise RouteWiringError(f"no route in the table is named {', '.join(unknown)}")
    both = sorted(set(handlers) & set(off))
    if both:
        raise RouteWiringError(f"routes both served and turned off: {', '.join(both)}")
    missing = [f"{e.name} ({e.method} {e.path})" for e in ENDPOINTS if e.name not in handlers and e.name not in off]
    if missing:
        raise RouteWiringError(f"routes without a handler: {', '.join(missing)}")
    routes = []
    for endpoint in ENDPOINTS:
        handler = _turned_off(endpoint) if endpoint.name in off else handlers[endpoint.name]
        for path in endpoint.paths():
            routes.append(Route(path, handler, methods=[endpoint.method], name=f"{endpoint.name}:{path}"))
    return routes


def _turned_off(endpoint: Endpoint) -> Handler:
    async def off(request: Request) -> Response:
        raise NotFoundError(f"{endpoint.method} {endpoint.path} is turned off in this server's configuration")
    return off
