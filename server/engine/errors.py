"""What the engine raises, or ends a generation with: domain errors that know nothing of HTTP.

The HTTP layer maps each class to a status code and an error body in one place (server/wire/errors.py).
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every engine error; also what a failed llama.cpp call raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Busy(EngineError):
    """The model's queue is full; a retry after `retry_after` seconds may be admitted."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(EngineError):
    """The engine is closing: nothing new is admitted, and what still runs is ended."""

    def __init__(self, message: str = "the server is shutting down") -> None:
        super().__init__(message)


class InvalidInput(EngineError):
    """The request's input cannot be evaluated: an empty prompt, a token outside the vocabulary,
    a grammar llama.cpp refuses, messages the chat template refuses.

    `subject` names what was wrong in the engine's own terms: "prompt", "grammar" or "input[3]"
    (one of several embeddings inputs); the wire protocol turns it into its field name.
    """

    def __init__(self, message: str, *, subject: str = "prompt") -> None:
        super().__init__(message)
        self.subject = subject


class PromptTooLong(InvalidInput):
    """The prompt leaves no room in the context, or exceeds the configured prompt limit."""


class AdapterUnloaded(EngineError):
    """The request names an adapter that was unloaded after the request resolved it."""

    def __init__(self, name: str) -> None:
        super().__init__(f"adapter {name!r} was unloaded")
        self.name = name


class AdapterRejected(EngineError):
    """llama.cpp refused an adapter file for this model."""


class ModelFileError(EngineError):
    """A model file (or a base model's metadata) cannot be loaded, or a context cannot be created for it."""


class TemplateError(EngineError):
    """A chat template is not valid Jinja."""
