"""Every client error gets its exact status and an OpenAI error body, and the server keeps serving.

The checks run in process over the fake engine (`fake`): they are the protocol's and the HTTP layer's.
What needs the real model (its tokenizer's count against n_ctx, its sampler) keeps a test on the
session server at the end.
"""

from __future__ import annotations

import json

import pytest
from support.fake_engine import N_CTX
from wire import MODEL, assert_error, assert_serves, chat_body, completion_body

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HI = [{"role": "user", "content": "Hi"}]
TOO_LONG = "hello " * 3000  # about 3000 tokens for the real model (n_ctx 2048), 18000 for the fake (4096)


INVALID = [
    (CHAT, {"model": MODEL, "messages": "Hi"}, "messages", "invalid_value"),
    (CHAT, {"model": MODEL, "messages": []}, "messages", "invalid_value"),
    (CHAT, {"model": MODEL}, "messages", "missing_required_parameter"),
    (CHAT, {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "invalid_value"),
    (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_value"),
    (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text", None),
    (CHAT, {"model": MODEL, "messages": None}, "messages", "missing_required_parameter"),
    (CHAT, {"model": MODEL, "messages": HI, "temperature": "hot"}, "temperature", "invalid_value"),
    (CHAT, {"model": MODEL, "messages": HI, "temperature": 3}, "temperature", "invalid_value"),
    (CHAT, {"model": MODEL, "messages": HI, "top_p": 0}, "top_p", "invalid_value"),
    (CHAT, {"model": MODEL, "messages": HI, "max_tokens": 0}, "max_tokens", "invalid_value"),
    (CHAT, {"model": MODEL, "messages": HI, "max_completion_tokens": "many"}, "max_completion_tokens", "invalid_value"),
    (CHAT, {"model": MODEL, "messages": HI, "n": 0}, "n", "invalid_value"),
    (CHAT, {"model": MODEL, "messages": HI, "stream": "yes please"}, "stream", "invalid_value"),
    (CHAT, {"model": MODEL, "messages": HI, "stop": 7}, "stop", "invalid_value"),
    (CHAT, {"model": MODEL, "messages": HI, "stop": [str(i) for i in range(17)]}, "stop", "invalid_value"),
    (CHAT, {"model": MODEL, "messages": HI, "seed": "abc"}, "seed", "invalid_value"),
    (CHAT, {"model": MODEL, "messages": HI, "logit_bias": {"abc": 1}}, "logit_bias", "invalid_value"),
    (CHAT, {"model": MODEL, "messages": HI, "stream_options": "x"}, "stream_options", "invalid_value"),
    (CHAT, {"model": MODEL, "messages": HI, "top_logprobs": 2}, "top_logprobs", None),
    (CHAT, {"model": MODEL, "messages": HI, "logit_bias": {"99999": 1}}, "logit_bias", None),
    (CHAT, {"model": 7, "messages": HI}, "model", "invalid_value"),
    (COMPLETIONS, {"model": MODEL}, "prompt", "missing_required_parameter"),
    (COMPLETIONS, {"model": MODEL, "prompt": 5}, "prompt", "invalid_value"),
    (COMPLETIONS, {"model": MODEL, "prompt": []}, "prompt", None),
    (COMPLETIONS, {"model": MODEL, "prompt": ""}, "prompt", None),
    (COMPLETIONS, {"model": MODEL, "prompt": [99999]}, "prompt", None),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "logprobs": 50}, "logprobs", "invalid_value"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "suffix": "y"}, "suffix", None),
]


@pytest.mark.parametrize(
    "path, body, param, code", INVALID,
    ids=[f"{'chat' if path == CHAT else 'completions'}-{param}-{i}" for i, (path, _, param, _) in enumerate(INVALID)],
)
def test_invalid_field_is_400_naming_the_param(fake, path, body, param, code):
    client = fake.client
    assert_error(client.post(path, json=body), 400, param=param, code=code)
    assert_serves(client)


@pytest.mark.parametrize(
    "raw",
    [b"{bad json", b"", b"\xff\xfe", b'{"messages": [}',
     # Python's json accepts a lone UTF-16 surrogate, which no UTF-8 text (nor the tokenizer) can hold.
     b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "a\\ud800b"}], "max_tokens": 2}'],
    ids=["syntax", "empty", "binary", "truncated", "lone-surrogate"],
)
def test_malformed_json_is_400(fake, raw):
    client = fake.client
    r = client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    error = assert_error(r, 400, param=None)
    assert "JSON" in error["message"]
    assert_serves(client)


def test_escaped_surrogate_pairs_are_text(fake):
    client = fake.client
    raw = b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "\\ud83d\\ude00 \\u00e9"}], "max_tokens": 2}'
    r = client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body", [[1, 2], "text", 3, None], ids=["array", "string", "number", "null"])
def test_body_that_is_not_an_object_is_400(fake, body):
    client = fake.client
    assert_error(client.post(CHAT, json=body), 400, param=None)
    assert_serves(client)


@pytest.mark.parametrize("path, body", [(CHAT, chat_body("Hi")), (COMPLETIONS, completion_body("Hi"))],
                         ids=["chat", "completions"])
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_unknown_model_is_404_model_not_found(fake, path, body, streamed):
    client = fake.client
    r = client.post(path, json=body | {"model": "gpt-4o", "stream": streamed})
    error = assert_error(r, 404, code="model_not_found", param="model")
    assert "gpt-4o" in error["message"] and MODEL in error["message"]
    assert_serves(client)


@pytest.mark.parametrize(
    "path, body, param",
    [(CHAT, chat_body(TOO_LONG), "messages"), (COMPLETIONS, completion_body(TOO_LONG), "prompt")],
    ids=["chat", "completions"],
)
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_prompt_longer_than_the_context_is_400(fake, path, body, param, streamed):
    """The engine's PromptTooLong, mapped before any SSE starts; the real model's count is checked below."""
    r = fake.client.post(path, json=body | {"stream": streamed, "max_tokens": 4})
    error = assert_error(r, 400, code="context_length_exceeded", param=param)
    assert str(N_CTX) in error["message"]
    assert_serves(fake.client)


def test_unknown_route_is_json_404(fake):
    client = fake.client
    # (GET / is the web page now: tests/test_ui_inprocess.py.)
    for method, path in [("GET", "/v1/nothing"), ("POST", "/v1/audio/speech"), ("GET", "/nothing/here")]:
        error = assert_error(client.request(method, path), 404, code="not_found")
        assert path in error["message"]
    assert_serves(client)


@pytest.mark.parametrize(
    "method, path, allowed",
    [("GET", CHAT, "POST"), ("PUT", COMPLETIONS, "POST"), ("DELETE", "/health", "GET"), ("POST", "/v1/models", "GET")],
)
def test_wrong_method_is_json_405(fake, method, path, allowed):
    client = fake.client
    r = client.request(method, path)
    assert_error(r, 405, code="method_not_allowed")
    assert allowed in r.headers["allow"]
    assert_serves(client)


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user"}], "max_tokens": 2},
        {"messages": [{"role": "user", "content": None}], "max_tokens": 2},
        {"messages": HI, "max_tokens": 2, "n": 16},
        {"messages": HI, "max_tokens": 2, "stop": ["", ""]},
        {"messages": HI, "max_tokens": 2, "temperature": 0, "top_k": 1, "min_p": 0.5, "repeat_penalty": 1.3},
        {"messages": HI, "max_tokens": 2, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"},
        {"messages": HI, "max_tokens": 2, "response_format": {"type": "text"}},
        {"messages": [{"role": "user", "content": "\u00e9\u4e2d\U0001f600"}], "max_tokens": 4},
    ],
    ids=["no-content", "null-content", "n16", "empty-stops", "extra-samplers", "tools", "response-format", "unicode"],
)
def test_odd_but_valid_requests_are_answered(fake, body):
    client = fake.client
    r = client.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    assert all(c["message"]["role"] == "assistant" for c in r.json()["choices"])


def test_oversized_body_is_413(fake_factory):
    client = fake_factory(max_body_bytes=2048).client
    big = json.dumps(chat_body("x" * 5000, max_tokens=2)).encode()
    error = assert_error(client.post(CHAT, content=big, headers={"content-type": "application/json"}), 413,
                         code="request_too_large")
    assert "2048" in error["message"]
    assert_serves(client)
    # Without a Content-Length the limit holds too (a chunked upload is cut while it streams in).
    chunked = (big[i : i + 512] for i in range(0, len(big), 512))
    r = client.post(COMPLETIONS, content=chunked, headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413, code="request_too_large")
    assert_serves(client)
    # Just under the limit is served.
    small = chat_body("x" * 1500, max_tokens=2)
    assert len(json.dumps(small)) < 2048
    assert client.post(CHAT, json=small).status_code == 200


# --- the real model: what the fake engine cannot stand in for ------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_real_prompt_longer_than_the_context_is_400(client, streamed):
    """The real tokenizer's count against the real n_ctx (2048); the fake twin above covers both routes."""
    r = client.post(CHAT, json=chat_body(TOO_LONG) | {"stream": streamed, "max_tokens": 4})
    error = assert_error(r, 400, code="context_length_exceeded", param="messages")
    assert "2048" in error["message"]
    assert_serves(client)


def test_real_engine_answers_odd_but_valid_requests(client):
    """More choices than slots (4), every extra sampler, text outside ASCII: one real request.
    The fake twin (test_odd_but_valid_requests_are_answered) covers each shape on its own."""
    body = {"messages": [{"role": "user", "content": "\u00e9\u4e2d\U0001f600"}], "max_tokens": 2, "n": 5,
            "temperature": 0, "top_k": 1, "min_p": 0.5, "repeat_penalty": 1.3, "stop": ["", ""]}
    r = client.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert len(choices) == 5 and all(c["message"]["role"] == "assistant" for c in choices)
