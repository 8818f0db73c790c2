"""Reading a request body (bounded in size and in time, received once, JSON that any later step can serialise
again), and racing work against the client going away."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Awaitable
from typing import Any, NoReturn, TypeVar

import numpy as np
from starlette.requests import Request
from starlette.types import Message, Receive, Scope

from ..errors import InvalidRequestError, PayloadTooLargeError, RequestTimeoutError
from .context import RequestContext

T = TypeVar("T")

# How deep arrays and objects may nest in a request body, and in a JSON string inside one that nomoat parses
# (tool-call arguments): one rule for every route. Real requests stay far below it (a JSON schema ten
# levels deep is about 25 levels of JSON); pydantic cannot serialise past 255 levels ("Maximum
# serialization depth exceeded": a 500 at 400 before this bound) and json.loads stops near 1000.
MAX_JSON_DEPTH = 64


class ClientDisconnected(Exception):
    """The client went away before its answer was ready; nobody reads a reply (logged as 499)."""


# json.loads accepts an escaped lone UTF-16 surrogate ("\ud800"), which no UTF-8 text can hold.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


async def receive_body(receive: Receive, limit: int, timeout: float) -> list[Message]:
    """Every message of a request body, received within `timeout` seconds and `limit` bytes."""
    messages: list[Message] = []

    async def gather() -> None:
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            messages.append(message)
            size += len(message.get("body", b""))
            if size > limit:
                raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
            if not message.get("more_body", False):
                return

    try:
        await asyncio.wait_for(gather(), timeout)
    except TimeoutError:
        raise _too_slow(timeout) from None
    return messages


async def take_body(scope: Scope, receive: Receive, limit: int, timeout: float) -> bytes:
    """The request's body, received from the client once and kept on its RequestContext: 413 past `limit`
    bytes, 408 when it takes longer than `timeout` seconds to arrive.

    The first step that needs the body takes it: the concurrency limiter before it grants a generation slot
    (a client that sends its body slowly holds nothing while it dawdles), else the forwarder, else the handler.
    Later steps read the kept bytes; what they `receive` next is the client going away.
    """
    context = RequestContext.of(scope)
    if context.body is None:
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(f"request body is {declared.decode()} bytes; the limit is {limit}")
        messages = await receive_body(receive, limit, timeout)
        context.body = b"".join(m.get("body", b"") for m in messages)
    return context.body


def _too_slow(timeout: float) -> RequestTimeoutError:
    return RequestTimeoutError(f"the request body did not arrive within {timeout:g} seconds (body_timeout_seconds)")


async def read_json(request: Request, limit: int, timeout: float) -> Any:
    """The body as JSON (`take_body`'s bounds; 400 when it is not JSON), parsed once and kept."""
    await take_body(request.scope, request.receive, limit, timeout)
    return kept_json(RequestContext.of(request))


def kept_json(context: RequestContext) -> Any:
    """The body `take_body` kept, as JSON (400 when it is not), parsed on the first call."""
    if not context.is_parsed:
        assert context.body is not None, "take_body first"
        context.parsed = parse_json(context.body)
        context.is_parsed = True
    return context.parsed


async def race_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """`work`'s result, unless the client disconnects first: then `work` is cancelled, and once it has
    wound down, ClientDisconnected is raised. Reads `receive` until the disconnect, so the body must have
    been taken already (`take_body`)."""
    task = asyncio.ensure_future(work)

    async def disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    gone = asyncio.ensure_future(disconnect())
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, gone, return_exceptions=True)
    if task.cancelled():
        raise ClientDisconnected
    return task.result()


def parse_json(body: bytes) -> Any:
    """The body as JSON under `bounded_loads`' rule, or a 400 saying why not."""
    try:
        # As json.loads decodes bytes; the text is then scanned for its nesting as parsed.
        return bounded_loads(body.decode(json.detect_encoding(body), "surrogatepass"), "the request body")
    except (ValueError, UnicodeDecodeError) as exc:
        # ValueError covers JSONDecodeError and Python's limit on integer digits (4300).
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None


def bounded_loads(text: str, what: str) -> Any:
    """json.loads, held to the rule for every JSON text a request brings (its body, and strings in it that are
    JSON themselves, such as tool-call arguments): JSON that every later step can serialise again. So no NaN
    or Infinity (json.loads takes them; no JSON writer may write them back), nothing nested deeper than
    MAX_JSON_DEPTH, no unpaired UTF-16 surrogate escape: a 400 naming `what`. ValueError when it is not JSON."""
    try:
        data = json.loads(text, parse_constant=lambda name: _non_finite(name, what),
                          parse_float=lambda number: _finite(number, what))
    except RecursionError:
        _too_deep(what)
    # Few brackets cannot nest deeply: most texts skip the scan.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and nesting_depth(text) > MAX_JSON_DEPTH:
        _too_deep(what)
    # Tokenizing a lone surrogate would fail deep in the engine as a 500.
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError(f"{what} is not valid JSON text: it holds an unpaired "
                                      "UTF-16 surrogate escape (\\ud800-\\udfff)") from None
    return data


# A JSON string, escapes included (the text parsed already: every string is closed).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN, _CLOSE = (ord("["), ord("{")), (ord("]"), ord("}"))


def nesting_depth(text: str) -> int:
    """How deep valid JSON `text` nests arrays and objects, read off the text (strings taken out, a running count
    of brackets), so that nothing recurses through the parsed value. Vectorised: an 8 MiB body of nested arrays
    takes about 0.1 s, against 1.5 s for json.loads."""
    codes = np.frombuffer(_STRING.sub("", text).encode("utf-8", "surrogatepass"), np.uint8)
    steps = np.isin(codes, _OPEN).astype(np.int8) - np.isin(codes, _CLOSE).astype(np.int8)
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0))


def _too_deep(what: str) -> NoReturn:
    raise InvalidRequestError(f"{what} nests JSON arrays and objects deeper than the limit of {MAX_JSON_DEPTH} levels") from None


def _non_finite(name: str, what: str) -> NoReturn:
    raise InvalidRequestError(f"{what} holds {name}, which is not a JSON number: send finite numbers only")


def _finite(number: str, what: str) -> float:
    value = float(number)
    if not math.isfinite(value):
        raise InvalidRequestError(f"{what} holds the number {number[:40]}, too large for a float "
                                  "(the largest is about 1.8e308)")
    return value
