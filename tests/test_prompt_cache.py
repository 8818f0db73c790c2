"""The prompt cache's RAM tier: a slot's state saved when another prompt takes the slot, restored when its prompt
returns, keyed by model, adapter set and KV layout, under a byte budget; `cache_prompt: false` opts out. The disk
tier across a real server's restart, seen through HTTP (usage and /metrics)."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest
from conftest import models_toml
from lora_factory import write_lora
from prometheus_client.parser import text_string_to_metric_families
from support.model import gemma_model_path
from support.process import ServerProcess
from support.real_engine import run, spec, text

from nomoat.engine.engine import Engine
from nomoat.engine.model import LoadedModel
from nomoat.engine.prompt_cache import CachedState, PromptCache, model_identity, state_identity
from nomoat.engine.prompt_disk import DiskTier, llama_build
from nomoat.engine.types import NO_ADAPTERS, AdapterSet, AppliedAdapter, GenerationRequest, SamplingParams, TextPrompt

TOPICS = ("lighthouses", "glaciers", "orchards")


def prompt(topic: str, adapters: AdapterSet = NO_ADAPTERS, **fields: object) -> GenerationRequest:
    """A ~50-token prompt (over the tests' 16-token floor), distinct from the first token on."""
    facts = " ".join(f"{topic} fact {i} is worth noting." for i in range(6))
    return GenerationRequest(prompt=TextPrompt(f"{topic.title()}: {facts} In short,"),
                             sampling=SamplingParams(temperature=0.0), max_tokens=6, adapters=adapters, **fields)


def engine(cache: PromptCache | None, **fields: object) -> Engine:
    return Engine(LoadedModel(spec(**fields)), queue_size=8, prompt_cache=cache)


def warm_oracle(eng: Engine, request: GenerationRequest) -> str:
    """The same prompt twice in its own slot: the second evaluates only the last prompt token on the KV the first
    left, which is what a restore does. (A cold prefill computes that token inside a batch of the whole prompt:
    llama.cpp's output depends on the batch, docs/architecture.md "Batch invariance", so that is no oracle.)"""
    run(eng, request)
    events = run(eng, request)[0]
    assert events[-1].usage is not None and events[-1].usage.cached_tokens == events[-1].usage.prompt_tokens - 1
    return text(events)


def round_robin(eng: Engine, requests: list[GenerationRequest], rounds: int = 2) -> list[list[tuple[str, int]]]:
    """Each request in turn, one at a time: (text, cached_tokens) per round."""
    out = []
    for _ in range(rounds):
        results = []
        for request in requests:
            events = run(eng, request)[0]
            usage = events[-1].usage
            assert usage is not None
            results.append((text(events), usage.cached_tokens))
        out.append(results)
    return out


async def adapter_set(eng: Engine, path, name: str) -> AdapterSet:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    lora = await asyncio.wrap_future(eng.load_adapter(name, path, path, digest))
    return AdapterSet((AppliedAdapter(name=name, scale=1.0, content_hash=digest, handle=lora),))


def test_a_returning_prompt_is_restored_and_answers_as_its_own_slot_would():
    with_cache = engine(PromptCache(64 << 20, min_tokens=16))
    oracle_engine = engine(None)
    try:
        expected = [warm_oracle(oracle_engine, prompt(t)) for t in TOPICS]
        first, again = round_robin(with_cache, [prompt(t) for t in TOPICS])
        assert all(cached < 8 for _, cached in first), "three prompts on two slots: each first visit is cold"
        n_prompt = [len(with_cache.model.render(prompt(t).prompt).tokens) for t in TOPICS]
        assert [cached for _, cached in again] == [n - 1 for n in n_prompt], "each return restores all but its last token"
        assert [answer for answer, _ in again] == expected
        stats = with_cache.stats
        # The third return finds its prompt still in its slot (the round's second prompt took the other one).
        assert stats.prompt_cache_hits == 2 and stats.prompt_cache_saves >= 2 and stats.prompt_cache_restore_seconds > 0
        assert 0 < with_cache.prompt_cache.bytes <= 64 << 20  # type: ignore[union-attr]
    finally:
        with_cache.close()
        oracle_engine.close()


def test_a_state_saved_under_one_adapter_set_is_restored_only_under_it(tmp_path):
    paths = [write_lora(tmp_path / f"{name}.gguf", seed=seed, std=0.12) for name, seed in (("a", 31), ("b", 32))]
    with_cache, oracle_engine = engine(PromptCache(64 << 20, min_tokens=16)), engine(None)
    try:
        a, b = (asyncio.run(adapter_set(with_cache, path, path.stem)) for path in paths)
        oracle_a = asyncio.run(adapter_set(oracle_engine, paths[0], "a"))
        expected = warm_oracle(oracle_engine, prompt(TOPICS[0], oracle_a))
        first, again = round_robin(with_cache, [prompt(t, a) for t in TOPICS])
        assert first[0][1] < 8 and again[0][1] > 16 and again[0][0] == expected
        # Under another set and under the base model the same prompt finds nothing: its KV differs.
        for other in (b, NO_ADAPTERS):
            run(with_cache, prompt(TOPICS[1], b))  # takes a slot away from the state under test (or restores its own)
            hits = with_cache.stats.prompt_cache_hits
            run(with_cache, prompt(TOPICS[0], other))
            assert with_cache.stats.prompt_cache_hits == hits, other
    finally:
        with_cache.close()
        oracle_engine.close()


def test_cache_prompt_false_neither_saves_nor_restores():
    eng = engine(PromptCache(64 << 20, min_tokens=16))
    try:
        round_robin(eng, [prompt(t, cache_prompt=False) for t in TOPICS], rounds=1)  # the third displaces the first
        assert eng.stats.prompt_cache_saves == 0 and eng.stats.prompt_cache_hits == 0
        round_robin(eng, [prompt(t) for t in TOPICS], rounds=1)  # saved now
        saves = eng.stats.prompt_cache_saves
        assert saves > 0
        run(eng, prompt(TOPICS[0], cache_prompt=False))  # saved by the round above, and not restored
        assert eng.stats.prompt_cache_hits == 0
    finally:
        eng.close()


def test_the_budget_holds_under_a_burst_of_distinct_prompts():
    eng = engine(None, parallel=1)
    try:
        size = len(eng.model.render(prompt("probe").prompt).tokens)
    finally:
        eng.close()
    # About two states of this size: the burst must evict, never exceed.
    budget = 2 * size * 23_040 + 200_000  # SmolLM2-135M: 30 layers × K and V × 3 heads × 64 dims × 2 bytes
    cache = PromptCache(budget, min_tokens=16)
    eng = engine(cache, parallel=1)
    try:
        for i in range(4):
            run(eng, prompt(f"topic{i}"))
            assert cache.bytes <= budget
        assert cache.evictions > 0 and len(cache) >= 1
    finally:
        eng.close()


def test_the_sliding_window_model_restores_a_returning_prompt():
    eng = Engine(LoadedModel(spec(path=gemma_model_path(), n_ctx=1280, n_batch=128, parallel=1)), queue_size=8,
                 prompt_cache=PromptCache(64 << 20, min_tokens=16))
    try:
        _, again = round_robin(eng, [prompt(t) for t in TOPICS[:2]])
        assert all(cached > 16 for _, cached in again) and eng.stats.prompt_cache_hits == 2, again
        run(eng, prompt(TOPICS[0]))  # restored again, then continued in its own slot: the oracle
        assert text(run(eng, prompt(TOPICS[0]))[0]) == again[0][0]
    finally:
        eng.close()


def test_states_go_to_disk_at_an_unload_and_a_new_engine_restores_them(tmp_path):
    def tier() -> DiskTier:
        return DiskTier(tmp_path / "prompt-cache", 64 << 20, llama_build(), min_tokens=16)

    disk = tier()
    eng = engine(PromptCache(64 << 20, min_tokens=16, spill=lambda e: disk.save(e.identity, e.tokens, e.state),
                             disk=disk), parallel=1)
    try:
        round_robin(eng, [prompt(TOPICS[0]), prompt(TOPICS[1])], rounds=1)
    finally:
        eng.close()  # the unload: the RAM tier's states are queued for the disk tier
        disk.close()
    disk = tier()  # as after a restart: the index is read back from the files
    eng = engine(PromptCache(64 << 20, min_tokens=16, disk=disk), parallel=1)
    try:
        [(answer, cached)] = round_robin(eng, [prompt(TOPICS[0])], rounds=1)[0]
        assert cached > 16 and eng.stats.prompt_cache_hits == 1
        assert text(run(eng, prompt(TOPICS[0]))[0]) == answer, "as its own slot answers"
    finally:
        eng.close()
        disk.close()


# --- a real server, restarted ------------------------------------------------------------------------------


def conversation(topic: str) -> str:
    """A ~110-token message: its state is past the 64-token floor of both tiers."""
    return f"Notes on {topic}. " + " ".join(f"{topic} fact {i} is worth noting." for i in range(12)) + " In short,"


def chat(base: str, topic: str) -> tuple[str, int]:
    r = httpx.post(f"{base}/v1/chat/completions", timeout=120, json={
        "model": "default", "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": conversation(topic)}]})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["choices"][0]["message"]["content"], body["usage"]["prompt_tokens_details"]["cached_tokens"]


def message(base: str, topic: str) -> tuple[str, int]:
    """Anthropic's protocol, whose usage names the restored tokens cache_read_input_tokens."""
    r = httpx.post(f"{base}/v1/messages", timeout=120, headers={"anthropic-version": "2023-06-01"}, json={
        "model": "default", "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": conversation(topic)}]})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["content"][0]["text"], body["usage"]["cache_read_input_tokens"]


def cache_gauges(base: str) -> dict[tuple[str, str], float]:
    """(metric, tier) → value of nomoat_prompt_cache_bytes and _entries."""
    families = text_string_to_metric_families(httpx.get(f"{base}/metrics", timeout=30).text)
    return {(s.name, s.labels["tier"]): s.value for f in families for s in f.samples
            if s.name in ("nomoat_prompt_cache_bytes", "nomoat_prompt_cache_entries")}


def test_a_restarted_server_restores_a_returning_conversation_from_disk(tmp_path):
    config = models_toml(parallel=1)  # one slot: each conversation takes it from the other
    state = tmp_path / "state"

    def start(run: str) -> ServerProcess:
        (tmp_path / run).mkdir()
        return ServerProcess(config, tmp_path / run, "--state-dir", str(state)).wait_ready()

    server = start("before")
    try:
        chat(server.base_url, "lighthouses")
        in_its_slot, cached = chat(server.base_url, "lighthouses")  # the oracle: continued in its own slot
        assert cached > 64
        message(server.base_url, "glaciers")
        glaciers, _ = message(server.base_url, "glaciers")  # took the slot: the lighthouses' state is saved
        assert chat(server.base_url, "lighthouses") == (in_its_slot, cached), "restored from RAM"
        gauges = cache_gauges(server.base_url)
        assert gauges[("nomoat_prompt_cache_bytes", "ram")] > 0 and gauges[("nomoat_prompt_cache_entries", "ram")] >= 1
        assert ("nomoat_prompt_cache_bytes", "disk") in gauges
        assert server.stop() == 0, server.log()[-3000:]  # the unload: the RAM tier goes to disk
    finally:
        server.close()
    server = start("after")
    try:
        gauges = cache_gauges(server.base_url)
        assert gauges[("nomoat_prompt_cache_bytes", "disk")] > 0 and gauges[("nomoat_prompt_cache_entries", "disk")] >= 2
        answer, cached_after = chat(server.base_url, "lighthouses")
        assert cached_after > 64 and answer == in_its_slot, "restored from disk, as its own slot answered"
        answer, cached_after = message(server.base_url, "glaciers")
        assert cached_after > 64 and answer == glaciers
    finally:
        server.close()


# --- the RAM tier alone -------------------------------------------------------------------------------------


def state(identity: str, tokens: range, size: int) -> CachedState:
    return CachedState(identity, tuple(tokens), bytes(size))


def test_least_recently_used_goes_first_and_spills():
    spilled: list[CachedState] = []
    cache = PromptCache(300, min_tokens=4, spill=spilled.append)
    a, b = state("m", range(10), 100), state("m", range(100, 110), 100)
    cache.put(a)
    cache.put(b)
    assert cache.best("m", [*range(8), 99], longer_than=0) == (a, 8)  # a is now the most recently used
    cache.put(state("m", range(200, 210), 150))
    assert spilled == [b] and cache.bytes == 250 and cache.evictions == 1
    assert cache.best("other", list(range(10)), longer_than=0) is None, "another identity never matches"
    cache.put(state("m", range(50), 400))  # larger than the budget: straight to the spill
    assert cache.bytes == 250 and len(spilled) == 2


def test_a_continuation_supersedes_its_prefix_and_a_prefix_is_not_saved_twice():
    cache = PromptCache(1000, min_tokens=4)
    cache.put(state("m", range(10), 100))
    cache.put(state("m", range(20), 100))
    assert len(cache) == 1 and cache.bytes == 100
    assert not cache.worth_saving("m", list(range(15)))
    assert cache.worth_saving("m", list(range(25))) and not cache.worth_saving("m", [1, 2])
    assert not PromptCache(0).worth_saving("m", list(range(100))), "0 turns the tier off"


def test_the_identity_changes_with_the_file_the_adapters_and_the_layout(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(100))
    before = model_identity(path)
    path.write_bytes(b"GGUF" + bytes(99) + b"x")  # the same name and size, another file
    model = model_identity(path)
    assert model != before
    keys = {state_identity(model, "f16", ()), state_identity(model, "q8_0", ()),
            state_identity(model, "f16", (("abc", 1.0),)), state_identity(model, "f16", (("abc", 0.5),))}
    assert len(keys) == 4


@pytest.mark.parametrize("value", ["12XB", -1, "50%"])
def test_a_bad_prompt_cache_ram_is_refused(value):
    from pydantic import ValidationError

    from nomoat.models_toml import ModelConfig
    with pytest.raises(ValidationError, match="prompt_cache_ram"):
        ModelConfig(name="m", path="m.gguf", prompt_cache_ram=value)
