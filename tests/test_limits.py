"""Every limit, hit: its OpenAI-shaped error first, then a normal request succeeds.

The limits live in the HTTP layer and the generation core, so most run in process over the fake engine
(`fake_factory`). A real server keeps what needs uvicorn's sockets (a body over the limit, senders
that trickle their bodies) and the engine's own count of prompt tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import ServerProcess, models_toml
from streams import long_completion, wait_for
from wire import finish_reasons, metric, read_stream

KEYS = ["limit-key-1", "limit-key-2"]
CHAT = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
LIMITS = {"max_tokens_limit": 8, "api_key": ",".join(KEYS)}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        models_toml(), tmp_path_factory.mktemp("limits"),
        "--max-body-bytes", "4096", "--max-tokens-limit", "8", "--max-prompt-tokens", "40",
        "--max-concurrent-streams", "3", "--max-streams-per-key", "2", "--body-timeout-seconds", "3",
        env={"NOMOAT_API_KEY": ",".join(KEYS)},
    ).wait_ready()
    yield proc
    proc.close()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _post(srv: Any, path: str, body: dict, key: str = KEYS[0]) -> httpx.Response:
    """POST to a real server, or to an in-process one (anything with a `.client`)."""
    if isinstance(srv, ServerProcess):
        return httpx.post(srv.base_url + path, json=body, headers=_bearer(key), timeout=60)
    return srv.client.post(path, json=body, headers=_bearer(key))


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()["error"]


def _normal_request_succeeds(srv: Any, key: str = KEYS[0]) -> None:
    r = _post(srv, "/v1/chat/completions", CHAT, key)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


def test_body_size(limited):
    body = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    err = _error(_post(limited, "/v1/chat/completions", body), 413)
    assert err["code"] == "request_too_large" and "4096" in err["message"]
    _normal_request_succeeds(limited)


@pytest.mark.parametrize("path,field", [("/v1/chat/completions", "max_tokens"),
                                        ("/v1/chat/completions", "max_completion_tokens"),
                                        ("/v1/completions", "max_tokens")])
def test_max_tokens_over_the_limit_is_400_naming_the_parameter(fake_factory, path, field):
    limited = fake_factory(**LIMITS)
    body = dict(long_completion()) if path == "/v1/completions" else {**CHAT}
    body.pop("max_tokens", None)
    body[field] = 9
    err = _error(_post(limited, path, body), 400)
    assert err["param"] == field and err["code"] == "invalid_value" and "max_tokens_limit" in err["message"]
    _normal_request_succeeds(limited)


def test_without_max_tokens_the_limit_is_the_default(fake_factory):
    limited = fake_factory(**LIMITS)
    body = long_completion()
    del body["max_tokens"]
    r = _post(limited, "/v1/completions", body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 8
    assert r.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_prompt_over_max_prompt_tokens_is_context_length_exceeded(limited, path):
    """The engine counts the prompt against max_prompt_tokens: a real server's."""
    words = " ".join(["word"] * 60)
    if path == "/v1/completions":
        body, param = {"prompt": words, "max_tokens": 2}, "prompt"
    else:
        body, param = {**CHAT, "messages": [{"role": "user", "content": words}]}, "messages"
    err = _error(_post(limited, path, body), 400)
    assert err["code"] == "context_length_exceeded" and err["param"] == param
    assert "max_prompt_tokens" in err["message"]
    _normal_request_succeeds(limited)


class HeldRequest(threading.Thread):
    """A streamed completion in process that occupies a generation slot: the fake engine holds every
    generation after its first token until the test sets `hold`. (A body held back no longer holds a
    slot: the limiter admits a request once its body is in; tested on a real server below.)"""

    def __init__(self, srv: Any, key: str) -> None:
        super().__init__(daemon=True)
        self.srv, self.key = srv, key
        self.status: int | None = None

    def run(self) -> None:
        body = {"model": "smollm2-135m", "prompt": "Once upon a time", "max_tokens": 8, "stream": True}
        with self.srv.client.stream("POST", "/v1/completions", json=body, headers=_bearer(self.key)) as r:
            self.status = r.status_code
            r.read()


def _in_flight(srv: Any) -> float:
    return (metric(srv.client.get("/metrics").text, "nomoat_requests_in_flight") or 0) - 1  # this scrape too


def test_concurrent_requests_per_key_and_globally_are_429_with_retry_after(fake_factory):
    """The limiter is ASGI middleware: in process it is the same code as behind uvicorn."""
    limited = fake_factory(max_concurrent_streams=3, max_streams_per_key=2, api_key=",".join(KEYS))
    limited.engine.hold = threading.Event()
    held = [HeldRequest(limited, KEYS[0]), HeldRequest(limited, KEYS[0]), HeldRequest(limited, KEYS[1])]
    try:
        for n, h in enumerate(held, 1):
            h.start()
            wait_for(lambda n=n: _in_flight(limited) >= n, timeout=30, what=f"{n} requests held")
        per_key = _post(limited, "/v1/chat/completions", CHAT, KEYS[0])
        err = _error(per_key, 429)
        assert err["code"] == "rate_limit_exceeded" and "max_streams_per_key" in err["message"]
        assert int(per_key.headers["retry-after"]) >= 1
        overall = _post(limited, "/v1/chat/completions", CHAT, KEYS[1])
        err = _error(overall, 429)
        assert err["code"] == "server_busy" and "max_concurrent_streams" in err["message"]
        assert int(overall.headers["retry-after"]) >= 1
        # A stream is refused the same way, before any SSE starts.
        with limited.client.stream("POST", "/v1/completions", json=long_completion(max_tokens=2, stream=True),
                                   headers=_bearer(KEYS[1])) as refused:
            assert refused.status_code == 429
            assert refused.headers["content-type"].startswith("application/json")
        # Other routes are not generation requests and are not counted.
        assert limited.client.get("/v1/models", headers=_bearer(KEYS[0])).status_code == 200
    finally:
        limited.engine.hold.set()
        for h in held:
            h.join(60)
    assert [h.status for h in held] == [200, 200, 200]
    _normal_request_succeeds(limited, KEYS[0])
    _normal_request_succeeds(limited, KEYS[1])


def test_request_timeout_stops_generation_with_finish_reason_length(fake_factory):
    """The timeout is the generation core's: the fake engine, held after its first token, stands in
    for a long generation. (Cancelling the real engine is tests/test_engine_abort.py's.)"""
    srv = fake_factory(request_timeout_seconds=1)
    srv.engine.hold = threading.Event()
    # Should the timeout not act, the generations go on after this guard and the checks below fail.
    guard = threading.Timer(120, srv.engine.hold.set)
    guard.start()
    r = srv.client.post("/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 2000})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 1
    with srv.client.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Tell a long story"}], "max_tokens": 2000, "stream": True,
            "stream_options": {"include_usage": True}}) as streamed:
        chunks = read_stream(streamed)
    assert finish_reasons(chunks) == ["length"]
    assert chunks[-1]["usage"]["completion_tokens"] == 1
    wait_for(lambda: srv.engine.outstanding == 0, what="both generations cancelled, not left running")
    guard.cancel()
    srv.engine.hold.set()
    r = srv.client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
    assert r.status_code == 200, r.text


def test_slow_senders_hold_no_slot_and_get_408(limited):
    """Four clients trickle a chat body (more than the three generation slots): other chats still
    run, and each trickler gets a 408 once body_timeout_seconds is over."""
    import socket

    body = b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}]}'
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEYS[1]}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    slow = []
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", limited.port), timeout=60)
        sock.sendall(head + body[:10])
        slow.append(sock)
    try:
        assert _post(limited, "/v1/chat/completions", CHAT).status_code == 200
        for sock in slow:
            reply = b""
            while not reply.rstrip().endswith(b"}"):  # headers, then the JSON body (maybe in parts)
                part = sock.recv(4096)
                assert part, reply
                reply += part
            assert reply.startswith(b"HTTP/1.1 408"), reply
            assert b'"code":"request_timeout"' in reply.replace(b" ", b"")
    finally:
        for sock in slow:
            sock.close()
    assert _post(limited, "/v1/chat/completions", CHAT).status_code == 200
