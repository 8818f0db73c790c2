"""The one place an error becomes an HTTP answer: status code, error body and headers (the table; the
middleware that sends it is http/boundary.py).

Domain errors (server/errors.py) and the engine's (server/engine/errors.py) know nothing of
HTTP; the table below gives each class its status, OpenAI `type` and `code`. A route that speaks
Anthropic's dialect (wire/routes.py) gets the same status with Anthropic's body, its type read
off the status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..engine import errors as engine
from ..errors import (
    AuthenticationError,
    ConflictError,
    ContextLengthExceededError,
    InvalidConfigError,
    InvalidRequestError,
    ModelBusyError,
    ModelLoadError,
    ModelTooLargeError,
    NomoatError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ServiceUnavailableError,
    StoreUnavailableError,
    UnsupportedFeatureError,
)
from .routes import Dialect

log = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of decides.
_TABLE: list[tuple[type[BaseException], int, str, str | None]] = [
    (ContextLengthExceededError, 400, "invalid_request_error", "context_length_exceeded"),
    (ModelTooLargeError, 400, "invalid_request_error", "model_too_large"),
    (InvalidRequestError, 400, "invalid_request_error", None),
    (AuthenticationError, 401, "authentication_error", None),
    (PermissionDeniedError, 403, "permission_error", None),
    (NotFoundError, 404, "invalid_request_error", None),
    (RequestTimeoutError, 408, "invalid_request_error", None),
    (ConflictError, 409, "invalid_request_error", None),
    (PayloadTooLargeError, 413, "invalid_request_error", None),
    (InvalidConfigError, 422, "invalid_request_error", None),
    (RateLimitError, 429, "rate_limit_error", None),
    (ModelLoadError, 503, "server_error", "model_load_failed"),
    (ModelBusyError, 503, "server_error", "model_busy"),
    (StoreUnavailableError, 503, "server_error", "store_unavailable"),
    (ServiceUnavailableError, 503, "server_error", None),
    (engine.PromptTooLong, 400, "invalid_request_error", "context_length_exceeded"),
    (engine.InvalidInput, 400, "invalid_request_error", None),
    (engine.AdapterRejected, 400, "invalid_request_error", "invalid_adapter"),
    (engine.AdapterUnloaded, 404, "invalid_request_error", "model_not_found"),
    (engine.Busy, 429, "rate_limit_error", "server_busy"),
    (engine.ShuttingDown, 503, "server_error", "service_unavailable"),
    (engine.EngineError, 500, "server_error", "engine_error"),
    (NomoatError, 500, "server_error", None),
]
# Anthropic's error type for each status (docs.claude.com/en/api/errors); any other 4xx is an
# invalid_request_error, any other 5xx an api_error.
_ANTHROPIC_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
# Seconds a client should wait before retrying, where the error itself does not say.
_SHUTDOWN_RETRY_AFTER = 5


@dataclass(frozen=True)
class ErrorAnswer:
    """What a client receives for an error: status, body and headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def dialect_body(dialect: Dialect, status: int, message: str, type_: str, code: str | None = None,
                 param: str | None = None) -> dict[str, Any]:
    """An error body in a route's dialect; `type_`, `code` and `param` are OpenAI's."""
    if dialect == "openai":
        return error_body(message, type_, code, param)
    if param and param not in message:
        message = f"{param}: {message}"  # Anthropic's body has no param field: the message names it
    default = "api_error" if status >= 500 else "invalid_request_error"
    return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, default), "message": message}}


def answer_for(exc: BaseException, prompt_field: str = "prompt", dialect: Dialect = "openai") -> ErrorAnswer:
    """The answer for a domain or engine error; anything else is an internal error (500).

    `prompt_field` is the request field holding what the engine calls the prompt (`messages`
    for chat, `prompt` for completions, `input` for embeddings).
    """
    row = next((row for row in _TABLE if isinstance(exc, row[0])), None)
    if row is None:
        return ErrorAnswer(500, dialect_body(dialect, 500, "internal server error", "server_error", "internal_error"))
    _, status, type_, code = row
    if isinstance(exc, NomoatError):
        message, param, code = exc.message, exc.param, exc.code or code
        retry_after = exc.retry_after
    else:
        assert isinstance(exc, engine.EngineError)
        message, param, retry_after = exc.message, _engine_param(exc, prompt_field), None
        if isinstance(exc, engine.Busy):
            retry_after = exc.retry_after
        elif isinstance(exc, engine.ShuttingDown):
            retry_after = _SHUTDOWN_RETRY_AFTER
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    body = dialect_body(dialect, status, message, type_, code, param)
    if dialect == "anthropic" and isinstance(exc, UnsupportedFeatureError):
        body["error"]["details"] = {"error_code": code}  # what Anthropic's clients fall back on
    return ErrorAnswer(status, body, headers)


def _engine_param(exc: engine.EngineError, prompt_field: str) -> str | None:
    if isinstance(exc, engine.AdapterUnloaded):
        return "model"
    if isinstance(exc, engine.AdapterRejected):
        return "path"
    if not isinstance(exc, engine.InvalidInput):
        return None
    subject = exc.subject
    if subject == "prompt" or subject.startswith("input"):
        return prompt_field
    if subject == "grammar":
        return "response_format"
    return subject


def is_client_error(exc: BaseException) -> bool:
    """A domain or engine error, as opposed to a bug (anything else)."""
    return isinstance(exc, (NomoatError, engine.EngineError))
