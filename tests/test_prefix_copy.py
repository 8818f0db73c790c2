"""Prefix sharing across sequence slots: a prompt prefix another slot holds is copied, not prefilled."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from conftest import models_toml
from lora_factory import write_lora

# Far longer than the copy threshold (16 tokens per 4096 cells: 8 at n_ctx 2048).
SYSTEM = (
    "You are the help desk of a municipal library. Opening hours are nine to six on weekdays and ten to "
    "two on Saturdays; the library is closed on Sundays and public holidays. Members may borrow up to "
    "twelve items for three weeks and renew them twice online unless someone reserved them. Late fees "
    "are twenty cents a day per item. Answer in one short sentence."
)


def body(question: str, *, max_tokens: int, model: str = "smollm2-135m", stream: bool = False) -> dict:
    return {"model": model, "temperature": 0, "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}


@pytest.fixture(scope="module")
def servers(tmp_path_factory, uncached_server):
    from conftest import ServerProcess
    adapter = write_lora(tmp_path_factory.mktemp("copy-adapter") / "a.gguf", seed=21, std=0.12)
    extra = f'[[adapters]]\nname = "a"\npath = "{adapter}"\n'
    warm = ServerProcess(models_toml(extra=extra), tmp_path_factory.mktemp("copy")).wait_ready()
    yield warm, uncached_server
    warm.close()


def while_streaming(url: str, first: dict, then) -> object:
    """Run `then()` while `first` streams: its slot is busy, so only a copy can share its prefix."""
    started = threading.Event()
    done = []

    def stream() -> None:
        with httpx.stream("POST", url + "/v1/chat/completions", json=first, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    started.set()
        done.append(True)

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(60)
    try:
        return then()
    finally:
        t.join(120)
        assert done


def copies(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith('nomoat_prefix_cache_copies_total{model="smollm2-135m"}'):
            return float(line.split()[-1])
    raise AssertionError("no copy counter")


def test_a_running_sequences_prefix_is_copied_and_answers_as_a_cold_prompt_starts(servers):
    warm, cold = servers
    before = copies(warm.base_url)
    long_run = body("List every rule you know, in detail.", max_tokens=64, stream=True)
    long_run["logit_bias"] = {"2": -100}  # keeps streaming while the second request runs
    ask = body("How much is the late fee per day?", max_tokens=16)
    second = while_streaming(warm.base_url, long_run, lambda: httpx.post(
        warm.base_url + "/v1/chat/completions", json=ask, timeout=120).json())
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 60, second["usage"]  # the system prompt came from the streaming sequence's slot
    assert copies(warm.base_url) == before + 1
    alone = httpx.post(cold.base_url + "/v1/chat/completions", json=body("How much is the late fee per day?", max_tokens=16),
                       timeout=120).json()
    assert alone["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    # The copied KV is the source's, bit for bit, but the rest of the prompt is then evaluated in
    # another batch shape than a cold prompt (beside the streaming sequence's token), and llama.cpp
    # is not batch-invariant: the greedy answers agree at the start, not necessarily to the end.
    # KV from the wrong slot or position would change the answer from its first token.
    copied, cold_text = second["choices"][0]["message"]["content"], alone["choices"][0]["message"]["content"]
    assert copied[:10] == cold_text[:10], (copied, cold_text)


def test_no_copy_across_adapter_sets(servers):
    warm, _ = servers
    before = copies(warm.base_url)
    long_run = body("List every rule you know, in detail.", max_tokens=64, stream=True)
    long_run["logit_bias"] = {"2": -100}
    under_adapter = while_streaming(warm.base_url, long_run, lambda: httpx.post(
        warm.base_url + "/v1/chat/completions", json=body("Can I renew online?", max_tokens=4, model="a"),
        timeout=120).json())
    # Only what adapter requests computed may be reused: none of the base model's system prompt.
    assert under_adapter["usage"]["prompt_tokens_details"]["cached_tokens"] < 10
    assert copies(warm.base_url) == before
