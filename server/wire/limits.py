"""Request limits: the token and time bounds of one request (the concurrency limiter is http/limits.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidRequestError
from ..settings import Settings


@dataclass(frozen=True)
class ImageLimits:
    """What an image in a request may be (core/images.py applies them)."""

    allow_remote: bool = False
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 33_554_432
    remote_timeout: float = 10.0


@dataclass(frozen=True)
class RequestLimits:
    """What one completion request may ask for; built from Settings, applied by the serving code."""

    max_body_bytes: int
    body_timeout: float  # seconds to receive a body
    send_timeout: float  # seconds a stream waits on a client that stopped reading
    max_tokens: int
    timeout: float | None
    images: ImageLimits = ImageLimits()

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(
            max_body_bytes=settings.max_body_bytes,
            body_timeout=settings.body_timeout_seconds,
            send_timeout=settings.send_timeout_seconds,
            max_tokens=settings.max_tokens_limit,
            timeout=settings.request_timeout_seconds or None,
            images=ImageLimits(settings.allow_remote_images, settings.max_image_bytes, settings.max_image_pixels,
                               settings.remote_image_timeout_seconds),
        )

    def completion_tokens(self, asked: int | None, param: str, default: int | None = None) -> int:
        """The tokens to generate at most: what was asked, or the model's `default` (models.toml's max_tokens) or the
        limit when nothing was (400 past it; a default past it is capped).

        The engine lowers it further to what fits in the model's context after the prompt.
        """
        if asked is None:
            return self.max_tokens if default is None else min(default, self.max_tokens)
        if asked > self.max_tokens:
            raise InvalidRequestError(
                f"{param} is too large: {asked}. This server generates at most {self.max_tokens} "
                f"completion tokens per request (max_tokens_limit).",
                param=param, code="invalid_value",
            )
        return asked
