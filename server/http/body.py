"""Reading a request body: bounded in size and in time, JSON that any later step can serialise again."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive

from ..errors import InvalidRequestError, PayloadTooLargeError, RequestTimeoutError


class ClientDisconnected(Exception):
    """The client went away before its answer was ready; nobody reads a reply (logged as 499)."""


# json.loads accepts an escaped lone UTF-16 surrogate ("\ud800"), which no UTF-8 text can hold.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def receive_body(receive: Receive, limit: int, timeout: float) -> list[Message]:
    """Every message of a request body, received within `timeout` seconds and `limit` bytes.

    The concurrency limiter calls this before it grants a generation slot, so a client that
    sends its body slowly holds nothing while it dawdles.
    """
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


def replaying(messages: list[Message], receive: Receive) -> Receive:
    """A receive that hands out `messages` first, then whatever the client sends next (a disconnect)."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


def _too_slow(timeout: float) -> RequestTimeoutError:
    return RequestTimeoutError(f"the request body did not arrive within {timeout:g} seconds (body_timeout_seconds)")


async def read_json(request: Request, limit: int, timeout: float) -> Any:
    """The body as JSON: 413 past `limit` bytes, 408 when it takes longer than `timeout` seconds
    to arrive (a slow sender must not hold a generation slot), 400 when it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body is {declared} bytes; the limit is {limit}")
    try:
        body = await asyncio.wait_for(_receive(request, limit), timeout)
    except TimeoutError:
        raise _too_slow(timeout) from None
    except ClientDisconnect:
        raise ClientDisconnected from None
    return parse_json(body)


async def _receive(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


def parse_json(body: bytes) -> Any:
    try:
        data = json.loads(body)
    except RecursionError:
        raise InvalidRequestError("the request body nests JSON arrays and objects too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        # ValueError covers JSONDecodeError and Python's limit on integer digits (4300).
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None
    # Tokenizing a lone surrogate would fail deep in the engine as a 500.
    if _SURROGATE_ESCAPE.search(body):
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError("the request body is not valid JSON text: it holds an unpaired "
                                      "UTF-16 surrogate escape (\\ud800-\\udfff)") from None
    return data
