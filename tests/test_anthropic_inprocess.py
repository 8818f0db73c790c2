"""Anthropic's Messages API over the fake engine, in process: validation into Anthropic-shaped 4xx, x-api-key,
the error dialect of 401/404/405/413, the message and its SSE events as the anthropic SDK reads them. Fast: no model."""

from __future__ import annotations

import json
import threading
from typing import Any

import anthropic
import pytest
from support.inprocess import MODEL

from nomoat.errors import PayloadTooLargeError, RateLimitError, ServiceUnavailableError
from nomoat.wire.errors import answer_for

MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def body(content: Any = "hi", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 200, "messages": [{"role": "user", "content": content}], **fields}


def assert_error(r: Any, status: int, type_: str, *needles: str) -> str:
    """An Anthropic error body with `status` and `type_`; its message, which holds every needle."""
    assert r.status_code == status, r.text
    answer = r.json()
    assert answer["type"] == "error" and set(answer["error"]) == {"type", "message"}, answer
    assert answer["error"]["type"] == type_, answer
    message = answer["error"]["message"]
    for needle in needles:
        assert needle in message, message
    return message


def sdk(fake: Any, **kwargs: Any) -> anthropic.Anthropic:
    """The real anthropic SDK, talking to the in-process app."""
    return anthropic.Anthropic(base_url="http://testserver", api_key=kwargs.pop("api_key", "unused"),
                               http_client=fake.client, max_retries=0, **kwargs)


def events(client: Any, payload: dict[str, Any], path: str = MESSAGES) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a stream; every event's data names its own type."""
    with client.stream("POST", path, json={**payload, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        lines = [ln for ln in r.iter_lines() if ln.startswith(("event: ", "data: "))]
    pairs = [(lines[i][len("event: "):], json.loads(lines[i + 1][len("data: "):])) for i in range(0, len(lines), 2)]
    for name, data in pairs:
        assert data["type"] == name, (name, data)
    return pairs


# --- answers --------------------------------------------------------------------------------------


# Fields Anthropic documents that a local model has no use for: accepted, ignored (issue #28 extras).
DOCUMENTED = {"service_tier": "auto", "container": "c", "mcp_servers": [], "context_management": {"edits": []},
              "cache_control": {"type": "ephemeral"}, "inference_geo": "us", "speed": "standard"}


def test_a_message_in_anthropic_shape(fake):
    r = fake.client.post(MESSAGES, json=body("hi", metadata={"user_id": "u"}, thinking={"type": "disabled"},
                                             **DOCUMENTED), headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["id"].startswith("msg_") and answer["type"] == "message" and answer["role"] == "assistant"
    assert answer["model"] == MODEL
    assert answer["content"] == [{"type": "text", "text": "You said: hi"}]
    assert answer["stop_reason"] == "end_turn" and answer["stop_sequence"] is None
    usage = answer["usage"]
    assert set(usage) == {"input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"}
    assert usage["output_tokens"] == len("You said: hi") and usage["input_tokens"] > 0
    assert r.headers["x-nomoat-adapters"] == ""


def test_the_sdk_reads_create_and_count_tokens_agrees_with_usage(fake):
    client = sdk(fake)
    system = [{"type": "text", "text": "Be brief."}]
    message = client.messages.create(model=MODEL, max_tokens=50, system=system,
                                     messages=[{"role": "user", "content": "hello"}])
    assert message.content[0].type == "text" and message.content[0].text == "You said: hello"
    counted = client.messages.count_tokens(model=MODEL, system=system, messages=[{"role": "user", "content": "hello"}])
    assert counted.input_tokens == message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    prompt = fake.engine.submitted[-1].prompt
    assert prompt.messages[0] == {"role": "system", "content": "Be brief."}


def test_stop_sequence_and_max_tokens_are_reported(fake):
    answer = fake.client.post(MESSAGES, json=body("one two three", stop_sequences=["two"])).json()
    assert answer["stop_reason"] == "stop_sequence" and answer["stop_sequence"] == "two"
    assert answer["content"][0]["text"] == "You said: one "
    cut = fake.client.post(MESSAGES, json=body("hi", max_tokens=3)).json()
    assert cut["stop_reason"] == "max_tokens" and cut["content"][0]["text"] == "You"


def test_a_forced_tool_call_is_a_tool_use_block_under_a_grammar(fake):
    answer = fake.client.post(MESSAGES, json=body("SAY:" + CALL_TEXT, tools=[WEATHER],
                                                  tool_choice={"type": "any"})).json()
    assert answer["stop_reason"] == "tool_use", answer
    (block,) = answer["content"]
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
    assert block["name"] == "get_weather" and block["input"] == {"city": "Paris"}
    assert fake.engine.submitted[-1].sampling.grammar  # the call is held to the schema


def test_a_think_block_becomes_a_thinking_block_before_the_text(fake):
    answer = fake.client.post(MESSAGES, json=body("SAY:<think>Hmm.</think>\nParis.")).json()
    assert answer["content"] == [{"type": "thinking", "thinking": "Hmm.", "signature": ""},
                                 {"type": "text", "text": "Paris."}]


def test_tool_results_reach_the_prompt_and_the_output_schema_a_grammar(fake):
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": "sunny"}]},
                                     {"type": "text", "text": "So?"}]},
    ]
    schema = {"type": "object", "properties": {"sky": {"type": "string"}}, "required": ["sky"]}
    r = fake.client.post(MESSAGES, json={"model": MODEL, "max_tokens": 50, "messages": history, "tools": [WEATHER],
                                         "output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert r.status_code == 200, r.text
    submitted = fake.engine.submitted[-1]
    texts = [m["content"] for m in submitted.prompt.messages]
    assert any("<tool_response>\nsunny\n</tool_response>" in t for t in texts), texts
    assert any('"name": "get_weather", "arguments": {"city": "Paris"}' in t for t in texts), texts
    grammar = submitted.sampling.grammar
    assert "sky" in grammar and "<tool_call>" in grammar  # the schema's object, or a call in its place


def test_lora_field_and_adapter_names_resolve_as_in_chat(fake):
    assert fake.client.post(MESSAGES, json=body(lora=[])).status_code == 200
    assert_error(fake.client.post(MESSAGES, json=body(lora=[{"name": "nope"}])), 404, "not_found_error", "nope")
    assert_error(fake.client.post(MESSAGES, json=body(model="nope")), 404, "not_found_error", "nope")


# --- streams --------------------------------------------------------------------------------------


def test_a_text_stream_in_anthropic_event_order(fake):
    pairs = events(fake.client, body("hi"))
    names = [name for name, _ in pairs]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    start = pairs[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["input_tokens"] > 0
    assert "".join(d["delta"]["text"] for n, d in pairs if n == "content_block_delta") == "You said: hi"
    delta = pairs[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == len("You said: hi")


def test_the_sdk_accumulates_thinking_text_and_tool_use_as_the_message_says(fake):
    payload = body("SAY:<think>Hmm.</think>\nLooking. " + CALL_TEXT, tools=[WEATHER])
    whole = fake.client.post(MESSAGES, json=payload).json()
    with sdk(fake).messages.stream(**{k: v for k, v in payload.items()}) as stream:
        kinds = [e.type for e in stream]
        streamed = stream.get_final_message()
    assert [b.type for b in streamed.content] == ["thinking", "text", "tool_use"]
    assert streamed.stop_reason == "tool_use" == whole["stop_reason"]
    assert streamed.content[0].thinking == "Hmm." and streamed.content[1].text.strip() == "Looking."
    assert streamed.content[2].input == whole["content"][2]["input"] == {"city": "Paris"}
    assert streamed.content[2].id.startswith("toolu_")
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"


def test_an_engine_error_mid_stream_is_an_error_event(fake):
    payload = {**body("SAY:" + "x" * 30, max_tokens=100), "stream": True}
    fake.engine.hold = threading.Event()
    with fake.client.stream("POST", MESSAGES, json=payload) as r:
        lines = []
        for line in r.iter_lines():
            lines.append(line)
            if line.startswith("event: content_block_delta"):
                fake.engine.abort("shutting down")
    assert "event: error" in lines, lines[-6:]
    error = json.loads(lines[lines.index("event: error") + 1][len("data: "):])
    assert error["type"] == "error" and error["error"]["type"] == "overloaded_error", error


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "needles"), [
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, ["max_tokens", "required"]),
    (body([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]),
     ["messages[0].content[0].source.data", "not a PNG, JPEG, GIF or BMP"]),
    (body([{"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]),
     ["messages[0].content[0].source.url", "allow_remote_images"]),
    (body([{"type": "image", "source": {"type": "file", "file_id": "f"}}]), ["messages[0].content[0].source.type"]),
    (body([{"type": "document", "source": {"type": "text", "data": "x"}}]), ["'document'", "text and images only"]),
    (body([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {}}]}]),
     ["messages[0].content[0].content[0].type", "user turn"]),
    (body([{"type": "tool_use", "id": "t", "name": "x"}]), ["messages[0].content[0].input"]),
    (body([{"text": "no type"}]), ["messages[0].content[0]", "'type'"]),
    (body([{"type": "tool_use", "id": "t", "name": "x", "input": {}}]), ["tool_use", "user message"]),
    (body(tools=[WEATHER], tool_choice={"type": "tool"}), ["tool_choice", "name"]),
    (body(tools=[WEATHER], tool_choice={"type": "sometimes"}), ["tool_choice.type"]),
    (body(tools=[WEATHER], tool_choice={"type": "tool", "name": "nope"}), ["tool_choice.name", "'nope'"]),
    (body(tool_choice={"type": "any"}), ["tool_choice", "at least one tool"]),
    (body(tools=[{"name": "x", "input_schema": {"type": "string"}}]), ["tools[0].input_schema", "object"]),
    (body(tools=[{"name": "x"}]), ["tools[0].input_schema", "required"]),
    (body(tools=[{"name": "x", "input_schema": {"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}}}],
          tool_choice={"type": "any"}), ["tools[0].input_schema", "pattern"]),
    (body(tools=[{"type": "web_search_20250305", "name": "web_search"}]), ["tools[0].type", "web_search"]),
    (body(tools=[WEATHER, WEATHER]), ["tools[1].name", "get_weather"]),
    (body(temperature=1.5), ["temperature"]),
    (body(max_tokens=0), ["max_tokens"]),
    (body(max_tokens=10**9), ["max_tokens", "too large"]),
    (body(messages=[]), ["messages"]),
    (body(unknown_field=1), ["unknown_field: Extra inputs are not permitted"]),
    (body(role="user"), ["role: Extra inputs are not permitted"]),
    (body(grammar='root ::= "x"'), ["grammar: Extra inputs are not permitted"]),  # a chat field, not served here
    ({**body(), "messages": [{"role": "system", "content": "x"}]}, ["messages[0].role"]),
])
def test_bad_requests_are_anthropic_400s_naming_the_field(fake, payload, needles):
    assert_error(fake.client.post(MESSAGES, json=payload), 400, "invalid_request_error", *needles)


def test_count_tokens_takes_no_max_tokens_and_refuses_what_messages_refuses(fake):
    r = fake.client.post(COUNT, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and set(r.json()) == {"input_tokens"}, r.text
    assert_error(fake.client.post(COUNT, json={"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {}}]}]}), 400, "invalid_request_error", "text and images only")
    assert_error(fake.client.post(COUNT, content=b"{not json"), 400, "invalid_request_error", "JSON")


def test_the_sdk_raises_its_own_errors(fake):
    client = sdk(fake)
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}])
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "hi"}])


# --- the error dialect of the HTTP layer ----------------------------------------------------------


@pytest.mark.parametrize("path", [MESSAGES, "/messages", COUNT, "/messages/count_tokens"])
def test_routes_404_and_405_speak_anthropic_below_messages_and_openai_elsewhere(fake, path):
    assert_error(fake.client.get(path), 405, "invalid_request_error", "GET")
    assert_error(fake.client.post(path.replace("messages", "messages/batches") if "count" not in path else path + "/x"),
                 404, "not_found_error")
    openai = fake.client.get("/v1/nothing-here").json()["error"]
    assert set(openai) == {"message", "type", "param", "code"}


def test_x_api_key_or_bearer_and_anthropic_401s(fake_factory):
    fake = fake_factory(api_key="k")
    assert_error(fake.client.post(MESSAGES, json=body()), 401, "authentication_error", "x-api-key")
    assert_error(fake.client.post(MESSAGES, json=body(), headers={"x-api-key": "wrong"}), 401, "authentication_error")
    assert fake.client.post(MESSAGES, json=body(), headers={"x-api-key": "k"}).status_code == 200
    assert fake.client.post(MESSAGES, json=body(), headers={"Authorization": "Bearer k"}).status_code == 200
    # Every route takes either header; OpenAI's routes keep OpenAI's shape.
    assert fake.client.get("/v1/models", headers={"x-api-key": "k"}).status_code == 200
    assert fake.client.get("/v1/models").json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError):
        sdk(fake, api_key="wrong").messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert sdk(fake, api_key="k").messages.create(model=MODEL, max_tokens=5,
                                                  messages=[{"role": "user", "content": "hi"}]).content


def test_a_body_over_the_limit_is_request_too_large(fake_factory):
    fake = fake_factory(max_body_bytes=2048)
    assert_error(fake.client.post(MESSAGES, json=body("x" * 4096)), 413, "request_too_large")


@pytest.mark.parametrize(("error", "status", "type_"), [
    (RateLimitError("slow down"), 429, "rate_limit_error"),
    (ServiceUnavailableError("loading"), 503, "overloaded_error"),
    (PayloadTooLargeError("big"), 413, "request_too_large"),
    (KeyError("a bug"), 500, "api_error"),
])
def test_one_status_table_renders_both_dialects(error, status, type_):
    anthropic_answer = answer_for(error, "messages", "anthropic")
    openai_answer = answer_for(error, "messages")
    assert anthropic_answer.status == openai_answer.status == status
    assert anthropic_answer.body["error"]["type"] == type_
    assert anthropic_answer.headers == openai_answer.headers


# --- fields Anthropic does not document, threads, usage, validation order (issue #28 extras) --------------------


def test_unknown_fields_on_count_tokens_are_refused_too(fake):
    count = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    assert fake.client.post(COUNT, json={**count, "cache_control": {"type": "ephemeral"}}).status_code == 200
    assert_error(fake.client.post(COUNT, json={**count, "max_tokens": 5}), 400, "invalid_request_error",
                 "max_tokens: Extra inputs are not permitted")


def test_thread_is_refused_with_the_code_the_sdk_falls_back_on(fake):
    r = fake.client.post(MESSAGES, json=body("hi", thread={"type": "create"}))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["details"] == {"error_code": "thread_unsupported_request"}
    assert "thread" in error["message"]
    assert fake.client.post(MESSAGES, json=body("hi", thread=None)).status_code == 200


def test_the_sdk_thread_falls_back_to_resending_the_conversation(fake):
    """The anthropic SDK's message threads: refused, it drops `thread` and sends the whole history each turn."""
    client = sdk(fake)
    thread = client.beta.messages.thread(model=MODEL, max_tokens=50, unsupported_request_behavior="continue_unthreaded")
    assert thread.send({"role": "user", "content": "my name is Ada"}).content[0].text == "You said: my name is Ada"
    thread.send({"role": "user", "content": "what is my name?"})
    assert [m["content"] for m in fake.engine.submitted[-1].prompt.messages] == [
        "my name is Ada", "You said: my name is Ada", "what is my name?"]
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.messages.thread(model=MODEL, max_tokens=5).send({"role": "user", "content": "hi"})
    assert refused.value.body["error"]["details"]["error_code"] == "thread_unsupported_request"


def test_message_start_splits_usage_as_message_delta_does(fake):
    fake.engine.cached_tokens = 5  # as if the prompt's first 5 tokens came from the prefix cache
    pairs = events(fake.client, body("hi"))
    start = next(data for name, data in pairs if name == "message_start")["message"]["usage"]
    delta = next(data for name, data in pairs if name == "message_delta")["usage"]
    assert start["cache_read_input_tokens"] == delta["cache_read_input_tokens"] == 5
    assert start["input_tokens"] == delta["input_tokens"] > 0
    assert start["output_tokens"] == 0 and delta["output_tokens"] == len("You said: hi")
    with sdk(fake).messages.stream(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as stream:
        message = stream.get_final_message()
    assert message.usage.cache_read_input_tokens == 5 and message.usage.input_tokens == start["input_tokens"]


def test_an_unknown_model_is_404_before_the_rest_of_the_body(fake):
    assert_error(fake.client.post(MESSAGES, json={"model": "nope", "max_tokens": 5}), 404, "not_found_error", "'nope'")
    assert_error(fake.client.post(COUNT, json={"model": "nope"}), 404, "not_found_error", "'nope'")
