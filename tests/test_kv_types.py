"""KV cache types (cache_type_k / cache_type_v): their size, the settings llama.cpp refuses, and quality against f16."""

from __future__ import annotations

import asyncio
import os

import pytest
from support.real_engine import GREEDY_NO_EOS, engine, request, run, text, tokens

from nomoat import config
from nomoat.config import embedded_model_path
from nomoat.engine.base_info import BaseModelInfo
from nomoat.engine.embedder import Embedder
from nomoat.engine.kv import KVCacheTypes, kv_bytes_per_token
from nomoat.engine.types import TextPrompt
from nomoat.errors import ConfigError
from nomoat.models_toml import ModelConfig
from nomoat.residency.footprint import estimate

PROMPTS = ["Name three colors.", "Write a haiku about rain.", "What is the capital of France?",
           "How do I boil an egg?"]
N_TOKENS = 16


@pytest.fixture(scope="module")
def meta() -> BaseModelInfo:
    return BaseModelInfo.from_gguf(embedded_model_path())


def test_kv_bytes_per_token_follows_the_block_sizes(meta):
    # SmolLM2-135M: 30 layers, 3 KV heads of 64: an f16 row is 384 bytes, a q8_0 row 6 blocks of 34.
    assert (meta.n_layer, meta.n_head_kv, meta.head_dim_k) == (30, 3, 64)
    assert kv_bytes_per_token(meta) == 30 * 2 * 384
    assert kv_bytes_per_token(meta, "q8_0", "q8_0") == 30 * 2 * 6 * 34
    assert kv_bytes_per_token(meta, "q4_0", "q4_0") == 30 * 2 * 6 * 18
    assert kv_bytes_per_token(meta, "q8_0", "f16") == 30 * (6 * 34 + 384)
    assert "47% less than f16" in KVCacheTypes("q8_0", "q8_0").describe(meta, 4096)


def test_a_quantised_v_cache_without_flash_attention_is_a_config_error(tmp_path, meta):
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nname = "m"\ncache_type_v = "q8_0"\nflash_attn = "off"\n')
    with pytest.raises(ConfigError, match="cache_type_v = 'q8_0' needs flash attention"):
        config.parse_models(config.read_config_file(path), str(path), tmp_path)
    path.write_text('[[models]]\nname = "m"\ncache_type_k = "q5_1"\n')
    with pytest.raises(ConfigError, match="cache_type_k"):
        config.parse_models(config.read_config_file(path), str(path), tmp_path)
    assert "flash attention" in (KVCacheTypes("f16", "q4_0", "off").problem(meta) or "")
    assert KVCacheTypes("q8_0", "q8_0", "on").problem(meta) is None


def greedy(**settings) -> list[list[int]]:
    """Every prompt in one batch: both cache types see the same batch composition."""
    with engine(parallel=len(PROMPTS), **settings) as eng:
        return [tokens(out) for out in run(eng, *(request(p, N_TOKENS, sampling=GREEDY_NO_EOS) for p in PROMPTS))]


def test_q8_0_cache_mostly_agrees_with_f16_greedy_output():
    """Measured on the embedded model (24 tokens, 5 prompts, one batch): q8_0 K+V shared 13-24 leading
    tokens with f16 per prompt (mean 20); one prompt at a time, 6-32 of 32, like a change of batch
    composition does (docs/architecture.md). q4_0 drifts sooner (0-32, one prompt differing from the
    first token). The bound leaves room for CPU-dependent near-ties but fails on a broken cache."""
    f16 = greedy()
    q8 = greedy(cache_type_k="q8_0", cache_type_v="q8_0")
    agree = [len(os.path.commonprefix([a, b])) for a, b in zip(f16, q8, strict=True)]
    print("q8_0 vs f16 leading tokens in common:", agree)
    assert all(len(out) == N_TOKENS for out in q8)
    assert sum(agree) >= 0.3 * N_TOKENS * len(PROMPTS), agree
    assert sum(a >= 2 for a in agree) >= len(PROMPTS) - 1, agree


def test_q4_0_cache_loads_and_answers_in_generation_and_embeddings():
    with engine(parallel=1, cache_type_k="q4_0", cache_type_v="q4_0") as eng:
        answer = text(run(eng, request("What is the capital of France?", 8))[0])
        assert "Paris" in answer
        embedder = Embedder(eng.model, queue_size=1)
        try:
            result = asyncio.run(embedder.embed([TextPrompt("hello world")]))
        finally:
            embedder.close()
        assert result.vectors.shape[0] == 1
        assert abs(float((result.vectors[0] ** 2).sum()) - 1.0) < 1e-3


def test_the_memory_budget_counts_the_kv_cache_type(meta):
    """residency/footprint.py's estimate (what memory_budget checks before a load) uses the same block sizes."""
    path = str(embedded_model_path())
    f16 = estimate(ModelConfig(name="m", path=path, n_ctx=1024, parallel=2))
    q8 = estimate(ModelConfig(name="m", path=path, n_ctx=1024, parallel=2, cache_type_k="q8_0",
                                     cache_type_v="q8_0"))
    assert f16.kv_per_context == 1024 * 2 * kv_bytes_per_token(meta)
    assert q8.kv_per_context == 1024 * 2 * kv_bytes_per_token(meta, "q8_0", "q8_0")
    assert q8.total() < f16.total()
