"""What the speculation tests share (tests/test_speculative.py for n-gram drafts, tests/test_speculative_draft.py
for a draft model): running a request without and with speculation, and the adapter check."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from lora_factory import write_lora

from nomoat.engine.engine import Engine
from nomoat.engine.types import AdapterSet, AppliedAdapter, GenerationRequest, Speculation

from .real_engine import GREEDY_NO_EOS, request, run, text, tokens

OFF = Speculation("none")


def both(eng: Engine, speculation: Speculation, *requests: GenerationRequest) -> tuple[list, list, int, int]:
    """Run each request alone without, then with `speculation`: both event lists, drafted, accepted.

    Alone, so a prompt is always prefilled in one piece: run together, which step a request joins
    decides how llama.cpp splits its prefill, and that alone can flip a near-tie (docs/architecture.md).
    """
    plain = [run(eng, dataclasses.replace(r, speculative=OFF))[0] for r in requests]
    drafted, accepted = eng.stats.drafted_tokens, eng.stats.accepted_tokens
    spec = [run(eng, dataclasses.replace(r, speculative=speculation))[0] for r in requests]
    return plain, spec, eng.stats.drafted_tokens - drafted, eng.stats.accepted_tokens - accepted


def agreement(a: list[int], b: list[int]) -> int:
    return len(os.path.commonprefix([a, b]))


def check_adapter_answer(eng: Engine, speculation: Speculation, prompt: str, tmp_path: Path, max_tokens: int = 24) -> None:
    """Under an adapter, the answer with drafts is the adapter's answer without them."""
    path = write_lora(tmp_path / "a.gguf", seed=11, std=0.12)
    lora = eng.load_adapter("a", path, path, "hash-a").result(60)
    adapters = AdapterSet((AppliedAdapter("a", 1.0, "hash-a", handle=lora),))
    base = run(eng, request(prompt, max_tokens, sampling=GREEDY_NO_EOS, speculative=OFF))[0]
    plain, spec, _, accepted = both(eng, speculation, request(prompt, max_tokens, sampling=GREEDY_NO_EOS, adapters=adapters))
    assert agreement(tokens(plain[0]), tokens(base)) < 16  # the adapter changes the answer...
    assert agreement(tokens(spec[0]), tokens(plain[0])) >= 16, (text(plain[0]), text(spec[0]))  # ...drafts or not
    assert accepted > 0
