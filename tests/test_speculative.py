"""Prompt-lookup speculative decoding: the same output as without it, fewer steps on answers that copy their input."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import pytest
from support.real_engine import GREEDY_NO_EOS, engine, request, run, text, tokens
from support.speculation import OFF, agreement, both, check_adapter_answer
from wire import NO_EOS, chat_body, chat_text, finish_reasons, metric, post_ok, stream

from nomoat.engine.engine import Engine
from nomoat.engine.types import SamplingParams, Speculation

PARAGRAPH = ("The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a can of oil and a "
             "rag for the lens. He had done this for thirty years, through storms and calm nights alike, and he "
             "knew every creak of the old iron steps.")
CODE = "def total(items):\n    x = 0\n    for i in items:\n        x += i\n    return x\n"
COPY = f"Repeat this paragraph exactly, word for word:\n\n{PARAGRAPH}"
EDIT = f"Rename the variable x to s in this code and show the whole function:\n\n```python\n{CODE}```"
NGRAM = Speculation("ngram", 8)


@pytest.fixture(scope="module")
def eng() -> Iterator[Engine]:
    # No prefix cache: a second run of a prompt then computes exactly what the first did.
    with engine(parallel=2, prefix_cache=False) as e:
        yield e




def test_greedy_copy_output_is_unchanged_and_drafts_are_accepted(eng):
    plain, spec, drafted, accepted = both(eng, NGRAM, request(COPY, 32, sampling=GREEDY_NO_EOS),
                                          request(EDIT, 32, sampling=GREEDY_NO_EOS))
    for p, s in zip(plain, spec, strict=True):
        print("greedy agreement:", agreement(tokens(p), tokens(s)), "of", len(tokens(p)))
        assert len(tokens(s)) == 32 and s[-1].finish_reason == "length"
        assert agreement(tokens(p), tokens(s)) >= 24, (text(p), text(s))
    assert accepted > 16 and drafted >= accepted, (drafted, accepted)


def test_sequences_drafting_in_one_batch_each_follow_their_own_output(eng):
    """Two sequences verify their drafts in the same llama_decode; each still follows its solo answer
    (compared as tests/test_batching.py does: the batch a token is computed in may move near-ties)."""
    jobs = [request(COPY, 24, sampling=GREEDY_NO_EOS, speculative=NGRAM),
            request(f"Repeat this code exactly:\n\n{CODE}", 24, sampling=GREEDY_NO_EOS, speculative=NGRAM)]
    solo = [tokens(run(eng, job)[0]) for job in jobs]
    accepted = eng.stats.accepted_tokens
    together = [tokens(events) for events in run(eng, *jobs)]
    assert eng.stats.accepted_tokens > accepted
    for i, out in enumerate(together):
        assert agreement(out, solo[i]) >= 8 and agreement(out, solo[i]) > agreement(out, solo[1 - i]), (i, out)


# Letters, spaces and punctuation only, ending at the first period: the copy fits it, a draft may not.
SENTENCE = r'root ::= [A-Za-z ,]+ "."'


def test_grammar_stop_and_logprobs_keep_working(eng):
    grammar = request(COPY, 24, sampling=dataclasses.replace(GREEDY_NO_EOS, grammar=SENTENCE), logprobs=True,
                      top_logprobs=2)
    stopped = request(COPY, 40, sampling=GREEDY_NO_EOS, stop=["thirty"])
    plain, spec, _, accepted = both(eng, NGRAM, grammar, stopped)
    assert accepted > 0
    assert text(spec[0]) == text(plain[0])
    assert text(spec[0]).endswith(".") and text(spec[0]).count(".") == 1
    for p, s in zip(plain[0], spec[0], strict=True):
        if p.logprob is not None:
            assert s.logprob == pytest.approx(p.logprob, abs=0.05)
            assert [t.token for t in s.top_logprobs or []] == [t.token for t in p.top_logprobs or []]
    assert text(spec[1]) == text(plain[1]) and "thirty" not in text(spec[1]) and "years" not in text(spec[1])
    assert spec[1][-1].finish_reason == "stop" and spec[1][-1].stop_sequence == "thirty"


def test_an_adapter_is_applied_to_the_drafts_it_verifies(eng, tmp_path):
    # The adapter's answer to the copy prompt starts as the paragraph does, then leaves it ("The lighthouse
    # keeper was a man who knew every creak of the old iron steps."): 6-token matches, drafted under it.
    check_adapter_answer(eng, NGRAM, COPY, tmp_path, max_tokens=32)


def test_sampled_output_follows_the_same_seeded_draws(eng):
    """Each emitted token is drawn once from the model's distribution given the tokens before it, so a
    seeded stream is the same with drafts (up to batch variance moving a draw across a boundary)."""
    sampling = SamplingParams(temperature=0.8, seed=7, logit_bias=GREEDY_NO_EOS.logit_bias)
    plain, spec, _, accepted = both(eng, NGRAM, request(COPY, 24, sampling=sampling))
    assert agreement(tokens(spec[0]), tokens(plain[0])) >= 16, (text(plain[0]), text(spec[0]))
    assert accepted > 0


def test_max_tokens_is_exact_when_drafts_run_past_it(eng):
    plain, spec, _, _ = both(eng, NGRAM, request(COPY, 13, sampling=GREEDY_NO_EOS))
    assert spec[0][-1].usage.completion_tokens == 13 == len(tokens(spec[0]))
    assert tokens(spec[0]) == tokens(plain[0])


def test_the_models_default_applies_to_requests_that_do_not_choose():
    with engine(parallel=1, speculative="ngram", speculative_n_max=4) as eng:
        events = run(eng, request(COPY, 16, sampling=GREEDY_NO_EOS))[0]
        assert len(tokens(events)) == 16 and 0 < eng.stats.accepted_tokens <= eng.stats.drafted_tokens
        drafted = eng.stats.drafted_tokens
        run(eng, request(COPY, 8, sampling=GREEDY_NO_EOS, speculative=OFF))
        assert eng.stats.drafted_tokens == drafted


def test_a_streamed_chat_with_speculation_over_http(client):
    """End to end on the shared server: several tokens may come from one step, each still its own chunk."""
    body = chat_body(COPY, max_tokens=24, temperature=0, logit_bias=NO_EOS)
    plain = post_ok(client, "/v1/chat/completions", {**body, "speculative": {"type": "none"}})
    chunks = stream(client, "/v1/chat/completions", {**body, "speculative": {"type": "ngram", "n_max": 6},
                                                     "stream_options": {"include_usage": True}})
    assert chunks[-1]["usage"]["completion_tokens"] == 24
    assert finish_reasons(chunks) == ["length"]
    assert sum(1 for ch in chunks for c in ch["choices"] if c["delta"].get("content")) >= 20
    text_plain = plain["choices"][0]["message"]["content"]
    assert len(os.path.commonprefix([chat_text(chunks), text_plain])) >= 40, (chat_text(chunks), text_plain)
    assert (metric(client.get("/metrics").text, "nomoat_speculative_accepted_tokens_total",
                   model="smollm2-135m") or 0) > 0
