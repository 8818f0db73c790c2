"""/v1/embeddings through the real server: vectors, batching, token input, dimensions, base64, the SDK, refusals."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import signal
import time

import httpx
import llama_cpp
import numpy as np
import openai
import pytest
from conftest import TEST_N_CTX, TEST_THREADS, model_path, models_toml
from lora_factory import write_lora
from oracle import _no_repack
from streams import wait_for
from wire import MODEL, assert_error, assert_serves, metric, post_ok, tokenize

PATH = "/v1/embeddings"
N_EMBD = 576  # SmolLM2-135M
CAT = "The cat sat on the mat"
CAT2 = "A cat is sitting on a mat"
TAX = "Quarterly tax filing deadlines"
# Just longer than the embedder's n_batch (512; 551 tokens): evaluated in chunks over the KV cache.
LONG = " ".join(f"Line {i}: the river bends past the mill and the old stone bridge." for i in range(33))


def embed(client: httpx.Client, inputs, **fields) -> dict:
    return post_ok(client, PATH, {"model": MODEL, "input": inputs, **fields})


def vectors(body: dict) -> np.ndarray:
    assert [d["index"] for d in body["data"]] == list(range(len(body["data"])))
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float64)


@pytest.fixture(scope="module")
def oracle_vectors() -> dict[str, np.ndarray]:
    """llama-cpp-python's own `Llama.embed` (llama.cpp pools, mean, whole input in one micro-batch)."""
    with _no_repack():
        llm = llama_cpp.Llama(
            str(model_path()), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, n_ctx=TEST_N_CTX,
            n_batch=TEST_N_CTX, n_ubatch=TEST_N_CTX, n_threads=TEST_THREADS, flash_attn=True, verbose=False,
        )
    try:
        return {text: np.array(llm.embed(text, normalize=True)) for text in (CAT, LONG)}
    finally:
        llm.close()


def test_one_string_is_a_unit_vector_of_the_model_width(client):
    body = embed(client, CAT)
    assert body["object"] == "list" and body["model"] == MODEL
    assert len(body["data"]) == 1
    item = body["data"][0]
    assert item["object"] == "embedding" and item["index"] == 0
    assert len(item["embedding"]) == N_EMBD
    assert np.linalg.norm(item["embedding"]) == pytest.approx(1.0, abs=1e-5)
    n = len(tokenize(CAT))
    assert body["usage"] == {"prompt_tokens": n, "total_tokens": n}


def test_same_input_same_vector(client):
    assert vectors(embed(client, CAT)).tolist() == vectors(embed(client, CAT)).tolist()


def test_matches_llama_cpp_pooling_for_short_and_chunked_inputs(client, oracle_vectors):
    assert len(tokenize(LONG)) > 512
    # Chunks (512 + 39 tokens) against one micro-batch: components differ by up to 2.0e-4 (measured),
    # while leaving out the last 39 tokens moves one by 4.5e-3 (measured with the oracle).
    for text, tolerance in ((CAT, 1e-4), (LONG, 5e-4)):
        ours = vectors(embed(client, text))[0]
        assert np.abs(ours - oracle_vectors[text]).max() < tolerance, text[:20]


def test_a_batch_equals_each_input_alone_in_order(client):
    texts = [CAT, TAX, "hello", CAT2]  # a chunked input alone: test_matches_llama_cpp_pooling...
    batch = embed(client, texts)
    singles = np.array([vectors(embed(client, t))[0] for t in texts])
    assert np.abs(vectors(batch) - singles).max() < 1e-4
    assert batch["usage"]["prompt_tokens"] == sum(len(tokenize(t)) for t in texts)


def test_similar_sentences_are_closer_than_unrelated_ones(client):
    cat, cat2, tax = vectors(embed(client, [CAT, CAT2, TAX]))
    # Measured with SmolLM2-135M: cat·cat2 0.93, cat·tax 0.70, cat2·tax 0.80.
    assert cat @ cat2 > cat @ tax + 0.05
    assert cat @ cat2 > cat2 @ tax + 0.05


def test_token_ids_embed_like_their_text(client):
    tokens = tokenize(CAT)
    text = vectors(embed(client, CAT))[0]
    one = embed(client, tokens)
    assert np.abs(vectors(one)[0] - text).max() < 1e-6
    assert one["usage"]["prompt_tokens"] == len(tokens)
    several = vectors(embed(client, [tokens, tokenize(TAX)]))
    assert np.abs(several[0] - text).max() < 1e-4


def test_dimensions_truncate_then_renormalise(client):
    full = vectors(embed(client, CAT))[0]
    short = vectors(embed(client, CAT, dimensions=64))[0]
    assert short.shape == (64,)
    assert np.linalg.norm(short) == pytest.approx(1.0, abs=1e-5)
    assert np.abs(short - full[:64] / np.linalg.norm(full[:64])).max() < 1e-6
    assert len(embed(client, CAT, dimensions=N_EMBD)["data"][0]["embedding"]) == N_EMBD


def test_base64_is_little_endian_float32_of_the_same_vector(client):
    floats = embed(client, [CAT, TAX])
    packed = embed(client, [CAT, TAX], encoding_format="base64")
    for f, b in zip(floats["data"], packed["data"], strict=False):
        assert isinstance(b["embedding"], str)
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert decoded.tolist() == np.array(f["embedding"], dtype=np.float32).tolist()
    assert packed["usage"] == floats["usage"]


def test_openai_sdk_sync_and_async(base_url, client):
    expected = vectors(embed(client, [CAT, TAX]))
    with openai.OpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0, timeout=120) as sdk:
        default = sdk.embeddings.create(model=MODEL, input=[CAT, TAX])  # the SDK asks for base64
        floats = sdk.embeddings.create(model=MODEL, input=CAT, encoding_format="float")
        short = sdk.embeddings.create(model=MODEL, input=CAT, dimensions=32)
    assert default.object == "list" and default.model == MODEL
    assert np.abs(np.array([d.embedding for d in default.data]) - expected).max() < 1e-6
    assert np.abs(np.array(floats.data[0].embedding) - expected[0]).max() < 1e-6
    assert default.usage.prompt_tokens == default.usage.total_tokens == sum(len(tokenize(t)) for t in (CAT, TAX))
    assert len(short.data[0].embedding) == 32

    async def run() -> openai.types.CreateEmbeddingResponse:
        async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0, timeout=120) as sdk:
            return await sdk.embeddings.create(model=MODEL, input=[TAX, CAT])

    reply = asyncio.run(run())
    assert np.abs(np.array([d.embedding for d in reply.data]) - expected[::-1]).max() < 1e-4


def test_answered_without_the_v1_prefix_and_under_an_alias(client):
    body = post_ok(client, "/embeddings", {"model": "default", "input": "hi"})
    assert body["model"] == "default"
    assert len(body["data"][0]["embedding"]) == N_EMBD


@pytest.mark.parametrize("body, param, code", [
    ({"input": ""}, "input", "invalid_value"),
    ({"input": []}, "input", "invalid_value"),
    ({"input": ["a", ""]}, "input", "invalid_value"),
    ({"input": [[1, 2], []]}, "input", "invalid_value"),
    ({"input": 5}, "input", "invalid_value"),
    ({"input": ["a", 1]}, "input", "invalid_value"),
    ({"input": [1.5, 2]}, "input", "invalid_value"),
    ({"input": [True]}, "input", "invalid_value"),
    ({"input": {"text": "a"}}, "input", "invalid_value"),
    ({}, "input", "missing_required_parameter"),
    ({"input": ["a"] * 2049}, "input", "invalid_value"),
    ({"input": [49152]}, "input", ...),
    ({"input": [-1]}, "input", ...),
    ({"input": [7] * (TEST_N_CTX + 1)}, "input", "context_length_exceeded"),
    ({"input": ["fine", "word " * (TEST_N_CTX + 10)]}, "input", "context_length_exceeded"),
    ({"input": "a", "dimensions": 0}, "dimensions", "invalid_value"),
    ({"input": "a", "dimensions": N_EMBD + 1}, "dimensions", "invalid_value"),
    ({"input": "a", "dimensions": "many"}, "dimensions", "invalid_value"),
    ({"input": "a", "encoding_format": "float16"}, "encoding_format", "invalid_value"),
    ({"input": "a", "lora": [{"name": "x"}]}, "lora", ...),
], ids=lambda v: repr(v)[:40] if isinstance(v, dict) else None)
def test_bad_requests_are_400_with_their_param(client, body, param, code):
    assert_error(client.post(PATH, json={"model": MODEL, **body}), 400, param=param, code=code)


def test_refusals_leave_the_server_serving_embeddings_and_chat(client):
    assert_error(client.post(PATH, json={"model": "nope", "input": "a"}), 404, code="model_not_found", param="model")
    assert_error(client.post(PATH, content=b"{not json"), 400)
    assert_error(client.post(PATH, json=["a"]), 400)
    assert len(embed(client, CAT, user="someone", unknown_field=1)["data"][0]["embedding"]) == N_EMBD
    assert_serves(client)


def test_chat_runs_beside_embeddings_on_the_same_model(client):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        chats = [pool.submit(assert_serves, client) for _ in range(2)]
        batch = embed(client, [CAT, TAX, LONG])
        for chat in chats:
            chat.result()
    assert np.abs(vectors(batch)[0] - vectors(embed(client, CAT))[0]).max() < 1e-4
    assert_serves(client)


def test_requests_are_logged_and_counted_under_their_endpoint(client):
    labels = {"model": MODEL, "endpoint": PATH, "status": "200"}
    before = metric(client.get("/metrics").text, "nomoat_requests_total", **labels) or 0.0
    embed(client, CAT)
    assert metric(client.get("/metrics").text, "nomoat_requests_total", **labels) == before + 1


def test_a_client_that_gives_up_frees_the_embedder(client, base_url):
    # Tens of seconds of work on two cores, abandoned after one: it stops at its next decode.
    heavy = {"model": MODEL, "input": [f"{i} " + LONG for i in range(24)]}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(base_url + PATH, json=heavy, timeout=1.0)
    started = time.monotonic()
    embed(client, CAT)
    assert time.monotonic() - started < 20


def test_adapters_and_models_with_embeddings_off_are_refused_and_a_reload_frees_the_context(start_server, tmp_path):
    adapter = write_lora(tmp_path / "a.gguf", seed=1)
    config = models_toml(extra=f'[[adapters]]\nname = "a"\npath = "{adapter}"\n')
    srv = start_server(config)
    with httpx.Client(base_url=srv.base_url, timeout=60) as c:
        assert len(embed(c, CAT)["data"][0]["embedding"]) == N_EMBD
        error = assert_error(c.post(PATH, json={"model": "a", "input": "a"}), 400, param="model",
                             code="model_not_supported")
        assert "adapter" in error["message"]
        srv.config.write_text(config.replace('load = "startup"\n', 'load = "startup"\nembeddings = false\n'))
        srv.proc.send_signal(signal.SIGHUP)
        # The replaced model closes its embeddings context before its weights go.
        wait_for(lambda: "freed the embeddings context of smollm2-135m" in srv.log(), what="context freed")
        error = assert_error(c.post(PATH, json={"model": MODEL, "input": "a"}), 400, param="model",
                             code="model_not_supported")
        assert "does not support embeddings" in error["message"]
        assert_serves(c)
    assert srv.stop() == 0, srv.log()
