"""One HTTP request's own record (RequestContext): what the middleware and handlers learn of it and tell each
other (caller, model, tokens, the body), typed, kept in the ASGI scope under one key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.requests import HTTPConnection
from starlette.types import Scope

# Under this key in the ASGI scope; starlette's untyped `scope["state"]` is left to starlette.
_KEY = "nomoat.context"


class Releasable(Protocol):
    """What a request holds until its last byte (a model's lease): released once, however often asked."""

    def release(self) -> None: ...


@dataclass(eq=False)
class RequestContext:
    """Created by the first middleware that asks (`of`), read and written by every later step; the middleware
    that owns it (http/requestlog.py) releases what it holds once the response's last byte is sent."""

    request_id: str = ""
    key_id: str | None = None  # the caller's API key id; None when auth is off (http/auth.py)
    admin: bool = False
    prompt_field: str = "prompt"  # where this protocol's prompt lives, the `param` of a prompt's error
    model: str = ""  # as the client named it ("" until a model is resolved)
    base_model: str = ""  # the served model: the metrics label
    adapter: str = ""  # the adapter names, comma-separated ("" for the base model)
    tokens: tuple[int, int] | None = None  # prompt and completion tokens, once counted
    ttft: float | None = None  # seconds to the first token, once a stream has run to its end
    body: bytes | None = None  # received once, bounded (wire/body.py), by whichever step needed it first
    parsed: Any = None  # `body` as JSON, once parsed (wire/body.py's read_json)
    is_parsed: bool = False
    _held: list[Releasable] = field(default_factory=list)

    @classmethod
    def of(cls, where: Scope | HTTPConnection) -> RequestContext:
        """The request's context, created on the first call."""
        scope = where.scope if isinstance(where, HTTPConnection) else where
        context = scope.get(_KEY)
        if context is None:
            context = scope[_KEY] = cls()
        assert isinstance(context, RequestContext)
        return context

    def hold(self, lease: Releasable) -> None:
        """Keep `lease` until the request ends."""
        self._held.append(lease)

    def release(self) -> None:
        """Release everything held: the response has been sent, or the request failed."""
        held, self._held = self._held, []
        for lease in held:
            lease.release()
