"""The error hierarchy: every failure a client can see, with its HTTP status and OpenAI fields."""

from __future__ import annotations

from typing import Any


class NomoatError(Exception):
    """Base of every error that becomes an OpenAI-shaped JSON body.

    Raised where the cause is known; turned into `{"error": {...}}` in exactly one
    exception handler (server/app.py).
    """

    status_code: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(NomoatError):
    """The request is malformed or names an invalid value (400)."""

    status_code = 400
    type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


class AuthenticationError(NomoatError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(NomoatError):
    status_code = 403
    type = "permission_error"
    code = "permission_denied"


class NotFoundError(NomoatError):
    status_code = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class MethodNotAllowedError(NomoatError):
    status_code = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class ConflictError(NomoatError):
    status_code = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLargeError(NomoatError):
    status_code = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimitError(NomoatError):
    """The server is at capacity; the client should retry after `retry_after` seconds."""

    status_code = 429
    type = "rate_limit_error"
    code = "server_busy"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs: Any) -> None:
        headers = {"Retry-After": str(retry_after)}
        super().__init__(message, headers=headers, **kwargs)


class ServiceUnavailableError(NomoatError):
    status_code = 503
    type = "server_error"
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)}, **kwargs)


class EngineError(NomoatError):
    """llama.cpp failed while generating (500)."""

    status_code = 500
    type = "server_error"
    code = "engine_error"


class InvalidConfigError(NomoatError):
    """An admin asked for a reload and the configuration on disk is invalid; the old one still serves."""

    status_code = 422
    type = "invalid_request_error"
    code = "invalid_config"


class ConfigError(Exception):
    """A configuration file or setting is invalid; raised before anything starts."""


class AdapterError(InvalidRequestError):
    """An adapter file cannot be served on its base: wrong format, shape or architecture."""

    code = "invalid_adapter"
