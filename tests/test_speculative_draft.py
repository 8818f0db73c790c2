"""Draft-model speculative decoding: the target's own output with drafts from a second model, refused when
the draft's vocabulary differs, counted in the metrics and the memory estimate."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.model import q8_model_path
from support.process import THREADS, ServerProcess
from support.real_engine import GREEDY_NO_EOS, engine, request, run, spec, text, tokens
from support.speculation import agreement, both, check_adapter_answer
from wire import NO_EOS, assert_error, chat_body, chat_text, finish_reasons, metric, post_ok, stream

from nomoat.config import ModelConfig, embedded_model_path
from nomoat.engine.engine import Engine
from nomoat.engine.errors import ModelFileError
from nomoat.engine.model import LoadedModel
from nomoat.engine.types import SamplingParams, Speculation
from nomoat.residency.footprint import estimate

PARAGRAPH = ("The old bridge crossed the river at its narrowest point, where the water ran fast and cold over "
             "dark stones. Farmers drove their carts across it every market day, and children dropped sticks "
             "from the rail to watch them race away downstream.")
CODE = "def mean(values):\n    n = 0\n    t = 0\n    for v in values:\n        t += v\n        n += 1\n    return t / n\n"
COPY = f"Repeat this paragraph exactly, word for word:\n\n{PARAGRAPH}"
EDIT = f"Rename the variable t to total in this code and show the whole function:\n\n```python\n{CODE}```"
DRAFT = Speculation("draft", 8)
SENTENCE = r'root ::= [A-Za-z ,]+ "."'  # letters and commas up to the first period


@pytest.fixture(scope="module")
def draft_path() -> Path:
    """The shipped Q4_1 file: the test model's vocabulary (that is its Q8_0 requantisation, support/model.py),
    slightly different weights."""
    return embedded_model_path()


@pytest.fixture(scope="module")
def eng(draft_path: Path) -> Iterator[Engine]:
    # No prefix cache: a second run of a prompt then computes exactly what the first did.
    with engine(parallel=2, prefix_cache=False, draft_model=draft_path) as e:
        yield e




def test_greedy_output_is_the_models_own_alone_and_drafting_together(eng):
    """Alone, each answer is the model's own; drafting in the same draft decodes and verified in the same
    llama_decode, each still follows its solo answer (as tests/test_batching.py compares: the batch may move
    near-ties). A requantised copy agrees with the model on nearly every token, free text included."""
    jobs = [request(COPY, 24, sampling=GREEDY_NO_EOS), request("Write a short story about a fox.", 24,
                                                               sampling=GREEDY_NO_EOS)]
    plain, solo, drafted, accepted = both(eng, DRAFT, *jobs)
    for p, s in zip(plain, solo, strict=True):
        print("greedy agreement:", agreement(tokens(p), tokens(s)), "of", len(tokens(p)))
        assert len(tokens(s)) == 24 and s[-1].finish_reason == "length"
        assert agreement(tokens(p), tokens(s)) >= 16, (text(p), text(s))
    assert accepted > 24 and drafted >= accepted, (drafted, accepted)
    accepted = eng.stats.accepted_tokens
    together = [tokens(events) for events in run(eng, *(dataclasses.replace(j, speculative=DRAFT) for j in jobs))]
    assert eng.stats.accepted_tokens - accepted > 16
    for i, out in enumerate(together):
        mine, other = agreement(out, tokens(solo[i])), agreement(out, tokens(solo[1 - i]))
        assert mine >= 8 and mine > other, (i, out)


def test_a_grammar_and_a_stop_string_keep_working(eng):
    grammar = request(COPY, 24, sampling=dataclasses.replace(GREEDY_NO_EOS, grammar=SENTENCE))
    stopped = request(COPY, 40, sampling=GREEDY_NO_EOS, stop=["river"])
    plain, spec, _, accepted = both(eng, DRAFT, grammar, stopped)
    assert accepted > 0
    assert text(spec[0]) == text(plain[0]) and text(spec[0]).endswith(".") and text(spec[0]).count(".") == 1
    assert text(spec[1]) == text(plain[1]) and "river" not in text(spec[1])
    assert spec[1][-1].finish_reason == "stop" and spec[1][-1].stop_sequence == "river"


def test_drafts_are_verified_under_the_sequences_adapter(eng, tmp_path):
    """The draft runs without adapters; the target verifies under the adapter, so its answer is the adapter's."""
    check_adapter_answer(eng, DRAFT, EDIT, tmp_path)


def test_sampled_output_follows_the_same_seeded_draws(eng):
    sampling = SamplingParams(temperature=0.8, seed=7, logit_bias=GREEDY_NO_EOS.logit_bias)
    plain, spec, _, accepted = both(eng, DRAFT, request(COPY, 24, sampling=sampling))
    assert agreement(tokens(spec[0]), tokens(plain[0])) >= 16, (text(plain[0]), text(spec[0]))
    assert accepted > 0


def _with_two_tokens_swapped(tmp_path: Path) -> Path:
    """A copy of the embedded model whose tokens "t" and "u" (ids 100 and 101) trade texts: another vocabulary,
    the same layout. GGUF strings are a little-endian u64 length and the bytes; the token list follows its key."""
    path = tmp_path / "swapped.gguf"
    shutil.copyfile(embedded_model_path(), path)
    one = (1).to_bytes(8, "little")
    with path.open("r+b") as fh:
        header = fh.read(8 << 20)  # the tokenizer arrays sit in the first megabytes, before any tensor
        at = header.index(one + b"t" + one + b"u", header.index(b"tokenizer.ggml.tokens"))
        fh.seek(at)
        fh.write(one + b"u" + one + b"t")
    return path


def test_a_draft_with_another_vocabulary_is_refused_at_load(tmp_path):
    swapped = _with_two_tokens_swapped(tmp_path)
    with pytest.raises(ModelFileError) as refused:
        LoadedModel(spec(parallel=1, n_ctx=256, draft_model=swapped))
    message = str(refused.value)
    print(message)
    assert str(swapped) in message and str(q8_model_path()) in message
    assert "vocabulary" in message and "token 100" in message


def test_the_memory_estimate_counts_the_draft(draft_path):
    plain = estimate(ModelConfig(name="m", path=str(embedded_model_path())))
    with_draft = estimate(ModelConfig(name="m", path=str(embedded_model_path()), draft_model=str(draft_path)))
    assert with_draft.total() - plain.total() > draft_path.stat().st_size
    assert with_draft.total(2) - with_draft.total(1) == plain.total(2) - plain.total(1)  # one draft context


def test_a_draft_request_on_a_model_without_one_is_a_400(client):
    body = {**chat_body("hi", max_tokens=4), "speculative": {"type": "draft"}}
    error = assert_error(client.post("/v1/chat/completions", json=body), 400, param="speculative")
    assert "no draft model" in error["message"], error
    r = client.post("/v1/messages", json=body)
    assert r.status_code == 400 and "no draft model" in r.json()["error"]["message"], r.text


@pytest.fixture(scope="module")
def draft_server(tmp_path_factory: pytest.TempPathFactory, draft_path: Path) -> Iterator[ServerProcess]:
    """The test model with the draft as its default speculation; the draft named relative to models.toml."""
    workdir = tmp_path_factory.mktemp("draft-server")
    shutil.copyfile(draft_path, workdir / "draft.gguf")
    config = (f'[[models]]\nname = "smollm2-135m"\npath = "{q8_model_path()}"\nn_ctx = 1024\nparallel = 2\n'
              f'n_threads = {THREADS}\nload = "startup"\nprefix_cache = false\ndraft_model = "draft.gguf"\n'
              'speculative = "draft"\n')
    proc = ServerProcess(config, workdir).wait_ready()
    yield proc
    proc.close()


def test_a_streamed_chat_drafts_by_the_models_default_over_http(draft_server):
    import httpx

    with httpx.Client(base_url=draft_server.base_url, timeout=300.0) as client:
        body = chat_body(COPY, max_tokens=16, temperature=0, logit_bias=NO_EOS)
        plain = post_ok(client, "/v1/chat/completions", {**body, "speculative": {"type": "none"}})
        text_plain = plain["choices"][0]["message"]["content"]
        chunks = stream(client, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
        assert chunks[-1]["usage"]["completion_tokens"] == 16 and finish_reasons(chunks) == ["length"]
        assert len(os.path.commonprefix([chat_text(chunks), text_plain])) >= 30, (chat_text(chunks), text_plain)
        whole = post_ok(client, "/v1/chat/completions", {**body, "speculative": {"type": "draft", "n_max": 4}})
        text_whole = whole["choices"][0]["message"]["content"]
        assert len(os.path.commonprefix([text_whole, text_plain])) >= 30, (text_whole, text_plain)
        assert (metric(client.get("/metrics").text, "nomoat_speculative_accepted_tokens_total",
                       model="smollm2-135m") or 0) > 0


def test_the_request_field_takes_draft(fake):
    body = {**chat_body("hi", max_tokens=4), "speculative": {"type": "draft", "n_max": 3}}
    assert fake.client.post("/v1/chat/completions", json=body).status_code == 200
    assert fake.engine.submitted[-1].speculative == Speculation("draft", 3)


def test_models_toml_names_a_draft_model(tmp_path):
    from nomoat import config

    path = tmp_path / "models.toml"
    (tmp_path / "small.gguf").write_bytes(b"")  # resolved here, read at load
    path.write_text('[[models]]\nname = "m"\ndraft_model = "small.gguf"\nspeculative = "draft"\n')
    (model,) = config.parse_models(config.read_config_file(path), str(path), tmp_path).models
    assert model.engine_options()["draft_model"] == tmp_path / "small.gguf"
    path.write_text('[[models]]\nname = "m"\nspeculative = "draft"\n')
    with pytest.raises(config.ConfigError, match="needs a draft_model"):
        config.parse_models(config.read_config_file(path), str(path), tmp_path)
    path.write_text('[[models]]\nname = "m"\ndraft_model = "missing.gguf"\n')
    with pytest.raises(config.ConfigError, match=r"models\.0\.draft_model.*missing\.gguf"):
        config.parse_models(config.read_config_file(path), str(path), tmp_path)
