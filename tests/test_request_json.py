"""One rule for the JSON every request brings, on every route (issue #28, items 4 and 5): no NaN or Infinity, and
nothing nested deeper than MAX_JSON_DEPTH, in the body and in the strings in it that are JSON (tool-call
arguments). In process over the fake engine: fast, no model."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.inprocess import MODEL

from nomoat.wire.body import MAX_JSON_DEPTH, nesting_depth

CHAT, RESPONSES, MESSAGES = "/v1/chat/completions", "/v1/responses", "/v1/messages"
TOO_DEEP = f"nests JSON arrays and objects deeper than the limit of {MAX_JSON_DEPTH} levels"


DEEP = "@deep@"


def nested(depth: int) -> str:
    """JSON text of an object `depth` levels deep (itself included), objects and arrays alternating; written
    out, as json.dumps cannot write what is nested past the interpreter's recursion limit."""
    opens = ['{"k": ' if (depth - level) % 2 == 0 else "[" for level in range(depth - 1)]
    closes = ["}" if o.startswith("{") else "]" for o in reversed(opens)]
    return "".join(reversed(opens)) + '{"leaf": 1.5}' + "".join(closes)


def post_raw(srv: Any, path: str, body: dict[str, Any], deep: str = "") -> Any:
    """`body` with `deep` (JSON text) where it holds DEEP. json.dumps writes NaN and Infinity as Python's reader
    takes them (allow_nan), as the attack sent them."""
    text = json.dumps(body).replace(json.dumps(DEEP), deep)
    return srv.client.post(path, content=text, headers={"content-type": "application/json"})


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}


def responses_call(arguments: Any) -> dict[str, Any]:
    """A Responses conversation holding an earlier function call with these arguments, and its output."""
    return {"model": MODEL, "input": [
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": arguments},
        {"type": "function_call_output", "call_id": "call_1", "output": "done"},
        {"role": "user", "content": "hi"}]}


def messages_call(tool_input: Any) -> dict[str, Any]:
    """An Anthropic conversation holding an earlier tool_use with this input, and its result."""
    return {"model": MODEL, "max_tokens": 20, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": tool_input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]}]}


def openai_message(r: Any) -> str:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    return str(error["message"])


def anthropic_message(r: Any) -> str:
    assert r.status_code == 400, r.text
    answer = r.json()
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error", answer
    return str(answer["error"]["message"])


def test_the_depth_scan_counts_what_json_nests_and_skips_strings():
    assert nesting_depth(nested(10)) == 10 and json.loads(nested(10))["k"][0]["k"]
    assert nesting_depth('[{"a": "[[[[{{{{", "b": ["]]]\\"[[["]}]') == 3
    assert nesting_depth('"only a string"') == 0


# --- non-finite numbers (item 4) ------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_refused_in_a_chat_body(fake, value):
    message = openai_message(post_raw(fake, CHAT, chat(**{"x-n": value})))
    assert json.dumps(value) in message and "not a JSON number" in message
    assert fake.engine.submitted == []


def test_a_number_too_large_for_a_float_is_refused(fake):
    r = fake.client.post(CHAT, content=b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], '
                                       b'"temperature": 1e999}' % MODEL.encode(),
                         headers={"content-type": "application/json"})
    assert "1e999" in openai_message(r)


def test_nan_in_a_responses_tool_is_refused_and_nothing_is_stored(fake_factory, tmp_path):
    srv = fake_factory(state_dir=tmp_path)
    tool = {"type": "function", "name": "f", "parameters": {"type": "object", "x-n": float("nan")}}
    for stream in (False, True):
        r = post_raw(srv, "/v1/responses", {"model": MODEL, "input": "hi", "tools": [tool], "stream": stream})
        assert "NaN" in openai_message(r)
    assert srv.engine.submitted == [], "nothing generated, so nothing stored"


def test_nan_in_a_messages_body_is_an_anthropic_400(fake):
    body = messages_call({"t": float("nan")})
    assert "NaN" in anthropic_message(post_raw(fake, MESSAGES, body))


# --- nesting depth (item 5) -----------------------------------------------------------------------


@pytest.mark.parametrize("depth", [100, 400, 900, 5000])
def test_deep_json_is_the_same_400_on_every_route(fake_factory, tmp_path, depth):
    srv = fake_factory(state_dir=tmp_path)
    deep = nested(depth)
    assert TOO_DEEP in openai_message(post_raw(srv, CHAT, chat(metadata=DEEP), deep))
    assert TOO_DEEP in openai_message(post_raw(srv, RESPONSES, responses_call(DEEP), deep))
    assert TOO_DEEP in anthropic_message(post_raw(srv, MESSAGES, messages_call(DEEP), deep))
    assert TOO_DEEP in openai_message(post_raw(srv, "/v1/completions", {"model": MODEL, "prompt": "x", "m": DEEP}, deep))
    assert srv.engine.submitted == []


def test_json_nested_below_the_bound_is_served(fake_factory, tmp_path):
    srv = fake_factory(state_dir=tmp_path)
    # The body's own levels (messages, a message, its content, a block) come on top of the input's.
    deep = nested(MAX_JSON_DEPTH - 8)
    assert post_raw(srv, CHAT, chat(metadata=DEEP), deep).status_code == 200
    assert post_raw(srv, RESPONSES, responses_call(DEEP), deep).status_code == 200
    assert post_raw(srv, MESSAGES, messages_call(DEEP), deep).status_code == 200


@pytest.mark.parametrize("depth", [100, 900, 5000])
def test_tool_call_arguments_that_are_json_text_are_held_to_the_same_bound(fake_factory, tmp_path, depth):
    """A call's arguments string is parsed for the chat template: its own nesting counts as a body's would."""
    srv = fake_factory(state_dir=tmp_path)
    arguments = nested(depth)
    message = openai_message(post_raw(srv, RESPONSES, responses_call(arguments)))
    assert TOO_DEEP in message and "function.arguments" in message
    history = {"model": MODEL, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]}
    assert TOO_DEEP in openai_message(post_raw(srv, CHAT, history))
    assert srv.engine.submitted == []


def test_arguments_text_below_the_bound_or_not_json_is_served(fake_factory, tmp_path):
    srv = fake_factory(state_dir=tmp_path)
    for arguments in (nested(MAX_JSON_DEPTH), "not json [[[", '{"x": 1'):
        assert post_raw(srv, RESPONSES, responses_call(arguments)).status_code == 200, arguments


def test_model_output_nested_past_the_interpreter_limit_is_text_not_a_500(fake):
    """What a model writes is not a request: a tool call too deep to parse (a grammar can force one) stays text."""
    deep = "[" * 1100 + "]" * 1100  # past json.loads' recursion limit, within the fake model's context
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"a": ' + deep + '}}\n</tool_call>'
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    r = fake.client.post(CHAT, json=chat(tools=[tool], messages=[{"role": "user", "content": "SAY:" + call}]))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"].get("tool_calls") is None
    r = fake.client.post(MESSAGES, json={"model": MODEL, "max_tokens": 3000, "messages": [
        {"role": "user", "content": "SAY:" + call}], "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]})
    assert r.status_code == 200, r.text
