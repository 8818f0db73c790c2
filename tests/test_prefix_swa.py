"""Prefix reuse on a sliding-window model (Gemma 3 270M, a 512-token window): prompts longer than the window
reuse their cached prefix with the answers of an uncached server, and `cached_tokens` counts only what was reused.

A sliding-window cache that keeps only the window (llama.cpp without swa_full) cannot continue a prefix whose
window it dropped: the engine then evaluates the prompt again (engine/placement.py, PrefixReuse.holds). Served
models keep the full cache (ModelSpec.swa_full), so the real server reuses any prefix; the in-process test runs
the window-only cache, where a shorter prompt after a longer one must be evaluated again, not continued.
"""

from __future__ import annotations

import httpx
import pytest
from support.model import gemma_model_path
from support.process import THREADS, ServerProcess
from support.real_engine import engine, run, text, tokens

from nomoat.engine.types import GenerationRequest, SamplingParams, TokenPrompt

WINDOW = 512  # gemma3.attention.sliding_window in the GGUF's header
# About 1,000 tokens: what two prompts share runs past the window, and past the 768 cells a window-only
# cache keeps at n_batch 128 (n_swa + n_ubatch, padded to 256), so it drops the first ~240 positions.
# Counting keeps greedy answers decided by wide margins; SHORT shares only the first ~120 tokens and its
# answer reads them: continued without their window it answers "the lamp is the lamp is".
WORDS = ("river", "stone", "lamp", "window", "garden", "silver", "morning", "harbour", "violin", "candle", "forest",
         "letter", "bridge", "orange", "ladder")
ITEMS = " ".join(f"Item {i}: the {WORDS[i % 15]} is next to the {WORDS[i * 7 % 15]}." for i in range(10))
COUNT = ITEMS + " " + ", ".join(str(n) for n in range(1, 200))
LONG_A = COUNT + ", "
LONG_B = COUNT + ". Now the days of the week: Monday, Tuesday,"
SHORT = ITEMS + " The lamp is"


def toml(name: str, extra: str = "") -> str:
    return (f'[[models]]\nname = "{name}"\npath = "{gemma_model_path()}"\nn_ctx = 1280\nn_batch = 128\n'
            f'parallel = 1\nn_threads = {THREADS}\nload = "startup"\n{extra}\n')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """One process, two copies of Gemma: `gemma` reuses prefixes, `gemma-cold` (the truth) never does."""
    config = 'default_model = "gemma"\n' + toml("gemma") + toml("gemma-cold", "prefix_cache = false")
    proc = ServerProcess(config, tmp_path_factory.mktemp("prefix-swa")).wait_ready()
    yield proc
    proc.close()


def truth(url: str, prompt: str, known: dict[str, str] = {}) -> str:  # noqa: B006 (a cache, on purpose)
    """The uncached server's answer, asked once per prompt (each is a whole prefill)."""
    if prompt not in known:
        known[prompt] = complete(url, "gemma-cold", prompt)[0]
    return known[prompt]


def complete(url: str, model: str, prompt: str) -> tuple[str, int, int]:
    """The greedy answer, the prompt's tokens and those reused."""
    r = httpx.post(url + "/v1/completions", timeout=120,
                   json={"model": model, "prompt": prompt, "temperature": 0, "max_tokens": 8})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    return r.json()["choices"][0]["text"], usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]


def shared(url: str, a: str, b: str) -> int:
    """How many prompt tokens `a` and `b` share from the start."""
    ta, tb = (httpx.post(url + "/v1/tokenize", json={"model": "gemma", "content": s, "add_special": True},
                         timeout=30).json()["tokens"] for s in (a, b))
    return next((i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y), min(len(ta), len(tb)))


def test_prompts_past_the_window_reuse_their_prefix(server) -> None:
    """A long prompt, another sharing all but its end, the first again, then a shorter one: each answers as the
    uncached model does, and each reuses exactly the tokens it shares with what the slot held."""
    url, previous = server.base_url, ""
    for prompt in (LONG_A, LONG_B, LONG_A, SHORT):
        answer, n_prompt, cached = complete(url, "gemma", prompt)
        assert answer == truth(url, prompt), prompt[-60:]
        assert cached == (min(shared(url, previous, prompt), n_prompt - 1) if previous else 0)
        previous = prompt
    assert shared(url, LONG_A, LONG_B) > WINDOW  # the reuse above ran past the window


def test_a_conversation_extends_its_cached_turns(server) -> None:
    """Each prompt extends the last with its answer: all of the last prompt is reused, and answers stay true."""
    url, prompt, n_before = server.base_url, LONG_A, 0
    for _ in range(2):
        answer, n_prompt, cached = complete(url, "gemma", prompt)
        assert answer == truth(url, prompt)
        assert n_before - 1 <= cached < n_prompt  # the boundary's last token may tokenize anew
        prompt, n_before = prompt + answer + ", ", n_prompt


def test_a_window_only_cache_evaluates_again_what_it_dropped() -> None:
    """Without swa_full the cache holds only the window: a shorter prompt after a longer one shares a prefix whose
    window is gone, so it is evaluated again (nothing counted as cached) and answers as it did cold; a prompt that
    extends the last one still reuses all of it."""
    with engine(path=gemma_model_path(), n_ctx=1280, n_batch=128, parallel=1, swa_full=False) as eng:
        long = eng.model.tokenize(LONG_B, add_bos=True)
        short = long[:100]

        def answer(prompt: list[int]) -> tuple[list[int], int]:
            events = run(eng, GenerationRequest(prompt=TokenPrompt(prompt), sampling=SamplingParams(temperature=0.0),
                                                max_tokens=8))[0]
            text(events)  # no error
            assert events[-1].usage is not None
            return tokens(events), events[-1].usage.cached_tokens

        cold = answer(short)
        assert cold[1] == 0
        generated, cached = answer(long)
        assert cached >= len(short)  # the slot held all of its tokens
        assert answer(long + generated)[1] >= len(long)
        assert answer(short) == cold  # the slot held ~900 tokens: the window before token 100 is gone
