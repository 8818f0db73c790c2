"""The OpenAI protocol over a fake engine, in process: wire shapes, tool calls, errors. Fast: no model."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.inprocess import MODEL

from nomoat.quantities import parse_duration

CHAT = "/v1/chat/completions"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def chat(content: str, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


def stream_chunks(client: Any, path: str, body: dict[str, Any]) -> list[Any]:
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(ln[len("data: "):]) for ln in lines[:-1]]


def assert_error(r: Any, status: int, param: Any = ..., code: Any = ...) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not ...:
        assert error["param"] == param, error
    if code is not ...:
        assert error["code"] == code, error
    return error


def test_chat_answers_with_the_script(fake):
    r = fake.client.post(CHAT, json=chat("hi"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "You said: hi", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert r.headers["x-nomoat-adapters"] == ""


def test_a_text_stream_starts_with_empty_content_and_deltas_carry_refusal(fake):
    chunks = stream_chunks(fake.client, CHAT, chat("hi"))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    deltas = [c["choices"][0]["delta"] for c in chunks[1:] if c["choices"][0]["delta"]]
    assert deltas and all(d.get("refusal", "missing") is None for d in deltas)
    assert "".join(d["content"] for d in deltas) == "You said: hi"


def test_a_forced_tool_stream_starts_with_null_content(fake):
    body = chat("SAY:" + CALL_TEXT, tools=[WEATHER], tool_choice="required")
    chunks = stream_chunks(fake.client, CHAT, body)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None, "refusal": None}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_forced_call_cut_by_max_tokens_is_a_partial_call_with_length(fake, choice):
    body = chat("SAY:" + CALL_TEXT, tools=[WEATHER], tool_choice=choice, max_tokens=50)
    answer = fake.client.post(CHAT, json=body).json()["choices"][0]
    assert answer["finish_reason"] == "length"
    message = answer["message"]
    assert message["content"] is None
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert (call["function"]["arguments"] and '"city"'.startswith(call["function"]["arguments"][:7].strip()[:7])) \
        or call["function"]["arguments"].startswith("{")
    streamed = stream_chunks(fake.client, CHAT, body)
    assert streamed[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed)
    assert "<tool_call>" not in text


@pytest.mark.parametrize("max_tokens, calls", [(30, []), (45, []), (70, ["get_weather"])])
def test_an_auto_call_cut_by_max_tokens_never_leaks_markup(fake, max_tokens, calls):
    # Cut in the tag, before the arguments begin, and inside the arguments.
    body = chat("SAY:Let me check. " + CALL_TEXT, tools=[WEATHER], max_tokens=max_tokens)
    answer = fake.client.post(CHAT, json=body).json()["choices"][0]
    assert answer["finish_reason"] == "length"
    assert answer["message"]["content"] == "Let me check."
    assert [c["function"]["name"] for c in answer["message"].get("tool_calls", [])] == calls
    streamed = stream_chunks(fake.client, CHAT, body)
    assert streamed[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed)
    assert text.strip() == "Let me check." and "<tool_call>" not in text


def test_json_object_with_a_schema_is_enforced(fake):
    schema = {"type": "object", "properties": {"zebra_count": {"type": "integer"}}, "required": ["zebra_count"]}
    r = fake.client.post(CHAT, json=chat("SAY:{}", response_format={"type": "json_object", "schema": schema}))
    assert r.status_code == 200, r.text
    assert "zebra_count" in fake.engine.submitted[-1].sampling.grammar


@pytest.mark.parametrize("key", ["--5", "²", "5²", "1e3", " 5"])
def test_logit_bias_keys_that_are_not_ascii_integers_are_400(fake, key):
    assert_error(fake.client.post(CHAT, json=chat("hi", logit_bias={key: 1})), 400, param="logit_bias")


def test_a_huge_integer_in_the_body_is_400(fake):
    body = json.dumps(chat("hi")).replace('"hi"', '"hi"', 1)[:-1] + ', "seed": ' + "9" * 5000 + "}"
    r = fake.client.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert_error(r, 400)
    assert fake.client.post(CHAT, json=chat("hi")).status_code == 200


def test_non_finite_logprobs_still_serialise(fake):
    fake.engine.logprob = float("nan")
    r = fake.client.post(CHAT, json=chat("hi", logprobs=True, top_logprobs=1))
    assert r.status_code == 200, r.text
    entries = r.json()["choices"][0]["logprobs"]["content"]
    assert entries and all(e["logprob"] == -9999.0 for e in entries)
    chunks = stream_chunks(fake.client, CHAT, chat("hi", logprobs=True))
    assert any(c["choices"][0]["logprobs"] for c in chunks)
    completion = fake.client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "logprobs": 1})
    assert completion.status_code == 200 and completion.json()["choices"][0]["logprobs"]["token_logprobs"]


def test_engine_errors_map_to_their_status(fake):
    fake.engine.capacity = 0
    r = fake.client.post(CHAT, json=chat("hi"))
    assert_error(r, 429, code="server_busy")
    assert r.headers["retry-after"] == "1"
    fake.engine.capacity = 16
    fake.engine.abort("going down")
    r = fake.client.post(CHAT, json=chat("hi"))
    assert_error(r, 503, code="service_unavailable")
    assert r.headers["retry-after"]


def test_a_prompt_too_long_names_the_protocols_field(fake):
    assert_error(fake.client.post(CHAT, json=chat("x" * 5000)), 400, param="messages", code="context_length_exceeded")
    r = fake.client.post("/v1/completions", json={"model": MODEL, "prompt": "x" * 5000})
    assert_error(r, 400, param="prompt", code="context_length_exceeded")


def test_every_route_answers_without_the_v1_prefix(fake):
    assert fake.client.get("/models").status_code == 200
    # No adapter directory is configured: refused, but by the route, not a missing one.
    assert_error(fake.client.post("/adapters", json={"name": "a", "path": "a.gguf"}), 403)
    assert fake.client.get("/adapters").status_code == 200


def test_generation_requests_hold_a_concurrency_slot(fake_factory):
    server = fake_factory(max_concurrent_streams=1)
    with server.client.stream("POST", CHAT, json={**chat("SAY:" + "x" * 400), "stream": True}) as held:
        assert held.status_code == 200
        r = server.client.post("/v1/embeddings", json={"model": MODEL, "input": "hi"})
        assert_error(r, 429)
    assert server.client.post("/v1/embeddings", json={"model": MODEL, "input": "hi"}).status_code == 200


def test_a_body_that_arrives_too_slowly_is_408_and_holds_no_generation_slot():
    import asyncio

    from nomoat.errors import RequestTimeoutError
    from nomoat.wire.body import ClientDisconnected, receive_body

    async def trickle() -> dict[str, Any]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def gone() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    with pytest.raises(RequestTimeoutError, match="body_timeout_seconds"):
        asyncio.run(receive_body(trickle, 1024, 0.05))
    with pytest.raises(ClientDisconnected):
        asyncio.run(receive_body(gone, 1024, 5))


@pytest.mark.parametrize(("value", "needle"), [
    pytest.param(int("9" * 4000), "longer than a century", id="4000 digits"),  # was a 500 (OverflowError)
    (10.0**300, "longer than a century"),
    ("--5m", "'--5m' is not a duration"),  # was "never unload"
    ("-0", "'-0': zero has no sign"),  # was "never unload"
    ("-", "'-' is not a duration"),  # the message named 'x'
    ("inf", "'inf' is not a duration"),
    ("1e3", "'1e3' is not a duration"),
    ("5 minutes", "'5 minutes' is not a duration"),
])
def test_keep_alive_refuses_what_is_not_a_duration_naming_it(fake, value, needle):
    error = assert_error(fake.client.post(CHAT, json=chat("hi", keep_alive=value)), 400, "keep_alive")
    assert needle in error["message"] and "negative value (-1)" in error["message"], error
    assert len(error["message"]) < 400, "a 4000-digit value is cut short"


@pytest.mark.parametrize(("value", "seconds"), [
    (-1, float("inf")), ("-5m", float("inf")), ("-1", float("inf")), (0, 0.0), ("0", 0.0), ("1h30m", 5400.0),
    (" 5M ", 300.0), (".5h", 1800.0), ("+250ms", 0.25), ("1d", 86400.0), ("3600", 3600.0), (3600, 3600.0),
])
def test_keep_alive_reads_ollama_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(("path", "body"), [
    (CHAT, {"model": "nope"}),  # no messages: OpenAI answers 404 for the model first
    (CHAT, {"model": "nope", "messages": "not a list", "temperature": 9}),
    ("/v1/completions", {"model": "nope"}),
    ("/v1/embeddings", {"model": "nope"}),
    ("/v1/responses", {"model": "nope", "input": []}),
])
def test_an_unknown_model_is_404_before_the_rest_of_the_body_is_checked(fake, path, body):
    error = assert_error(fake.client.post(path, json=body), 404, "model", "model_not_found")
    assert "'nope'" in error["message"] and MODEL in error["message"]


def test_a_known_model_without_messages_is_still_400(fake):
    assert_error(fake.client.post(CHAT, json={"model": MODEL}), 400, "messages", "missing_required_parameter")
    assert_error(fake.client.post(CHAT, json={}), 400, "messages")  # no model: the default's request


def test_echo_writes_token_prompts_back_as_text_for_every_copy(fake):
    # The fake's tokens are character codes: [72, 105] is "Hi".
    body = {"prompt": [[72, 105], [79, 75]], "echo": True, "n": 2, "max_tokens": 3}
    choices = fake.client.post("/v1/completions", json=body).json()["choices"]
    assert [c["text"] for c in sorted(choices, key=lambda c: c["index"])] == ["HiYou", "HiYou", "OKYou", "OKYou"]
    streamed = fake.client.post("/v1/completions", json={**body, "prompt": [72, 105], "stream": True}).text
    assert '"text":"Hi"' in streamed.replace(" ", "")
