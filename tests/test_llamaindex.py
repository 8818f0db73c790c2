"""llama-index's `OpenAILike` against nomoat, unchanged: its default completion mode (chat flattened
into a prompt for /v1/completions) and its chat + function-calling mode, on the base model and on an
adapter chosen by model name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from clients_fixtures import PET_TEXT, Pet, Recorder, assert_served_by
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai_like import OpenAILike

MAX_TOKENS = 96  # room for a small JSON object
COLORS = [ChatMessage(role="user", content="Name three colors.")]
PET_PROMPT = PromptTemplate("Describe the pet in this text: {text}")


class Mode(NamedTuple):
    """One way to set OpenAILike up, and where its chats go with what request fields."""

    kwargs: dict[str, bool]
    max_tokens: int
    path: str
    chat_request: dict[str, Any]


DEFAULT, CHAT = "default", "chat"
MODES = {
    # Its defaults (is_chat_model=False). A raw prompt has no end-of-turn to stop at: keep it short.
    DEFAULT: Mode({}, 24, "/v1/completions", {"prompt": "user: Name three colors.\nassistant: "}),
    CHAT: Mode({"is_chat_model": True, "is_function_calling_model": True}, MAX_TOKENS, "/v1/chat/completions",
               {"messages": [{"role": "user", "content": "Name three colors."}]}),
}


def openai_like(base_url: str, model: str, recorder: Recorder, mode: Mode) -> Iterator[OpenAILike]:
    with recorder.client() as http_client:
        # timeout: llama-index's 60 s default is tight for a test machine whose 2 cores are shared.
        yield OpenAILike(model=model, api_base=f"{base_url}/v1", api_key="x", max_tokens=mode.max_tokens,
                         temperature=0, max_retries=0, timeout=120, http_client=http_client, **mode.kwargs)


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture()
def llm(clients_server, client_model: str, recorder: Recorder, mode: str) -> Iterator[OpenAILike]:
    yield from openai_like(clients_server.base_url, client_model, recorder, MODES[mode])


@pytest.fixture()
def chat_llm(clients_server, client_model: str, recorder: Recorder) -> Iterator[OpenAILike]:
    yield from openai_like(clients_server.base_url, client_model, recorder, MODES[CHAT])


def assert_sent(recorder: Recorder, path: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The last request went to `path` and carried `fields`; returns it."""
    sent = recorder.last.request
    assert recorder.last.url.endswith(path), recorder.report()
    assert {k: sent.get(k) for k in fields} == fields, recorder.report()
    return sent


def test_complete(llm, client_model, recorder, mode):
    with recorder.explained():
        reply = llm.complete("Name three colors.")
    assert reply.text.strip(), recorder.report()
    # complete() on a chat model is a one-message chat.
    fields = {"prompt": "Name three colors."} if mode == DEFAULT else MODES[CHAT].chat_request
    assert_sent(recorder, MODES[mode].path, fields)
    assert_served_by(recorder, client_model)


def test_chat(llm, client_model, recorder, mode):
    # In the default mode the chat is flattened into one prompt for /v1/completions.
    with recorder.explained():
        reply = llm.chat(COLORS)
    assert reply.message.role == "assistant" and reply.message.content.strip(), recorder.report()
    assert_sent(recorder, MODES[mode].path, MODES[mode].chat_request)
    assert_served_by(recorder, client_model)


def test_stream_chat(llm, client_model, recorder, mode):
    with recorder.explained():
        chunks = list(llm.stream_chat(COLORS))
    assert chunks and chunks[-1].message.content.strip(), recorder.report()
    assert "".join(c.delta or "" for c in chunks) == chunks[-1].message.content
    assert assert_sent(recorder, MODES[mode].path, MODES[mode].chat_request)["stream"] is True
    assert_served_by(recorder, client_model)


def test_chat_model_structured_predict(chat_llm, client_model, recorder):
    # A function-calling model: the schema becomes a tool and the call is forced with "required".
    with recorder.explained():
        pet = chat_llm.structured_predict(Pet, PET_PROMPT, text=PET_TEXT)
    assert isinstance(pet, Pet), f"{pet!r}\n{recorder.report()}"
    sent = assert_sent(recorder, MODES[CHAT].path, {"tool_choice": "required", "parallel_tool_calls": False})
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
    assert_sent(recorder, MODES[CHAT].path, {"stream": True, "tool_choice": "required"})
    assert_served_by(recorder, client_model)
