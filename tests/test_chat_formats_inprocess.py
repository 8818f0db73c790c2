"""Every family's format on every API, whole and streamed, over the fake engine: the fake serves under each family's
real template (tests/data/templates/) and writes exactly what that family's model writes; reasoning and the call
must come back alike from chat completions, the Responses API and Anthropic's messages. tests/test_chat_formats.py
runs the real model; tests/test_formats_*.py hold llama.cpp's parse cases without any server."""

from __future__ import annotations

import pytest
from support import fake_engine
from support.chat_formats import APIS, ARGS, FAMILIES, MORE_FAMILIES, TEMPLATES, THINKS, THOUGHT, TOOL, ask
from support.inprocess import MODEL

from nomoat.engine.chat_template import ChatTemplate
from nomoat.formats import detect

pytestmark = pytest.mark.fast

# The fake's vocabulary holds characters below U+3000 only: DeepSeek's fullwidth markers are the real model's.
CASES = [f for f in FAMILIES + MORE_FAMILIES if all(ord(c) < 0x3000 for c in f[3])]


@pytest.mark.parametrize(("name", "template", "fmt", "written"), CASES, ids=[f[0] for f in CASES])
def test_every_api_reads_the_familys_calls_and_thinking(fake, monkeypatch: pytest.MonkeyPatch, name: str, template: str,
                                                       fmt: str, written: str) -> None:
    monkeypatch.setattr(fake_engine, "N_CTX", 16384)  # a character a token: Command R7B's preamble alone is 5k
    source = (TEMPLATES / f"{template}.jinja").read_text()
    fake.engine.model.chat_template = ChatTemplate(source, bos_token="<s>", eos_token="</s>")
    fake.engine.chat_format = detect(source)
    assert fake.engine.chat_format.name == fmt
    for api in APIS:
        for stream in (False, True):
            reasoning, content, calls = ask(fake.client, api, MODEL, stream=stream, say=f"SAY:{written}")
            assert calls == [("special_function", ARGS)], (api, stream, reasoning, content, calls)
            assert content.strip() == "", (api, stream, content)
            assert reasoning == (THOUGHT if name in THINKS else None), (api, stream, reasoning)


@pytest.mark.parametrize("template", ["mistralai-Mistral-Nemo-Instruct-2407", "Mistral-Small-3.2-24B-Instruct-2506"])
def test_a_clients_call_ids_reach_a_mistral_template_as_nine_alphanumerics(fake, template: str) -> None:
    """Mistral's templates raise on a call id that is not 9 alphanumerics: a client's own (`call_...`, as OpenAI's
    SDKs keep them) is mapped the same way in the call and in its result, so the conversation renders."""
    source = (TEMPLATES / f"{template}.jinja").read_text()
    fake.engine.model.chat_template = ChatTemplate(source, bos_token="<s>", eos_token="</s>")
    fake.engine.chat_format = detect(source)
    call = {"id": "call_Xy7_longer-than-nine", "type": "function",
            "function": {"name": "special_function", "arguments": '{"arg1": 1}'}}
    messages = [{"role": "user", "content": "Call it."}, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": "done"}]
    body = {"model": MODEL, "messages": messages, "tools": [TOOL]}
    r = fake.client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "You said: Call it."
    rendered = fake.client.post("/apply-template", json=body).json()["prompt"]
    assert "call_Xy7" not in rendered and '"arg1": 1' in rendered
