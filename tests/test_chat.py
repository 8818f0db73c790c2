"""/v1/chat/completions on the real model: response and chunk shapes, sampling controls, message forms.

Where the property is what the protocol hands the engine (ignored fields, nulls, content parts, refusals),
the test runs in process over the fake engine and compares the engine requests themselves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from wire import (
    MODEL,
    NO_EOS,
    POEM,
    assert_error,
    assert_serves,
    chat_body,
    chat_text,
    finish_reasons,
    post_ok,
    stream,
)

CHAT = "/v1/chat/completions"


def greedy(client, **fields) -> dict:
    """A greedy chat answer that runs to max_tokens (24 unless given)."""
    body = chat_body(**{"max_tokens": 24, "temperature": 0, "logit_bias": NO_EOS, **fields})
    return post_ok(client, CHAT, body)


def content(answer: dict, index: int = 0) -> str:
    return answer["choices"][index]["message"]["content"]


@pytest.fixture(scope="module")
def reference(base_url: str) -> Iterator[str]:
    """The greedy answer to POEM (24 tokens): computed once, compared by several tests."""
    with httpx.Client(base_url=base_url, timeout=120.0) as c:
        yield content(greedy(c))


def submitted(fake: Any, body: dict[str, Any], **kwargs: Any) -> Any:
    """The engine request the in-process app made of `body`."""
    r = fake.client.post(CHAT, json=body, **kwargs)
    assert r.status_code == 200, r.text
    return fake.engine.submitted[-1]


def test_answer_has_the_openai_shape(client):
    started = int(time.time())
    r = client.post(CHAT, json=chat_body("Hi", max_tokens=16))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["id"].startswith("chatcmpl-") and len(body["id"]) > len("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert started - 5 <= body["created"] <= time.time() + 5
    assert body["model"] == MODEL
    assert "error" not in body
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    assert choice["logprobs"] is None
    usage = body["usage"]
    assert usage["prompt_tokens"] > 1
    assert 1 <= usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 0 <= usage["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens"]


def test_ids_are_unique_per_answer(client):
    ids = {post_ok(client, CHAT, chat_body("Hi", max_tokens=1))["id"] for _ in range(3)}
    assert len(ids) == 3


def test_default_alias_and_missing_model_serve_the_default(client, reference):
    by_alias = greedy(client, model="default")
    assert content(by_alias) == reference
    body = chat_body(max_tokens=24, temperature=0, logit_bias=NO_EOS)
    del body["model"]
    assert content(post_ok(client, CHAT, body)) == reference


def test_stream_chunks_are_well_formed(client):
    chunks = stream(client, CHAT, chat_body("Hi", max_tokens=8, logit_bias=NO_EOS))
    assert len(chunks) >= 3
    ids = {ch["id"] for ch in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert len({ch["created"] for ch in chunks}) == 1
    for ch in chunks:
        assert ch["object"] == "chat.completion.chunk"
        assert ch["model"] == MODEL
        assert "usage" not in ch or ch["usage"] is None  # only with include_usage
        assert len(ch["choices"]) == 1
        assert ch["choices"][0]["index"] == 0
    deltas = [ch["choices"][0]["delta"] for ch in chunks]
    assert deltas[0]["role"] == "assistant"
    assert all("role" not in d for d in deltas[1:]), deltas
    assert [ch["choices"][0]["finish_reason"] for ch in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chat_text(chunks)


def test_include_usage_adds_a_final_usage_chunk(client):
    body = chat_body(max_tokens=8, temperature=0, logit_bias=NO_EOS, stream_options={"include_usage": True})
    chunks = stream(client, CHAT, body)
    last = chunks[-1]
    assert last["object"] == "chat.completion.chunk"
    assert last["choices"] == []
    usage = last["usage"]
    assert usage["completion_tokens"] == 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8
    assert all(ch["choices"] for ch in chunks[:-1])
    assert finish_reasons(chunks) == ["length"]
    plain = greedy(client, max_tokens=8)
    assert usage["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    assert chat_text(chunks) == content(plain)


def test_greedy_stream_equals_non_stream(client):
    answer = post_ok(client, CHAT, chat_body(max_tokens=32, temperature=0))
    chunks = stream(client, CHAT, chat_body(max_tokens=32, temperature=0))
    assert chat_text(chunks) == content(answer)
    assert finish_reasons(chunks) == [answer["choices"][0]["finish_reason"]]


@pytest.mark.parametrize("as_list", [False, True], ids=["string", "list"])
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_stop_string_ends_the_answer_and_is_never_emitted(client, as_list, streamed):
    full = content(greedy(client))
    # A stop that straddles token boundaries somewhere in the middle of the greedy answer.
    stop = full[12:17]
    assert len(stop.strip()) >= 3, full
    expected = full[: full.find(stop)]
    stop_field = ["never-in-this-answer", stop] if as_list else stop
    fields = {"max_tokens": 24, "temperature": 0, "logit_bias": NO_EOS, "stop": stop_field}
    if streamed:
        chunks = stream(client, CHAT, chat_body(**fields))
        text, finish = chat_text(chunks), finish_reasons(chunks)
    else:
        answer = post_ok(client, CHAT, chat_body(**fields))
        text, finish = content(answer), [answer["choices"][0]["finish_reason"]]
    assert text == expected
    assert stop not in text
    assert finish == ["stop"]


def test_same_seed_same_output_different_seed_different_output(client):
    fields = {"max_tokens": 24, "temperature": 1.0, "logit_bias": NO_EOS}
    a = content(post_ok(client, CHAT, chat_body(seed=1234, **fields)))
    b = content(post_ok(client, CHAT, chat_body(seed=1234, **fields)))
    c = content(post_ok(client, CHAT, chat_body(seed=4321, **fields)))
    assert a == b
    assert a != c


def test_seeded_stream_matches_seeded_answer(client):
    fields = {"max_tokens": 16, "temperature": 1.0, "seed": 99, "logit_bias": NO_EOS}
    assert chat_text(stream(client, CHAT, chat_body(**fields))) == content(post_ok(client, CHAT, chat_body(**fields)))


def test_sampling_without_seed_varies(client):
    fields = {"max_tokens": 24, "temperature": 1.5, "logit_bias": NO_EOS}
    texts = {content(post_ok(client, CHAT, chat_body(**fields))) for _ in range(3)}
    assert len(texts) > 1


@pytest.mark.parametrize(
    "limits, expected",
    [({"max_tokens": 5}, 5), ({"max_completion_tokens": 7}, 7), ({"max_tokens": 3, "max_completion_tokens": 6}, 6)],
    ids=["max_tokens", "max_completion_tokens", "both-newer-wins"],
)
def test_token_limits_are_honoured(client, limits, expected):
    answer = post_ok(client, CHAT, chat_body(logit_bias=NO_EOS, **limits))
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == expected
    chunks = stream(client, CHAT, chat_body(logit_bias=NO_EOS, stream_options={"include_usage": True}, **limits))
    assert chunks[-1]["usage"]["completion_tokens"] == expected
    assert finish_reasons(chunks) == ["length"]


def test_natural_end_is_finish_reason_stop(client):
    answer = post_ok(client, CHAT, chat_body("Hi", max_tokens=200, temperature=0))
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] < 200
    assert "<|im_end|>" not in content(answer)


def test_n_returns_distinct_choices(client):
    answer = post_ok(client, CHAT, chat_body(n=3, max_tokens=6, temperature=1.0, seed=7, logit_bias=NO_EOS))
    choices = answer["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert all(c["finish_reason"] == "length" and c["message"]["role"] == "assistant" for c in choices)
    assert len({c["message"]["content"] for c in choices}) > 1
    assert answer["usage"]["completion_tokens"] == 18
    single = post_ok(client, CHAT, chat_body(max_tokens=6, logit_bias=NO_EOS))
    assert answer["usage"]["prompt_tokens"] == single["usage"]["prompt_tokens"]  # the prompt counts once
    again = post_ok(client, CHAT, chat_body(n=3, max_tokens=6, temperature=1.0, seed=7, logit_bias=NO_EOS))
    assert [content(again, i) for i in range(3)] == [content(answer, i) for i in range(3)]


def test_n_streams_every_choice(client):
    chunks = stream(client, CHAT, chat_body(n=2, max_tokens=5, logit_bias=NO_EOS))
    for index in (0, 1):
        mine = [ch["choices"][0] for ch in chunks if ch["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert all("role" not in c["delta"] for c in mine[1:])
        assert finish_reasons(chunks, index) == ["length"]
        assert chat_text(chunks, index)
    assert all(len(ch["choices"]) == 1 for ch in chunks)


def test_logprobs_have_the_chat_shape(client):
    answer = greedy(client, max_tokens=6, logprobs=True, top_logprobs=3)
    entries = answer["choices"][0]["logprobs"]["content"]
    assert len(entries) == 6 == answer["usage"]["completion_tokens"]
    assert "".join(e["token"] for e in entries) == content(answer)
    for e in entries:
        assert set(e) == {"token", "logprob", "bytes", "top_logprobs"}
        assert e["logprob"] <= 0.0
        assert bytes(e["bytes"]).decode("utf-8", "replace") == e["token"]
        tops = e["top_logprobs"]
        assert len(tops) == 3
        assert all(set(t) == {"token", "logprob", "bytes"} for t in tops)
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert tops[0]["token"] == e["token"] and tops[0]["logprob"] == pytest.approx(e["logprob"])
    assert greedy(client, max_tokens=6)["choices"][0]["logprobs"] is None


def test_logprobs_stream_one_entry_per_token(client):
    chunks = stream(client, CHAT, chat_body(max_tokens=5, temperature=0, logit_bias=NO_EOS, logprobs=True, top_logprobs=2))
    entries = [e for ch in chunks if ch["choices"][0]["logprobs"] for e in ch["choices"][0]["logprobs"]["content"]]
    assert len(entries) == 5
    assert "".join(e["token"] for e in entries) == chat_text(chunks)
    assert all(len(e["top_logprobs"]) == 2 for e in entries)


def test_top_p_near_zero_is_greedy(client, reference):
    for seed in (1, 2):
        assert content(greedy(client, temperature=1.0, top_p=0.01, seed=seed)) == reference


def test_penalties_change_the_output(client, reference):
    assert content(greedy(client, frequency_penalty=2.0)) != reference
    assert content(greedy(client, presence_penalty=2.0)) != reference


def test_logit_bias_forces_a_token(client):
    answer = greedy(client, max_tokens=4, logprobs=True, logit_bias={"1000": 100})
    tokens = [e["token"] for e in answer["choices"][0]["logprobs"]["content"]]
    assert len(tokens) == 4 and len(set(tokens)) == 1
    assert content(answer) == tokens[0] * 4


def test_developer_role_is_a_system_message(client):
    def ask(role: str) -> dict:
        messages = [{"role": role, "content": "You are a pirate."}, {"role": "user", "content": "Hi"}]
        return greedy(client, messages=messages, max_tokens=4)

    developer, system = ask("developer"), ask("system")
    assert developer["usage"]["prompt_tokens"] == system["usage"]["prompt_tokens"]
    assert content(developer) == content(system)
    # Without a system turn the template adds its own default one: a different prompt.
    assert greedy(client, content="Hi", max_tokens=1)["usage"]["prompt_tokens"] != system["usage"]["prompt_tokens"]


def test_assistant_tool_turns_with_null_content_are_accepted(client):
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "So?"},
    ]
    answer = greedy(client, messages=messages, max_tokens=8)
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["usage"]["completion_tokens"] == 8
    assert answer["usage"]["prompt_tokens"] > greedy(client, content="So?", max_tokens=1)["usage"]["prompt_tokens"]


def test_content_as_text_parts_equals_the_string(fake):
    parts = [{"type": "text", "text": "Write a poem "}, {"type": "text", "text": "about the sea."}]
    fields = {"max_tokens": 24, "temperature": 0, "logit_bias": NO_EOS}
    by_parts = submitted(fake, chat_body(**fields) | {"messages": [{"role": "user", "content": parts}]})
    assert by_parts == submitted(fake, chat_body(**fields))


def test_an_image_part_that_is_no_image_is_refused_with_400(fake):
    """Images are checked before any engine sees them (tests/test_images.py serves real ones)."""
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    r = fake.client.post(CHAT, json=chat_body(max_tokens=4) | {"messages": [{"role": "user", "content": parts}]})
    assert_error(r, 400, param="messages[0].content[1].image_url")
    assert "not a PNG, JPEG, GIF or BMP" in r.json()["error"]["message"]
    assert not fake.engine.submitted
    assert_serves(fake.client)


def test_unknown_fields_and_client_headers_are_ignored(fake):
    """The engine gets exactly the request it gets without them (so the model answers the same).
    (reasoning_effort is not ignored: it reaches the chat template, tests/test_reasoning_chat.py.)"""
    extras = {
        "store": False, "metadata": {"k": "v"}, "parallel_tool_calls": False,
        "service_tier": "auto", "modalities": ["text"], "prediction": None, "user": "u-1",
        "some_future_field": {"nested": [1, 2]},
        "messages": [{"role": "user", "content": "Write a poem about the sea.", "unknown_key": 1}],
        "stream_options": None,
    }
    body = chat_body(max_tokens=24, temperature=0, logit_bias=NO_EOS)
    headers = {
        "Authorization": "Bearer sk-anything", "X-Stainless-Lang": "python", "X-Stainless-Retry-Count": "0",
        "OpenAI-Organization": "org-x", "OpenAI-Project": "proj-x",
    }
    assert submitted(fake, body | extras, headers=headers) == submitted(fake, body)


def test_null_fields_mean_not_given(fake):
    # OpenAI's schema makes these nullable; clients serialise unset options as null.
    nulls = dict.fromkeys([
        "n", "stream", "logprobs", "top_logprobs", "temperature", "top_p", "stop", "seed", "stream_options",
        "presence_penalty", "frequency_penalty", "logit_bias", "user", "max_completion_tokens", "tools",
        "tool_choice", "response_format", "parallel_tool_calls", "metadata", "store",
    ])
    messages = [{"role": "user", "content": POEM, "name": None, "tool_calls": None, "tool_call_id": None}]
    r = fake.client.post(CHAT, json=chat_body(max_tokens=3, **nulls) | {"messages": messages})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    [choice] = r.json()["choices"]
    assert choice["logprobs"] is None and r.json()["usage"]["completion_tokens"] <= 3
    assert fake.engine.submitted[-1] == submitted(fake, chat_body(max_tokens=3))


def test_long_multi_token_prompt_completes(client):
    # Prefilling many tokens at once is what crashed llama.cpp's AMX path (docs/architecture.md); this
    # prompt (about 650 tokens) also spans more than one n_batch (512) chunk.
    text = " ".join(f"Item {i} is a {['red', 'green', 'blue'][i % 3]} box." for i in range(70))
    answer = greedy(client, content=text + "\nWhat colour is item 7?", max_tokens=8)
    assert answer["usage"]["prompt_tokens"] > 512
    assert answer["usage"]["completion_tokens"] == 8 and content(answer)
    chunks = stream(client, CHAT, chat_body(text[:400], max_tokens=4, logit_bias=NO_EOS))
    assert finish_reasons(chunks) == ["length"] and chat_text(chunks)


def test_models_endpoint_lists_every_id(client):
    r = client.get("/v1/models")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert sorted(ids) == ["default", MODEL]
    for card in body["data"]:
        assert card["object"] == "model" and isinstance(card["created"], int) and card["owned_by"]
    one = client.get(f"/v1/models/{MODEL}")
    assert one.status_code == 200 and one.json()["id"] == MODEL
    assert_error(client.get("/v1/models/nope"), 404, code="model_not_found")


def test_routes_without_the_v1_prefix(client):
    # llama.cpp's server answers both; some clients are configured without /v1.
    assert [m["id"] for m in client.get("/models").json()["data"]] == [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert post_ok(client, "/chat/completions", chat_body("Hi", max_tokens=1))["object"] == "chat.completion"
    assert post_ok(client, "/completions", {"prompt": "Hi", "max_tokens": 1})["object"] == "text_completion"
