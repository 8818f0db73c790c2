"""Every limit, hit against a real server: its OpenAI-shaped error first, then a normal request succeeds."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from conftest import ServerProcess, models_toml
from streams import NO_EOS, StreamReader, long_completion, wait_for

KEYS = ["limit-key-1", "limit-key-2"]
CHAT = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        models_toml(), tmp_path_factory.mktemp("limits"),
        "--max-body-bytes", "4096", "--max-tokens-limit", "8", "--max-prompt-tokens", "40",
        "--max-concurrent-streams", "3", "--max-streams-per-key", "2", "--body-timeout-seconds", "3",
        env={"NOMOAT_API_KEY": ",".join(KEYS)},
    ).wait_ready()
    yield proc
    proc.stop()


def _post(srv: ServerProcess, path: str, body: dict, key: str = KEYS[0]) -> httpx.Response:
    return httpx.post(srv.base_url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()["error"]


def _normal_request_succeeds(srv: ServerProcess, key: str = KEYS[0]) -> None:
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
def test_max_tokens_over_the_limit_is_400_naming_the_parameter(limited, path, field):
    body = dict(long_completion()) if path == "/v1/completions" else {**CHAT}
    body.pop("max_tokens", None)
    body[field] = 9
    err = _error(_post(limited, path, body), 400)
    assert err["param"] == field and err["code"] == "invalid_value" and "max_tokens_limit" in err["message"]
    _normal_request_succeeds(limited)


def test_without_max_tokens_the_limit_is_the_default(limited):
    body = long_completion()
    del body["max_tokens"]
    r = _post(limited, "/v1/completions", body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 8
    assert r.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_prompt_over_max_prompt_tokens_is_context_length_exceeded(limited, path):
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
    """A long streamed completion that occupies a generation slot until release() closes it.

    (A body held back no longer holds a slot: the limiter admits a request once its body is in.)
    """

    def __init__(self, srv: ServerProcess, key: str) -> None:
        super().__init__(daemon=True)
        self.srv, self.key = srv, key
        self.gate = threading.Event()
        self.status: int | None = None

    def run(self) -> None:
        body = {"model": "smollm2-135m", "prompt": "Once upon a time", "max_tokens": 4000, "stream": True,
                "logit_bias": NO_EOS}
        with httpx.stream("POST", self.srv.base_url + "/v1/completions", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {self.key}"}) as r:
            self.status = r.status_code
            for _ in r.iter_lines():
                if self.gate.is_set():
                    break

    def release(self) -> int | None:
        self.gate.set()
        self.join(60)
        return self.status


def _in_flight(srv: ServerProcess) -> float:
    text = httpx.get(srv.base_url + "/metrics", timeout=10).text
    line = next(ln for ln in text.splitlines() if ln.startswith("nomoat_requests_in_flight "))
    return float(line.split()[1]) - 1  # this scrape is in flight too


@pytest.fixture(scope="module")
def slots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        models_toml(), tmp_path_factory.mktemp("slots"), "--max-concurrent-streams", "3",
        "--max-streams-per-key", "2", env={"NOMOAT_API_KEY": ",".join(KEYS)},
    ).wait_ready()
    yield proc
    proc.stop()


def test_concurrent_requests_per_key_and_globally_are_429_with_retry_after(slots):
    limited = slots
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
        reader = StreamReader(limited.base_url + "/v1/completions", long_completion(max_tokens=2),
                              {"Authorization": f"Bearer {KEYS[1]}"})
        reader.run()
        assert reader.status == 429, reader.describe()
        # Other routes are not generation requests and are not counted.
        assert httpx.get(limited.base_url + "/v1/models", headers={"Authorization": f"Bearer {KEYS[0]}"}).status_code == 200
    finally:
        statuses = [h.release() for h in held]
    assert statuses == [200, 200, 200]
    _normal_request_succeeds(limited, KEYS[0])
    _normal_request_succeeds(limited, KEYS[1])


def test_request_timeout_stops_generation_with_finish_reason_length(start_server):
    srv = start_server(models_toml(), "--request-timeout-seconds", "1")
    body = {"prompt": "Once upon a time", "max_tokens": 2000, "temperature": 0, "logit_bias": NO_EOS}
    r = httpx.post(srv.base_url + "/v1/completions", json=body, timeout=600)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] < 2000
    reader = StreamReader(srv.base_url + "/v1/chat/completions",
                          {"messages": [{"role": "user", "content": "Tell a long story"}], "max_tokens": 2000,
                           "logit_bias": NO_EOS, "stream_options": {"include_usage": True}})
    reader.run()
    assert reader.done and reader.finish_reasons() == ["length"], reader.describe()
    assert reader.chunks()[-1]["usage"]["completion_tokens"] < 2000
    assert "request_timeout_seconds" in srv.log()
    r = httpx.post(srv.base_url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1}, timeout=60)
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
