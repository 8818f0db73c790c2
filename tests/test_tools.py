"""Tool calling through the openai SDK on the real model, and the output parser on its own."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import openai
import pytest
from clients_fixtures import CLIENT_MODELS

from nomoat.core.tool_calls import ToolStream, parse_output
from nomoat.core.tools import Tool, ToolPlan, prompt_messages
from nomoat.engine.chat_template import CHATML, ChatTemplate

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "Current time in a timezone",
                 "parameters": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 20}},
                                "required": ["tz"]}},
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def sdk(clients_server):
    with openai.OpenAI(base_url=clients_server.base_url + "/v1", api_key="x", max_retries=0, timeout=120) as c:
        yield c


def check_call(call, tool=WEATHER):
    assert call.id and call.type == "function"
    assert call.function.name == tool["function"]["name"]
    assert isinstance(call.function.arguments, str)
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


@pytest.mark.parametrize("model", CLIENT_MODELS)
def test_named_tool_call_parses_and_matches_its_schema(sdk, model):
    r = sdk.chat.completions.create(model=model, messages=ASK, tools=[WEATHER, TIME], tool_choice=NAMED,
                                    temperature=0, max_tokens=80)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    check_call(choice.message.tool_calls[0])


def test_required_without_parallel_calls_makes_exactly_one_call(sdk):
    r = sdk.chat.completions.create(model="smollm2-135m", messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                    parallel_tool_calls=False, temperature=0, max_tokens=80)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and len(calls) == 1
    check_call(calls[0], WEATHER if calls[0].function.name == "get_weather" else TIME)


def reassemble(chunks) -> tuple[dict[int, dict], list[str]]:
    """Tool calls rebuilt from deltas the way the SDK's users do, checking the delta rules."""
    calls: dict[int, dict] = {}
    finish = []
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.finish_reason:
                finish.append(choice.finish_reason)
            deltas = choice.delta.tool_calls or []
            assert len(deltas) <= 1  # one call per chunk: llama-index reads only the first
            for d in deltas:
                assert isinstance(d.index, int)
                if d.index not in calls:
                    assert d.id and d.type == "function" and d.function.name  # the first delta names the call
                    calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": d.function.arguments or ""}
                else:
                    assert d.id is None and d.type is None and d.function.name is None  # else: "getget"
                    calls[d.index]["arguments"] += d.function.arguments or ""
    return calls, finish


@pytest.mark.parametrize("model", CLIENT_MODELS)
def test_streamed_tool_call_reassembles_to_the_whole_answer(sdk, model):
    kw = dict(model=model, messages=ASK, tools=[WEATHER], tool_choice=NAMED, temperature=0, max_tokens=80)
    whole = sdk.chat.completions.create(**kw).choices[0].message.tool_calls[0]
    chunks = list(sdk.chat.completions.create(stream=True, **kw))
    calls, finish = reassemble(chunks)
    assert finish == ["tool_calls"]
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather"
    assert calls[0]["arguments"] == whole.function.arguments
    # Arguments arrive in fragments as the model writes them, not in one piece at the end.
    fragments = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(fragments) > 3


def test_async_stream_with_required_tool(clients_server):
    async def run():
        async with openai.AsyncOpenAI(base_url=clients_server.base_url + "/v1", api_key="x", max_retries=0) as a:
            stream = await a.chat.completions.create(model="tuned", messages=ASK, tools=[WEATHER], tool_choice="required",
                                                     temperature=0, max_tokens=80, stream=True)
            return [c async for c in stream]

    calls, finish = reassemble(asyncio.run(run()))
    assert finish == ["tool_calls"]
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER["function"]["parameters"])


def test_a_function_without_parameters_is_called_with_empty_arguments(sdk):
    no_params = {"type": "function", "function": {"name": "get_time", "description": "The time now"}}
    empty = {"type": "object", "properties": {}}
    for tool in (no_params, {**no_params, "function": {**no_params["function"], "parameters": empty}}):
        r = sdk.chat.completions.create(model="smollm2-135m", messages=ASK, tools=[tool], tool_choice="required",
                                        temperature=0, max_tokens=40)
        assert r.choices[0].finish_reason == "tool_calls"
        assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {}


def test_follow_up_with_tool_results_is_answered(sdk):
    first = sdk.chat.completions.create(model="smollm2-135m", messages=ASK, tools=[WEATHER], tool_choice=NAMED,
                                        temperature=0, max_tokens=80).choices[0].message
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in first.tool_calls]},
        {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "18 degrees and sunny"},
    ]
    r = sdk.chat.completions.create(model="smollm2-135m", messages=messages, tools=[WEATHER], temperature=0, max_tokens=30)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content


def test_tool_choice_none_answers_in_text(sdk):
    r = sdk.chat.completions.create(model="smollm2-135m", messages=ASK, tools=[WEATHER], tool_choice="none",
                                    temperature=0, max_tokens=20)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


@pytest.mark.parametrize("body, param", [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string", "pattern": "a"}}}}}], "tool_choice": "required"},
     "tools[0].function.parameters"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": [{"id": "1", "type": "function"}]}]},
     "messages[1].tool_calls[0].function"),
])
def test_bad_tool_requests_are_400_naming_the_field(fake, body, param):
    r = fake.client.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 5, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_native_tool_template_gets_the_tools(fake):
    """A model whose template renders `tools` gets them there, not in nomoat's system message.
    In process: the fake model's tokens are characters, so the prompts' lengths are compared."""
    template = ("{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t.function.name }}{% endfor %}<|im_end|>\n"
                "{% endif %}" + CHATML)
    fake.engine.model.chat_template = ChatTemplate(template, bos_token="", eos_token="<|im_end|>")
    body = {"messages": ASK, "max_tokens": 1, "temperature": 0}
    plain = fake.client.post("/v1/chat/completions", json=body).json()["usage"]["prompt_tokens"]
    with_tools = fake.client.post("/v1/chat/completions", json={**body, "tools": [WEATHER]}).json()["usage"]["prompt_tokens"]
    added = "<|im_start|>system\nTOOLS: get_weather<|im_end|>\n"
    assert with_tools - plain == len(added)  # nomoat's own description is hundreds of characters


# --- the parser, without the model --------------------------------------------------------


def plan(mode="auto", parallel=True, forced=()):
    tools = (Tool("get_weather", "", WEATHER["function"]["parameters"]), Tool("get_time", "", {"type": "object"}))
    return ToolPlan(tools, mode, forced, parallel)


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n</tool_call>'


def stream_all(p: ToolPlan, text: str, step: int) -> tuple[str, list[dict]]:
    s = ToolStream(p)
    deltas = []
    for i in range(0, len(text), step):
        deltas += s.feed(text[i:i + step])
    deltas += s.finish()
    content = "".join(d.get("content", "") for d in deltas)
    calls: dict[int, dict] = {}
    for d in deltas:
        for entry in d.get("tool_calls", []):
            c = calls.setdefault(entry["index"], {"name": entry["function"].get("name"), "arguments": ""})
            c["arguments"] += entry["function"]["arguments"]
    return content, list(calls.values())


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_auto_mode_separates_content_and_calls_whatever_the_chunking(step):
    text = "Let me check. " + CALL + "\n" + CALL.replace("Oslo", "Rome")
    content, calls = parse_output(text, plan())
    assert content == "Let me check." and [json.loads(c.arguments)["city"] for c in calls] == ["Oslo", "Rome"]
    s_content, s_calls = stream_all(plan(), text, step)
    assert s_content.strip() == "Let me check."
    assert [json.loads(c["arguments"]) for c in s_calls] == [json.loads(c.arguments) for c in calls]


@pytest.mark.parametrize("text", [
    "No tools needed: <tool_ is just text",
    '<tool_call>\n{"name": "unknown_tool", "arguments": {}}\n</tool_call>',
    "<tool_call>\nnot json\n</tool_call>",
    '{"answer": 42}',
])
def test_auto_mode_keeps_what_is_not_a_call_as_content(text):
    assert parse_output(text, plan()) == (text, [])
    content, calls = stream_all(plan(), text, 2)
    assert content == text and calls == []


def test_bare_json_call_and_parallel_false():
    bare = '[{"name": "get_time", "arguments": {"tz": "UTC"}}, {"name": "get_weather", "parameters": {"city": "X"}}]'
    _, calls = parse_output(bare, plan())
    assert [c.name for c in calls] == ["get_time", "get_weather"]
    _, calls = parse_output(bare, plan(parallel=False))
    assert [c.name for c in calls] == ["get_time"]
    _, s_calls = stream_all(plan(parallel=False), bare, 5)
    assert [c["name"] for c in s_calls] == ["get_time"]


def test_history_is_written_in_the_call_format_for_templates_without_tools():
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "cold"},
    ]
    out = prompt_messages(messages, plan(), native=False)
    assert out[0]["role"] == "system" and "get_weather" in out[0]["content"]
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    assert out[2] == {"role": "assistant", "content": call}
    assert out[3] == {"role": "user", "content": "<tool_response>\ncold\n</tool_response>"}
    rendered = ChatTemplate(CHATML, bos_token="", eos_token="").render(out)
    assert "<|im_start|>tool" not in rendered
    native = prompt_messages(messages, plan(), native=True)
    assert native[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}  # HF templates want a mapping


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_whitespace_around_calls_is_no_content_but_whitespace_inside_text_is(step):
    """The newline between two calls (or before the first) streams as no content delta at all, as a finished
    message has none; whitespace between words still reaches the text, and an answer of whitespace alone stays."""
    content, calls = stream_all(plan(), "\n" + CALL + "\n\n" + CALL.replace("Oslo", "Rome") + "\n", step)
    assert content == "" and len(calls) == 2
    assert stream_all(plan(), "Hello world, " + CALL, step) == ("Hello world,", stream_all(plan(), CALL, 1)[1])
    assert stream_all(plan(), "Hello \n world ", step) == ("Hello \n world ", [])
    assert stream_all(plan(), "  \n", step) == ("  \n", [])
