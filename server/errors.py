"""The errors a request can meet above the engine: domain errors, raised where the cause is known.

None of them knows HTTP: server/wire/errors.py maps each class (and the engine's own errors,
server/engine/errors.py) to a status code and an OpenAI-shaped body, in one table.
"""

from __future__ import annotations

from typing import Any


class NomoatError(Exception):
    """Base of every error a client can see.

    `param` names the request field at fault, `code` refines the class's own code, and
    `retry_after` (seconds) tells a client when trying again may succeed.
    """

    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after


class InvalidRequestError(NomoatError):
    """The request is malformed or names an invalid value."""


class UnsupportedFeatureError(InvalidRequestError):
    """A request field this server does not implement, refused rather than ignored so that a client that can do
    without it falls back: Anthropic's clients read the `code` as `error.details.error_code`
    (`thread_unsupported_request`: resend the whole conversation)."""


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


class AdapterError(InvalidRequestError):
    """An adapter file cannot be served on its base: wrong format, shape or architecture."""

    code = "invalid_adapter"


class AuthenticationError(NomoatError):
    code = "invalid_api_key"


class PermissionDeniedError(NomoatError):
    code = "permission_denied"


class NotFoundError(NomoatError):
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class ConflictError(NomoatError):
    code = "conflict"


class RequestTimeoutError(NomoatError):
    """The client took too long to send its request."""

    code = "request_timeout"


class PayloadTooLargeError(NomoatError):
    code = "request_too_large"


class RateLimitError(NomoatError):
    """A limit on concurrent requests is reached; retry after `retry_after` seconds."""

    code = "server_busy"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs: object) -> None:
        super().__init__(message, retry_after=retry_after, **kwargs)  # type: ignore[arg-type]


class ServiceUnavailableError(NomoatError):
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs: object) -> None:
        super().__init__(message, retry_after=retry_after, **kwargs)  # type: ignore[arg-type]


class StoreUnavailableError(ServiceUnavailableError):
    """The Responses store cannot be used (locked by another process, corrupt, not a file, not writable)."""

    code = "store_unavailable"


class ModelLoadError(ServiceUnavailableError):
    """A model failed to load (its file or configuration); it stays failed until one of them changes."""

    code = "model_load_failed"

    def __init__(self, message: str, *, path: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.path = path  # the model's file, which the message may name: an admin key's to see alone


class ModelBusyError(ServiceUnavailableError):
    """A model cannot load until busy models finish: they hold the memory it needs."""

    code = "model_busy"


class ModelTooLargeError(InvalidRequestError):
    """A model does not fit the memory budget even with every other unpinned model unloaded."""

    code = "model_too_large"


class MaxLoadedModelsError(ModelTooLargeError):
    """max_loaded_models is reached by pinned models alone: no other model can ever load beside them."""

    code = "max_loaded_models_reached"


class InvalidConfigError(NomoatError):
    """An admin asked for a reload and the configuration on disk is invalid; the old one still serves."""

    code = "invalid_config"


class ConfigError(Exception):
    """A configuration file or setting is invalid; raised before anything starts, or by a reload."""
