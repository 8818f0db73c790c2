"""LangChain's `ChatOpenAI` against nomoat, unchanged: invoke, stream, structured output both ways,
forced tool calls and a tool-result turn, on the base model and on an adapter chosen by model name."""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator
from typing import Literal

import jsonschema
import pytest
from clients_fixtures import PET_TEXT, Pet, Recorder, assert_served_by
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

MAX_TOKENS = 96  # room for a small JSON object; a 135M model still answers in seconds


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(max_length=20, description="the city, e.g. Paris")
    unit: Literal["celsius", "fahrenheit"]


PET_PROMPT = f"{PET_TEXT} Describe Rex."
WEATHER_PROMPT = "What is the weather like in Paris today?"


@pytest.fixture()
def llm(clients_server, client_model: str, recorder: Recorder) -> Iterator[ChatOpenAI]:
    with recorder.client() as http_client:
        yield ChatOpenAI(base_url=f"{clients_server.base_url}/v1", api_key="x", model=client_model, temperature=0,
                         max_tokens=MAX_TOKENS, max_retries=0, http_client=http_client)


def assert_tool_call(message: AIMessage, recorder: Recorder) -> dict:
    """One call of GetWeather whose args satisfy the schema the client sent; returns the call."""
    assert isinstance(message, AIMessage), recorder.report()
    assert message.tool_calls, f"no tool call in {message!r}\n{recorder.report()}"
    assert not message.invalid_tool_calls, recorder.report()
    call = message.tool_calls[0]
    assert call["name"] == "GetWeather", recorder.report()
    assert call["id"], recorder.report()
    assert isinstance(call["args"], dict), recorder.report()
    jsonschema.validate(call["args"], convert_to_openai_tool(GetWeather)["function"]["parameters"])
    GetWeather.model_validate(call["args"])
    assert message.response_metadata["finish_reason"] == "tool_calls", recorder.report()
    return call


def test_invoke(llm, client_model, recorder):
    with recorder.explained():
        reply = llm.invoke("Name three colors.")
    assert isinstance(reply, AIMessage) and isinstance(reply.content, str) and reply.content, recorder.report()
    assert reply.response_metadata["finish_reason"] in ("stop", "length")
    assert 0 < reply.usage_metadata["output_tokens"] <= MAX_TOKENS
    assert recorder.last.request["max_completion_tokens"] == MAX_TOKENS  # how ChatOpenAI sends max_tokens
    assert_served_by(recorder, client_model)


def test_stream(llm, client_model, recorder):
    with recorder.explained():
        chunks = list(llm.stream("Name three colors."))
    text = "".join(c.content for c in chunks)
    assert text.strip(), recorder.report()
    assert recorder.last.request["stream"] is True
    assert_served_by(recorder, client_model)


def test_structured_output_json_schema(llm, client_model, recorder):
    # The default method: response_format json_schema (strict) through the SDK's parse.
    with recorder.explained():
        pet = llm.with_structured_output(Pet).invoke(PET_PROMPT)
    assert isinstance(pet, Pet), f"{pet!r}\n{recorder.report()}"
    response_format = recorder.last.request["response_format"]
    assert response_format["type"] == "json_schema" and response_format["json_schema"]["strict"] is True
    assert_served_by(recorder, client_model)


# langchain-openai model_dumps the SDK's `parsed` (typed None) on the stream path: a client-side
# warning, langchain-ai/langchain#35538, whatever the server sends.
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
def test_structured_output_json_schema_streamed(llm, client_model, recorder):
    # Streaming with response_format goes through the SDK's stream helper, which keeps only
    # chat.completion.chunk events and parses the whole once it ends.
    with recorder.explained():
        results = list(llm.with_structured_output(Pet).stream(PET_PROMPT))
    assert results and isinstance(results[-1], Pet), f"{results!r}\n{recorder.report()}"
    assert recorder.last.request["stream"] is True and "response_format" in recorder.last.request
    assert_served_by(recorder, client_model)


def test_structured_output_function_calling(llm, client_model, recorder):
    with recorder.explained():
        pet = llm.with_structured_output(Pet, method="function_calling").invoke(PET_PROMPT)
    assert isinstance(pet, Pet), f"{pet!r}\n{recorder.report()}"
    sent = recorder.last.request
    assert sent["parallel_tool_calls"] is False
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "Pet"}}
    assert_served_by(recorder, client_model)


@pytest.mark.parametrize("tool_choice, sent", [
    ("GetWeather", {"type": "function", "function": {"name": "GetWeather"}}),
    ("any", "required"),
])
def test_bind_tools_forced(llm, client_model, recorder, tool_choice, sent):
    with recorder.explained():
        message = llm.bind_tools([GetWeather], tool_choice=tool_choice).invoke(WEATHER_PROMPT)
    assert recorder.last.request["tool_choice"] == sent
    assert_tool_call(message, recorder)
    assert_served_by(recorder, client_model)


def test_bind_tools_streamed(llm, client_model, recorder):
    # Streamed tool-call deltas, merged by LangChain's chunk addition (by index, name and id once).
    with recorder.explained():
        chunks = list(llm.bind_tools([GetWeather], tool_choice="any").stream(WEATHER_PROMPT))
    assert chunks, recorder.report()
    message = functools.reduce(operator.add, chunks)
    assert len(message.tool_calls) == 1, f"{message!r}\n{recorder.report()}"
    assert_tool_call(message, recorder)
    assert recorder.last.request["stream"] is True
    assert_served_by(recorder, client_model)


def test_tool_result_turn(llm, client_model, recorder):
    # An agent loop's second request: the assistant's tool call (content null) and the tool's answer.
    question = HumanMessage(WEATHER_PROMPT)
    with recorder.explained():
        message = llm.bind_tools([GetWeather], tool_choice="GetWeather").invoke([question])
    call = assert_tool_call(message, recorder)
    result = ToolMessage("18 degrees and sunny", tool_call_id=call["id"])
    with recorder.explained():
        answer = llm.bind_tools([GetWeather], tool_choice="none").invoke([question, message, result])
    sent = recorder.last.request
    assert sent["tool_choice"] == "none"
    assert sent["messages"][1]["tool_calls"][0]["id"] == call["id"]
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": call["id"], "content": "18 degrees and sunny"}
    assert isinstance(answer, AIMessage) and not answer.tool_calls, recorder.report()
    assert isinstance(answer.content, str) and answer.content.strip(), recorder.report()
    assert_served_by(recorder, client_model)
