"""The official `openai` SDK, sync and async, stream and not, works against nomoat with no workaround."""

from __future__ import annotations

import asyncio

import openai
import pytest
from wire import MODEL, NO_EOS, POEM

MESSAGES = [{"role": "user", "content": POEM}]
GREEDY = {"temperature": 0, "max_tokens": 12, "extra_body": {"logit_bias": NO_EOS}}


@pytest.fixture()
def sdk(base_url):
    with openai.OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0, timeout=120) as c:
        yield c


def async_sdk(base_url) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0, timeout=120)


def test_models_list(sdk):
    models = list(sdk.models.list())
    assert {m.id for m in models} == {MODEL, "default"}
    assert all(m.object == "model" for m in models)
    assert sdk.models.retrieve(MODEL).id == MODEL


def test_chat_create(sdk):
    r = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, **GREEDY)
    assert r.object == "chat.completion" and r.model == MODEL
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12
    assert 0 <= r.usage.prompt_tokens_details.cached_tokens < r.usage.prompt_tokens  # LangChain reads it


def test_chat_stream_accumulates_to_the_same_text(sdk):
    whole = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, **GREEDY).choices[0].message.content
    chunks = list(sdk.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **GREEDY))
    roles = [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role]
    assert roles == ["assistant"]  # the SDK would concatenate a repeated role
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]


def test_chat_stream_helper(sdk):
    # The helper LangChain uses with response_format drops chunks whose object is not a chunk.
    hi = [{"role": "user", "content": "Hi"}]  # a short greeting: the answer ends by itself (the helper refuses `length`)
    with sdk.chat.completions.stream(model=MODEL, messages=hi, temperature=0, max_tokens=200) as s:
        deltas = [e.delta for e in s if e.type == "content.delta"]
        final = s.get_final_completion()
    assert final.choices[0].message.content == "".join(deltas)
    assert final.choices[0].message.content


def test_completions_create_and_stream(sdk):
    r = sdk.completions.create(model=MODEL, prompt="The capital of France is", **GREEDY)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.completion_tokens == 12
    chunks = list(sdk.completions.create(model=MODEL, prompt="The capital of France is", stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_logprobs(sdk):
    r = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, logprobs=True, top_logprobs=2, **GREEDY)
    content = r.choices[0].logprobs.content
    assert len(content) == 12
    assert "".join(t.token for t in content) == r.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 for t in content)


def test_async_client_stream_and_not(base_url):
    async def run() -> tuple[str, str, list[str], str]:
        async with async_sdk(base_url) as client:
            models = [m.id async for m in client.models.list()]
            whole = await client.chat.completions.create(model=MODEL, messages=MESSAGES, **GREEDY)
            streamed = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, **GREEDY)
            text = "".join([c.choices[0].delta.content or "" async for c in streamed if c.choices])
            completion = await client.completions.create(model=MODEL, prompt="Once upon a time", **GREEDY)
            stream_c = await client.completions.create(model=MODEL, prompt="Once upon a time", stream=True, **GREEDY)
            ctext = "".join([c.choices[0].text async for c in stream_c])
            assert ctext == completion.choices[0].text
            return whole.choices[0].message.content, text, models, ctext

    whole, text, models, ctext = asyncio.run(run())
    assert whole and text == whole
    assert MODEL in models and ctext


def test_errors_map_to_sdk_exceptions(fake):
    """Refusals, not the model (in process, the fake engine: "hello " * 3000 overflows its context too)."""
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="sk-test", max_retries=0, http_client=fake.client)
    with pytest.raises(openai.NotFoundError) as e:
        sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)
    assert e.value.code == "model_not_found" and e.value.param == "model" and e.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello " * 3000}], max_tokens=2)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=5)
    assert e.value.param == "temperature"
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2).choices[0].message.content
