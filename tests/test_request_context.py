"""One request's RequestContext (server/wire/context.py): the body received and parsed once, the client's
disconnect raced in one place, and the models a request resolved held until its last byte. Fast: no model."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.types import Message
from support.inprocess import MODEL, FakeServer

from nomoat.wire.body import ClientDisconnected, race_disconnect, read_json, take_body
from nomoat.wire.context import RequestContext


def _scope(path: str = "/v1/chat/completions", body: bytes = b"") -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "scheme": "http", "http_version": "1.1", "server": ("test", 80), "client": ("c", 1),
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}


def test_the_body_is_received_once_and_parsed_once() -> None:
    chunks: list[Message] = [{"type": "http.request", "body": b'{"a":', "more_body": True},
                             {"type": "http.request", "body": b"1}", "more_body": False}]
    asked: list[str] = []

    async def receive() -> Message:
        message = chunks.pop(0) if chunks else {"type": "http.disconnect"}
        asked.append(message["type"])
        return message

    async def scenario() -> None:
        scope = _scope(body=b'{"a":1}')
        assert await take_body(scope, receive, 100, 5) == b'{"a":1}'
        request = Request(scope, receive)
        first = await read_json(request, 100, 5)
        assert first == {"a": 1} and await read_json(request, 100, 5) is first
        assert RequestContext.of(request) is RequestContext.of(scope)

    asyncio.run(scenario())
    assert asked == ["http.request", "http.request"], "nothing after the body was received again"


def test_a_disconnect_cancels_the_raced_work_once_it_has_wound_down() -> None:
    wound_down = asyncio.Event()

    async def work() -> str:
        try:
            await asyncio.Event().wait()
        finally:
            wound_down.set()
        return "never"

    async def gone() -> Message:
        return {"type": "http.disconnect"}

    async def connected() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def quick() -> str:
        return "done"

    async def scenario() -> None:
        with pytest.raises(ClientDisconnected):
            await race_disconnect(gone, work())
        assert wound_down.is_set()
        assert await race_disconnect(connected, quick()) == "done"

    asyncio.run(scenario())


async def _card(srv: FakeServer, model: str) -> dict[str, Any]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(srv.client.app), base_url="http://test") as client:
        cards = (await client.get("/models")).json()["data"]
    return next(card for card in cards if card["id"] == model)


def test_a_resolved_model_stays_busy_to_the_streams_last_byte_and_is_idle_right_after(fake: FakeServer) -> None:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                       "stream": True}).encode()
    at_last_byte: list[tuple[bool, int]] = []
    received = False

    async def receive() -> Message:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            at_last_byte.append(((await _card(fake, MODEL))["busy"], fake.engine.outstanding))

    async def scenario() -> bool:
        await fake.client.app(_scope(body=body), receive, send)
        busy: bool = (await _card(fake, MODEL))["busy"]
        return busy

    assert fake.client.portal is not None
    assert fake.client.portal.call(scenario) is False, "idle once the last byte is sent"
    assert at_last_byte == [(True, 0)], "the generation is over, the lease still held while the last byte goes"


def test_a_request_that_fails_after_resolving_releases_its_model(fake: FakeServer) -> None:
    fake.engine.capacity = 0  # every submit is refused (Busy: 429) after the model was resolved
    r = fake.client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429, r.text
    assert fake.client.get("/models").json()["data"][0]["busy"] is False


def test_loading_a_model_through_the_api_leaves_it_idle(fake: FakeServer) -> None:
    r = fake.client.post("/models/load", json={"model": MODEL})
    assert r.status_code == 200, r.text
    card = fake.client.get("/models").json()["data"][0]
    assert card["status"] == "loaded" and card["busy"] is False
