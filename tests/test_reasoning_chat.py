"""Chat answers with a thinking block: `reasoning_content` apart from the content, streamed and not, with
tool calls, a block the template opened, `reasoning_format` and template variables. In process over the
fake engine, then end to end on the real model with a grammar that makes it think first."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from support.inprocess import MODEL

from nomoat.engine.chat_template import CHATML, ChatTemplate
from nomoat.engine.errors import InvalidInput

CHAT = "/v1/chat/completions"
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
# A template that reads variables and, as DeepSeek-R1 distills do, opens the thinking block itself.
THINKING = CHATML.replace("{{ '<|im_start|>assistant\n' }}",
                          "{{ '<|im_start|>assistant\n' }}{% if enable_thinking is not false %}{{ '<think>\n' }}"
                          "{% endif %}{{ reasoning_effort or '' }}")


def body(say: str, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"SAY:{say}"}], **fields}


def streamed(client: Any, payload: dict[str, Any]) -> tuple[str, str, list[dict[str, Any]], str]:
    """The reasoning, content, tool-call deltas and last finish reason of a chat stream."""
    with client.stream("POST", CHAT, json={**payload, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        events = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: ") and ln != "data: [DONE]"]
    reasoning = content = finish = ""
    calls = []
    for event in events:
        choice = event["choices"][0]
        delta = choice["delta"]
        reasoning += delta.get("reasoning_content") or ""
        content += delta.get("content") or ""
        calls += delta.get("tool_calls") or []
        finish = choice["finish_reason"] or finish
    return reasoning, content, calls, finish


def answer(client: Any, payload: dict[str, Any]) -> dict[str, Any]:
    r = client.post(CHAT, json=payload)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def test_a_thinking_block_is_reasoning_content(fake) -> None:
    payload = body("<think>\nI ponder.\n</think>\n\nThe answer.")
    message = answer(fake.client, payload)["message"]
    assert (message["reasoning_content"], message["content"]) == ("I ponder.", "The answer.")
    assert streamed(fake.client, payload)[:2] == ("I ponder.", "The answer.")


def test_text_without_a_block_has_no_reasoning(fake) -> None:
    message = answer(fake.client, body("Just <think> text"))["message"]
    assert "reasoning_content" not in message and message["content"] == "Just <think> text"


def test_reasoning_then_a_tool_call(fake) -> None:
    payload = body(f"<think>Weather needs a tool.</think>\n{CALL}", tools=[WEATHER])
    choice = answer(fake.client, payload)
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["reasoning_content"] == "Weather needs a tool."
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert not choice["message"]["content"]
    reasoning, content, calls, finish = streamed(fake.client, payload)
    assert (reasoning, content, finish) == ("Weather needs a tool.", "", "tool_calls")
    assert calls[0]["function"]["name"] == "get_weather"


def test_a_block_the_template_opened(fake) -> None:
    fake.engine.model.chat_template = ChatTemplate(THINKING, bos_token="", eos_token="<|im_end|>")
    payload = body("Mulling it over.</think>Yes.")
    message = answer(fake.client, payload)["message"]
    assert (message["reasoning_content"], message["content"]) == ("Mulling it over.", "Yes.")
    assert streamed(fake.client, payload)[:2] == ("Mulling it over.", "Yes.")
    # With the variable that turns thinking off, the template opens nothing: the text is content.
    off = answer(fake.client, {**payload, "chat_template_kwargs": {"enable_thinking": False}})["message"]
    assert off["content"] == "Mulling it over.</think>Yes." and "reasoning_content" not in off


def test_reasoning_format_none_leaves_the_block_in_the_content(fake) -> None:
    text = "<think>hm</think>Yes."
    assert answer(fake.client, body(text, reasoning_format="none"))["message"]["content"] == text
    assert streamed(fake.client, body(text, reasoning_format="none"))[:2] == ("", text)
    fake.engine.reasoning_format = "none"  # as models.toml's reasoning_format = "none"
    assert answer(fake.client, body(text))["message"]["content"] == text
    assert answer(fake.client, body(text, reasoning_format="auto"))["message"]["reasoning_content"] == "hm"


def test_template_variables_reach_the_template(fake) -> None:
    fake.engine.model.chat_template = ChatTemplate(THINKING, bos_token="", eos_token="<|im_end|>")
    messages = [{"role": "user", "content": "hi"}]
    prompt = fake.client.post("/apply-template", json={"messages": messages, "reasoning_effort": "low"}).json()
    assert prompt["prompt"].endswith("assistant\n<think>\nlow")
    prompt = fake.client.post("/apply-template", json={"messages": messages,
                                                       "chat_template_kwargs": {"enable_thinking": False}}).json()
    assert prompt["prompt"].endswith("assistant\n")


@pytest.mark.parametrize(("fields", "param"), [
    ({"chat_template_kwargs": {"add_generation_prompt": False}}, "chat_template_kwargs"),
    ({"chat_template_kwargs": {"bos_token": "x"}}, "chat_template_kwargs"),
    ({"chat_template_kwargs": ["enable_thinking"]}, "chat_template_kwargs"),
    ({"reasoning_effort": "huge"}, "reasoning_effort"),
    ({"reasoning_format": "sideways"}, "reasoning_format"),
])
def test_bad_template_fields_are_400s(fake, fields: dict[str, Any], param: str) -> None:
    r = fake.client.post(CHAT, json=body("x", **fields))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_the_template_itself_refuses_reserved_variables() -> None:
    with pytest.raises(InvalidInput):
        ChatTemplate(CHATML, bos_token="", eos_token="").render([], variables={"messages": []})


# --- the real model -------------------------------------------------------------------------------

YES_NO = 'root ::= "yes" | "no"'
THINK_FIRST = 'root ::= "<think>" [a-z]{1,8} "</think>" [A-Za-z]{1,6}'


def test_real_grammar_on_chat_and_completions(client: httpx.Client) -> None:
    r = client.post(CHAT, json={"messages": [{"role": "user", "content": "Is water wet?"}], "grammar": YES_NO,
                                "max_tokens": 4, "temperature": 0})
    assert r.json()["choices"][0]["message"]["content"] in ("yes", "no")
    r = client.post("/v1/completions", json={"prompt": "Is water wet? Answer:", "grammar": YES_NO,
                                             "max_tokens": 4, "temperature": 0})
    assert r.json()["choices"][0]["text"] in ("yes", "no")


def test_real_model_made_to_think_first(client: httpx.Client) -> None:
    payload = {"messages": [{"role": "user", "content": "Is the sky blue?"}], "grammar": THINK_FIRST,
               "max_tokens": 32, "temperature": 0}
    choice = answer(client, payload)
    message = choice["message"]
    assert choice["finish_reason"] == "stop", choice
    assert message["reasoning_content"] and message["content"]
    assert "<think>" not in message["content"] and "</think>" not in message["reasoning_content"]
    assert streamed(client, payload)[:2] == (message["reasoning_content"], message["content"])


def test_every_protocol_splits_a_block_the_template_opened(fake) -> None:
    """The Responses and Messages APIs read the same template and model setting as chat."""
    fake.engine.model.chat_template = ChatTemplate(THINKING, bos_token="", eos_token="<|im_end|>")
    say = "SAY:Mulling it over.</think>Yes."
    r = fake.client.post("/v1/responses", json={"model": MODEL, "input": say, "store": False})
    assert r.status_code == 200, r.text
    items = r.json()["output"]
    assert [i["type"] for i in items] == ["reasoning", "message"], items
    assert items[0]["content"][0]["text"] == "Mulling it over." and items[1]["content"][0]["text"] == "Yes."
    r = fake.client.post("/v1/messages", json={"model": MODEL, "max_tokens": 64,
                                              "messages": [{"role": "user", "content": say}]})
    assert r.status_code == 200, r.text
    assert [(b["type"], b.get("thinking", b.get("text"))) for b in r.json()["content"]] == \
        [("thinking", "Mulling it over."), ("text", "Yes.")]
    fake.engine.reasoning_format = "none"
    r = fake.client.post("/v1/messages", json={"model": MODEL, "max_tokens": 64,
                                              "messages": [{"role": "user", "content": say}]})
    assert [b["type"] for b in r.json()["content"]] == ["text"]
