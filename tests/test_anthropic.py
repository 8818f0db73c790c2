"""Anthropic's clients against nomoat's /v1/messages on the real model, unchanged: the anthropic SDK's create,
stream and count_tokens, forced tool use and a tool-result turn, stop sequences; LangChain's ChatAnthropic
invoke, stream, forced tools and structured output; on the base model and on an adapter chosen by name.

Shape and validation details are tested on the fake engine (tests/test_anthropic_inprocess.py)."""

from __future__ import annotations

import functools
import operator
from typing import Any, Literal

import anthropic
import httpx
import jsonschema
import pytest
from clients_fixtures import ADAPTER, BASE_MODEL, PET_TEXT, Pet, adapter_label
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessage
from pydantic import BaseModel, Field

MAX_TOKENS = 16
TOOL_TOKENS = 64  # room for one small call
WEATHER = {"name": "get_weather", "description": "Get the current weather in a city.", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}
ASK = [{"role": "user", "content": "Name three colors."}]
WEATHER_PROMPT = "What is the weather like in Paris today?"
ASK_WEATHER = [{"role": "user", "content": WEATHER_PROMPT}]
GREEDY = {"temperature": 0}


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(max_length=20, description="the city, e.g. Paris")
    unit: Literal["celsius", "fahrenheit"]


@pytest.fixture()
def client(clients_server) -> anthropic.Anthropic:
    # The SDK (2.x) sends over httpx2 and takes temperature as extra_body, as langchain-anthropic does.
    return anthropic.Anthropic(base_url=clients_server.base_url, api_key="unused", max_retries=0)


def chat_anthropic(server: Any, model: str, max_tokens: int = MAX_TOKENS) -> ChatAnthropic:
    return ChatAnthropic(base_url=server.base_url, api_key="unused", model=model, temperature=0,
                         max_tokens=max_tokens, max_retries=0)


def test_sdk_create_and_stream(client, client_model):
    raw = client.messages.with_raw_response.create(model=client_model, max_tokens=MAX_TOKENS, messages=ASK,
                                                   extra_body=GREEDY)
    assert raw.headers["x-nomoat-adapters"] == adapter_label(client_model)
    message = raw.parse()
    with client.messages.stream(model=client_model, max_tokens=MAX_TOKENS, messages=ASK, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert message.content and message.content[0].type == "text" and message.content[0].text.strip()
    assert message.stop_reason in ("end_turn", "max_tokens") and message.model == client_model
    assert 0 < message.usage.output_tokens <= MAX_TOKENS and message.usage.input_tokens > 0
    # Greedy, same prompt, same server: the stream says what the answer said.
    assert text == final.content[0].text == message.content[0].text
    assert final.usage.output_tokens == message.usage.output_tokens


def test_sdk_forced_tool_use_streamed_then_a_tool_result_turn(client):
    with client.messages.stream(model=BASE_MODEL, max_tokens=TOOL_TOKENS, messages=ASK_WEATHER, tools=[WEATHER],
                                tool_choice={"type": "any"}, extra_body=GREEDY) as stream:
        called = stream.get_final_message()
    assert called.stop_reason == "tool_use", called
    (use,) = [b for b in called.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.id.startswith("toolu_")
    jsonschema.validate(use.input, WEATHER["input_schema"])
    turn = [*ASK_WEATHER, {"role": "assistant", "content": [b.model_dump() for b in called.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees, sunny"}]}]
    answer = client.messages.create(model=BASE_MODEL, max_tokens=MAX_TOKENS, messages=turn, tools=[WEATHER],
                                    tool_choice={"type": "none"}, extra_body=GREEDY)
    assert answer.content and answer.content[0].type == "text" and answer.content[0].text.strip(), answer
    assert answer.stop_reason in ("end_turn", "max_tokens")


def test_count_tokens_is_the_prompt_a_create_reads(client):
    fields: dict[str, Any] = {"model": ADAPTER, "system": "Be brief.", "messages": ASK_WEATHER, "tools": [WEATHER]}
    counted = client.messages.count_tokens(**fields)
    usage = client.messages.create(max_tokens=1, **fields).usage
    # Anthropic's input_tokens leaves out the prompt's cached part, reported beside it.
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0) > 0, usage


def test_stop_sequence_is_reported(client):
    stops = [" ", "\n", ","]  # a few words in, one of them comes
    message = client.messages.create(model=BASE_MODEL, max_tokens=MAX_TOKENS, messages=ASK, stop_sequences=stops,
                                     extra_body=GREEDY)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence in stops, message
    assert not any(stop in b.text for b in message.content if b.type == "text" for stop in stops)


def test_bad_input_is_a_4xx_and_the_server_still_answers(clients_server, client):
    bad = [
        {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64",
                                                                               "media_type": "image/png", "data": "AA=="}}]}]},
        {"messages": ASK_WEATHER, "tools": [{**WEATHER, "input_schema": {"type": "object", "properties": {
            "city": {"type": "string", "pattern": "^[A-Z]"}}}}], "tool_choice": {"type": "any"}},
    ]
    for fields in bad:
        r = httpx.post(f"{clients_server.base_url}/v1/messages", json={"model": BASE_MODEL, "max_tokens": 4, **fields},
                       headers={"x-api-key": "unused", "anthropic-version": "2023-06-01"}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert client.messages.create(model=BASE_MODEL, max_tokens=4, messages=ASK).content  # still serving


def test_langchain_invoke_on_the_adapter_and_stream_on_the_base(clients_server):
    reply = chat_anthropic(clients_server, ADAPTER).invoke("Name three colors.")
    assert isinstance(reply, AIMessage) and reply.text.strip(), repr(reply)
    assert 0 < reply.usage_metadata["output_tokens"] <= MAX_TOKENS
    assert reply.response_metadata["stop_reason"] in ("end_turn", "max_tokens")
    assert reply.response_metadata["model"] == ADAPTER
    chunks = list(chat_anthropic(clients_server, BASE_MODEL).stream("Name three colors."))
    assert "".join(c.text for c in chunks).strip(), chunks


def test_langchain_bind_tools_forced(clients_server):
    # tool_choice "any" invoked, a named tool streamed: each a call whose args fit the model.
    llm = chat_anthropic(clients_server, BASE_MODEL, TOOL_TOKENS)
    message = llm.bind_tools([GetWeather], tool_choice="any").invoke(WEATHER_PROMPT)
    assert [c["name"] for c in message.tool_calls] == ["GetWeather"], repr(message)
    GetWeather.model_validate(message.tool_calls[0]["args"])
    chunks = list(llm.bind_tools([GetWeather], tool_choice="GetWeather").stream(WEATHER_PROMPT))
    streamed = functools.reduce(operator.add, chunks)
    assert [c["name"] for c in streamed.tool_calls] == ["GetWeather"], repr(streamed)
    GetWeather.model_validate(streamed.tool_calls[0]["args"])


def test_langchain_structured_output(clients_server):
    pet = chat_anthropic(clients_server, BASE_MODEL, TOOL_TOKENS).with_structured_output(Pet).invoke(
        f"{PET_TEXT} Describe Rex.")
    assert isinstance(pet, Pet), repr(pet)
