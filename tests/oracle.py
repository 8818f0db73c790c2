"""Reference outputs from llama-cpp-python's own `Llama` class, built with the server's context settings."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import llama_cpp
import llama_cpp.llama_cpp as llama_lib
from conftest import TEST_N_CTX, TEST_THREADS, model_path


@contextlib.contextmanager
def _no_repack() -> Iterator[None]:
    # Repacked weights crash llama.cpp's AMX path (docs/architecture.md); nomoat loads with them off too.
    original = llama_lib.llama_model_default_params

    def params() -> llama_lib.llama_model_params:
        p = original()
        p.use_extra_bufts = False
        return p

    llama_lib.llama_model_default_params = params
    try:
        yield
    finally:
        llama_lib.llama_model_default_params = original


def greedy_chat(messages: list[dict], *, lora_path: str | None = None, max_tokens: int = 32) -> str:
    """What `Llama(lora_path=...)` answers greedily, with nomoat's n_ctx and flash attention (auto = on)."""
    with _no_repack():
        llm = llama_cpp.Llama(
            str(model_path()), n_ctx=TEST_N_CTX, n_threads=TEST_THREADS, n_batch=512, flash_attn=True,
            lora_path=lora_path, verbose=False,
        )
    try:
        out = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=max_tokens)
        return out["choices"][0]["message"]["content"]
    finally:
        llm.close()
