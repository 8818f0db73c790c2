"""llama-index's `OpenAILike` against nomoat, unchanged: its default completion mode (chat flattened
into a prompt for /v1/completions) and its chat + function-calling mode, on the base model and on an
adapter chosen by model name."""

from __future__ import annotations

from typing import Iterator

import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai_like import OpenAILike

from clients_fixtures import PET_TEXT, Pet, Recorder, assert_served_by

MAX_TOKENS = 96  # room for a small JSON object
# A raw completion prompt has no end-of-turn to stop at, so it runs to max_tokens: keep that short.
COMPLETION_MAX_TOKENS = 24
COLORS = [ChatMessage(role="user", content="Name three colors.")]
PET_PROMPT = PromptTemplate("Describe the pet in this text: {text}")


def openai_like(base_url: str, model: str, recorder: Recorder, max_tokens: int, **mode: bool) -> Iterator[OpenAILike]:
    with recorder.client() as http_client:
        # timeout: llama-index's 60 s default is tight for a test machine whose 2 cores are shared.
        yield OpenAILike(model=model, api_base=f"{base_url}/v1", api_key="x", max_tokens=max_tokens,
                         temperature=0, max_retries=0, timeout=120, http_client=http_client, **mode)


@pytest.fixture()
def completion_llm(clients_server, client_model: str, recorder: Recorder) -> Iterator[OpenAILike]:
    """OpenAILike as constructed with its defaults: `is_chat_model=False`."""
    yield from openai_like(clients_server.base_url, client_model, recorder, COMPLETION_MAX_TOKENS)


@pytest.fixture()
def chat_llm(clients_server, client_model: str, recorder: Recorder) -> Iterator[OpenAILike]:
    yield from openai_like(clients_server.base_url, client_model, recorder, MAX_TOKENS,
                           is_chat_model=True, is_function_calling_model=True)


def sent_to(recorder: Recorder, path: str) -> dict:
    assert recorder.last.url.endswith(path), recorder.report()
    return recorder.last.request


# --- default mode: everything goes to /v1/completions ---

def test_default_complete(completion_llm, client_model, recorder):
    with recorder.explained():
        reply = completion_llm.complete("The capital of France is")
    assert reply.text.strip(), recorder.report()
    assert sent_to(recorder, "/v1/completions")["prompt"] == "The capital of France is"
    assert_served_by(recorder, client_model)


def test_default_chat_is_a_flattened_completion(completion_llm, client_model, recorder):
    with recorder.explained():
        reply = completion_llm.chat(COLORS)
    assert reply.message.role == "assistant" and reply.message.content.strip(), recorder.report()
    assert sent_to(recorder, "/v1/completions")["prompt"] == "user: Name three colors.\nassistant: "
    assert_served_by(recorder, client_model)


def test_default_stream_chat(completion_llm, client_model, recorder):
    with recorder.explained():
        chunks = list(completion_llm.stream_chat(COLORS))
    assert chunks and chunks[-1].message.content.strip(), recorder.report()
    assert "".join(c.delta or "" for c in chunks) == chunks[-1].message.content
    assert sent_to(recorder, "/v1/completions")["stream"] is True
    assert_served_by(recorder, client_model)


# --- is_chat_model=True, is_function_calling_model=True ---

def test_chat_model_complete(chat_llm, client_model, recorder):
    with recorder.explained():
        reply = chat_llm.complete("Name three colors.")
    assert reply.text.strip(), recorder.report()
    assert sent_to(recorder, "/v1/chat/completions")["messages"] == [{"role": "user", "content": "Name three colors."}]
    assert_served_by(recorder, client_model)


def test_chat_model_chat(chat_llm, client_model, recorder):
    with recorder.explained():
        reply = chat_llm.chat(COLORS)
    assert reply.message.role == "assistant" and reply.message.content.strip(), recorder.report()
    sent_to(recorder, "/v1/chat/completions")
    assert_served_by(recorder, client_model)


def test_chat_model_stream_chat(chat_llm, client_model, recorder):
    with recorder.explained():
        chunks = list(chat_llm.stream_chat(COLORS))
    assert chunks and chunks[-1].message.content.strip(), recorder.report()
    assert "".join(c.delta or "" for c in chunks) == chunks[-1].message.content
    assert sent_to(recorder, "/v1/chat/completions")["stream"] is True
    assert_served_by(recorder, client_model)


def test_chat_model_structured_predict(chat_llm, client_model, recorder):
    # A function-calling model: the schema becomes a tool and the call is forced with "required".
    with recorder.explained():
        pet = chat_llm.structured_predict(Pet, PET_PROMPT, text=PET_TEXT)
    assert isinstance(pet, Pet), f"{pet!r}\n{recorder.report()}"
    sent = sent_to(recorder, "/v1/chat/completions")
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False
    assert [t["function"]["name"] for t in sent["tools"]] == ["Pet"]
    assert_served_by(recorder, client_model)


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"18 degrees and sunny in {city}"


def test_chat_model_stream_chat_with_tools(chat_llm, client_model, recorder):
    # Streamed tool-call deltas: llama-index reads one call per chunk (tool_calls_delta[0]).
    tool = FunctionTool.from_defaults(fn=get_weather)
    with recorder.explained():
        chunks = list(chat_llm.stream_chat_with_tools([tool], user_msg="What is the weather in Paris?",
                                                       tool_required=True))
        calls = chat_llm.get_tool_calls_from_response(chunks[-1])
    assert [c.tool_name for c in calls] == ["get_weather"], recorder.report()
    assert set(calls[0].tool_kwargs) == {"city"} and isinstance(calls[0].tool_kwargs["city"], str), recorder.report()
    assert calls[0].tool_id, recorder.report()
    sent = sent_to(recorder, "/v1/chat/completions")
    assert sent["stream"] is True and sent["tool_choice"] == "required"
    assert_served_by(recorder, client_model)
