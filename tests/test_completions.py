"""/v1/completions on the real model: raw prompts (no chat template), legacy shapes and logprobs."""

from __future__ import annotations

import pytest
from wire import (
    MODEL,
    NO_EOS,
    POEM,
    chat_body,
    completion_body,
    completion_text,
    finish_reasons,
    post_ok,
    stream,
    tokenize,
)

COMPLETIONS = "/v1/completions"
PROMPT = "The capital of France is"
# What SmolLM2's chat template renders for one user turn of POEM (no system turn given).
CHATML_POEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    f"<|im_start|>user\n{POEM}<|im_end|>\n<|im_start|>assistant\n"
)


def greedy(client, prompt=PROMPT, **fields) -> dict:
    body = completion_body(prompt, **{"max_tokens": 16, "temperature": 0, "logit_bias": NO_EOS, **fields})
    return post_ok(client, COMPLETIONS, body)


def text(answer: dict, index: int = 0) -> str:
    return answer["choices"][index]["text"]


def test_answer_has_the_legacy_shape(client):
    answer = greedy(client, max_tokens=8)
    assert answer["id"].startswith("cmpl-")
    assert answer["object"] == "text_completion"
    assert answer["model"] == MODEL and isinstance(answer["created"], int)
    [choice] = answer["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert isinstance(choice["text"], str) and choice["text"]
    assert not choice["text"].startswith(PROMPT)  # no echo unless asked
    usage = answer["usage"]
    assert usage["completion_tokens"] == 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8


def test_no_chat_template_is_applied(client):
    raw = greedy(client, POEM, max_tokens=1)
    assert raw["usage"]["prompt_tokens"] == len(tokenize(POEM))
    chat = post_ok(client, "/v1/chat/completions", chat_body(max_tokens=24, temperature=0, logit_bias=NO_EOS))
    assert chat["usage"]["prompt_tokens"] > raw["usage"]["prompt_tokens"] + 10
    # The template's own text sent raw is exactly the chat prompt: same tokens, same greedy answer.
    templated = greedy(client, CHATML_POEM, max_tokens=24)
    assert templated["usage"]["prompt_tokens"] == chat["usage"]["prompt_tokens"]
    assert text(templated) == chat["choices"][0]["message"]["content"]


def test_flattened_chat_prompt_is_continued_as_text(client):
    # llama-index's OpenAILike posts chat turns here as one flattened prompt.
    prompt = "user: Write a poem about the sea.\nassistant: "
    answer = greedy(client, prompt, max_tokens=8)
    assert answer["choices"][0]["finish_reason"] == "length"
    assert "<|im_start|>" not in text(answer)
    assert answer["usage"]["prompt_tokens"] < 20


def test_stream_chunks_are_well_formed(client):
    chunks = stream(client, COMPLETIONS, completion_body(max_tokens=6, temperature=0, logit_bias=NO_EOS))
    assert len({ch["id"] for ch in chunks}) == 1
    for ch in chunks:
        assert ch["object"] == "text_completion"
        assert ch["model"] == MODEL
        assert [c["index"] for c in ch["choices"]] == [0]
    assert finish_reasons(chunks) == ["length"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert completion_text(chunks) == text(greedy(client, max_tokens=6))


def test_include_usage_adds_a_final_usage_chunk(client):
    body = completion_body(max_tokens=5, logit_bias=NO_EOS, stream_options={"include_usage": True})
    chunks = stream(client, COMPLETIONS, body)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    assert chunks[-1]["usage"]["prompt_tokens"] == greedy(client, max_tokens=1)["usage"]["prompt_tokens"]
    assert all(ch["choices"] for ch in chunks[:-1])


def test_greedy_stream_equals_non_stream(client):
    body = completion_body("Once upon a time", max_tokens=32, temperature=0)
    answer = post_ok(client, COMPLETIONS, body)
    chunks = stream(client, COMPLETIONS, body)
    assert completion_text(chunks) == text(answer)
    assert finish_reasons(chunks) == [answer["choices"][0]["finish_reason"]]


@pytest.mark.parametrize("as_list", [False, True], ids=["string", "list"])
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_stop_string_ends_the_text_and_is_never_emitted(client, as_list, streamed):
    full = text(greedy(client, "Once upon a time", max_tokens=24))
    stop = full[10:15]
    assert len(stop.strip()) >= 3, full
    expected = full[: full.find(stop)]
    fields = {"max_tokens": 24, "temperature": 0, "logit_bias": NO_EOS, "stop": [stop, "\x00never"] if as_list else stop}
    body = completion_body("Once upon a time", **fields)
    if streamed:
        chunks = stream(client, COMPLETIONS, body)
        got, finish = completion_text(chunks), finish_reasons(chunks)
    else:
        answer = post_ok(client, COMPLETIONS, body)
        got, finish = text(answer), [answer["choices"][0]["finish_reason"]]
    assert got == expected and stop not in got
    assert finish == ["stop"]


def test_same_seed_same_output_different_seed_different_output(client):
    fields = {"max_tokens": 24, "temperature": 1.0, "logit_bias": NO_EOS}
    a, b = (text(post_ok(client, COMPLETIONS, completion_body(seed=5, **fields))) for _ in range(2))
    c = text(post_ok(client, COMPLETIONS, completion_body(seed=6, **fields)))
    assert a == b != c


def test_max_tokens_is_honoured(client):
    answer = greedy(client, max_tokens=3)
    assert answer["usage"]["completion_tokens"] == 3
    assert answer["choices"][0]["finish_reason"] == "length"


def test_token_prompt_equals_the_string_prompt(client):
    tokens = tokenize(PROMPT)
    by_tokens = greedy(client, tokens)
    assert by_tokens["usage"]["prompt_tokens"] == len(tokens)
    assert text(by_tokens) == text(greedy(client))


def test_several_prompts_and_n(client):
    answer = greedy(client, ["Hi there", "One, two,"], max_tokens=3, n=2, temperature=1.0, seed=3)
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2, 3]
    assert all(c["finish_reason"] == "length" and c["text"] for c in answer["choices"])
    assert answer["usage"]["completion_tokens"] == 12
    # Each distinct prompt counts once, not once per copy.
    one = greedy(client, "Hi there", max_tokens=1)["usage"]["prompt_tokens"]
    two = greedy(client, "One, two,", max_tokens=1)["usage"]["prompt_tokens"]
    assert answer["usage"]["prompt_tokens"] == one + two
    # Choices of one prompt are in one order: the second prompt's greedy text, alone, matches.
    assert text(greedy(client, ["Hi there", "One, two,"], max_tokens=3), 1) == text(greedy(client, "One, two,", max_tokens=3))


def test_null_fields_mean_not_given(client):
    nulls = dict.fromkeys(["n", "stream", "logprobs", "echo", "suffix", "best_of", "temperature", "stop", "seed",
                           "stream_options", "user", "logit_bias"])
    answer = post_ok(client, COMPLETIONS, completion_body(max_tokens=3, **nulls))
    [choice] = answer["choices"]
    assert choice["logprobs"] is None and not choice["text"].startswith(PROMPT)


def test_logprobs_have_the_legacy_shape(client):
    answer = greedy(client, max_tokens=6, logprobs=2)
    lp = answer["choices"][0]["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 6
    assert "".join(lp["tokens"]) == text(answer)
    offset = 0
    for token, logprob, top, at in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], lp["text_offset"], strict=False):
        assert at == offset
        offset += len(token)
        assert logprob <= 0.0
        assert isinstance(top, dict) and 1 <= len(top) <= 2
        assert max(top, key=top.get) == token  # greedy picks the most likely token
        assert top[token] == pytest.approx(logprob)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_text_offsets_count_characters_when_tokens_split_them(client, streamed):
    # The model answers emoji with emoji: tokens that each hold part of one character's bytes.
    body = completion_body("😀😀😀😀😀", max_tokens=12, temperature=0, logit_bias=NO_EOS, logprobs=1)
    if streamed:
        chunks = stream(client, COMPLETIONS, body)
        got = completion_text(chunks)
        lps = [ch["choices"][0]["logprobs"] for ch in chunks if ch["choices"][0]["logprobs"]]
        tokens = [t for lp in lps for t in lp["tokens"]]
        offsets = [o for lp in lps for o in lp["text_offset"]]
    else:
        answer = greedy(client, "😀😀😀😀😀", max_tokens=12, logprobs=1)
        got, lp = text(answer), answer["choices"][0]["logprobs"]
        tokens, offsets = lp["tokens"], lp["text_offset"]
    assert any("\ufffd" in t for t in tokens), tokens  # some token is part of a character
    assert offsets == sorted(offsets) and offsets[-1] < len(got)
    for token, at in zip(tokens, offsets, strict=False):
        if "\ufffd" not in token:
            assert got[at : at + len(token)] == token, (got, tokens, offsets)


def test_echo_prepends_the_prompt_and_shifts_offsets(client):
    answer = greedy(client, max_tokens=4, logprobs=1, echo=True)
    assert text(answer).startswith(PROMPT)
    assert text(answer)[len(PROMPT):] == text(greedy(client, max_tokens=4))
    assert answer["choices"][0]["logprobs"]["text_offset"][0] == len(PROMPT)


def test_logprobs_stream(client):
    chunks = stream(client, COMPLETIONS, completion_body(max_tokens=4, temperature=0, logit_bias=NO_EOS, logprobs=1))
    tokens = [t for ch in chunks for t in ((ch["choices"][0]["logprobs"] or {}).get("tokens") or [])]
    offsets = [o for ch in chunks for o in ((ch["choices"][0]["logprobs"] or {}).get("text_offset") or [])]
    assert len(tokens) == 4
    assert "".join(tokens) == completion_text(chunks)
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(4)]
