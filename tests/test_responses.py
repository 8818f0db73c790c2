"""The Responses API on the real model, through real clients: the openai SDK's `responses.create`,
`.stream` and `.parse`, LangChain's `ChatOpenAI(use_responses_api=True)`; on the base model and on an
adapter; a conversation that outlives a server restart. One server for the module, restarted once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from clients_fixtures import ADAPTER, BASE_MODEL, CLIENT_MODELS, PET_TEXT, Pet, adapter_label
from conftest import ServerProcess, models_toml
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from lora_factory import write_lora
from support.process import NO_EOS

WEATHER = {"type": "function", "name": "get_weather", "description": "The current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                          "required": ["city"], "additionalProperties": False}}
SHORT = 16
PET_TOKENS = 96  # room for a small JSON object


class Server:
    """The module's server, which one test stops and starts again over the same state directory."""

    def __init__(self, root: Path) -> None:
        adapter = write_lora(root / f"{ADAPTER}.gguf", seed=8, std=0.02)
        self.config = models_toml(extra=f'[[adapters]]\nname = "{ADAPTER}"\npath = "{adapter}"\n')
        self.root, self.state, self.starts = root, root / "state", 0
        self.proc = self._start()

    def _start(self) -> ServerProcess:
        self.starts += 1
        workdir = self.root / f"run{self.starts}"
        workdir.mkdir()
        return ServerProcess(self.config, workdir, "--state-dir", str(self.state)).wait_ready()

    def restart(self) -> None:
        assert self.proc.stop() == 0, self.proc.log()[-3000:]
        self.proc = self._start()

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.proc.base_url}/v1", api_key="none", max_retries=0, timeout=300)

    def langchain(self, model: str, **kwargs: object) -> ChatOpenAI:
        return ChatOpenAI(base_url=f"{self.proc.base_url}/v1", api_key="none", model=model, temperature=0,
                          max_retries=0, timeout=300, use_responses_api=True, **kwargs)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("responses"))
    yield server
    server.proc.close()


@pytest.mark.parametrize("model", CLIENT_MODELS)
def test_create_on_the_base_and_on_an_adapter_by_name(srv, model):
    raw = srv.sdk().responses.with_raw_response.create(model=model, input="Name a color.", max_output_tokens=SHORT,
                                                        temperature=0)
    response = raw.parse()
    assert raw.headers["x-nomoat-adapters"] == adapter_label(model)
    assert response.status in ("completed", "incomplete") and response.output_text
    assert response.model == model and response.id.startswith("resp_")
    assert 0 < response.usage.output_tokens <= SHORT


def test_the_lora_field_selects_the_adapter(srv):
    raw = srv.sdk().responses.with_raw_response.create(model=BASE_MODEL, input="Hi", max_output_tokens=4,
                                                        extra_body={"lora": [{"name": ADAPTER}]})
    assert raw.headers["x-nomoat-adapters"] == f"{ADAPTER}@1" and raw.parse().output_text


@pytest.mark.parametrize("model", CLIENT_MODELS)
def test_stream_deltas_add_up_to_the_final_text(srv, model):
    with srv.sdk().responses.stream(model=model, input="Say hello.", max_output_tokens=SHORT, temperature=0) as stream:
        events = list(stream)
    # A response max_output_tokens cut ends with `response.incomplete`, which get_final_response() refuses.
    assert events[-1].type in ("response.completed", "response.incomplete")
    final = events[-1].response
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas and "".join(deltas) == final.output_text
    assert final.usage is not None and final.usage.output_tokens <= SHORT


def test_parse_holds_the_output_to_a_pydantic_model(srv):
    parsed = srv.sdk().responses.parse(model=BASE_MODEL, input=f"{PET_TEXT} Describe Rex.", text_format=Pet,
                                       max_output_tokens=PET_TOKENS, temperature=0)
    assert isinstance(parsed.output_parsed, Pet)


def test_max_output_tokens_makes_it_incomplete(srv):
    response = srv.sdk().responses.create(model=BASE_MODEL, input="Count to fifty.", max_output_tokens=3,
                                          extra_body={"logit_bias": NO_EOS})
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3


def test_a_forced_call_then_its_output_continue_by_previous_response_id(srv):
    client = srv.sdk()
    first = client.responses.create(model=BASE_MODEL, input="What is the weather in Paris?", tools=[WEATHER],
                                    tool_choice="required", max_output_tokens=48, temperature=0)
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    second = client.responses.create(
        model=BASE_MODEL, previous_response_id=first.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"}],
        max_output_tokens=SHORT, temperature=0)
    assert second.previous_response_id == first.id and second.output
    assert second.usage.input_tokens > first.usage.input_tokens  # the first turn is in the prompt


# --- LangChain ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", CLIENT_MODELS)
def test_langchain_invoke_and_stream(srv, model):
    llm = srv.langchain(model, max_tokens=SHORT)
    reply = llm.invoke("Name three colors.")
    assert isinstance(reply, AIMessage) and reply.text and reply.usage_metadata["output_tokens"] <= SHORT
    chunks = list(llm.stream("Name three colors."))
    assert "".join(c.text for c in chunks).strip()


def test_langchain_bind_tools_forced(srv):
    message = srv.langchain(BASE_MODEL, max_tokens=48).bind_tools(
        [{k: v for k, v in WEATHER.items() if k != "type"}], tool_choice="any").invoke("Weather in Paris?")
    [call] = message.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str) and call["id"]


def test_langchain_structured_output(srv):
    pet = srv.langchain(BASE_MODEL, max_tokens=PET_TOKENS).with_structured_output(Pet).invoke(
        f"{PET_TEXT} Describe Rex.")
    assert isinstance(pet, Pet)


# --- last: a restart --------------------------------------------------------------------------


def test_a_conversation_survives_a_restart(srv):
    client = srv.sdk()
    first = client.responses.create(model=ADAPTER, input="My name is Ada.", max_output_tokens=4)
    srv.restart()
    client = srv.sdk()
    assert client.responses.retrieve(first.id).output_text == first.output_text
    second = client.responses.create(model=ADAPTER, input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=4)
    assert second.usage.input_tokens > first.usage.input_tokens
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
