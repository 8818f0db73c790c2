"""What a grammar's size costs the sampler per token: the measurement behind structured.py's limits.

Run: .venv/bin/python bench/bench_grammar_size.py [sizes ...]   (default: 64 128 256 512 1024)
No server: llama.cpp's grammar sampler on the embedded model's vocabulary (49k tokens). For
schemas of each shape and size it prints the grammar's bytes and alternatives (as Grammar
counts them) and the worst token: the grammar filtering the whole vocabulary and then
accepting the token, at each token of the JSON's start, where most alternatives are alive
(best of 3 runs per token). The engine pays that time on its one thread, so every other
sequence waits for it.
"""

from __future__ import annotations

import ctypes
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nomoat.config import embedded_model_path
from nomoat.core.structured import Grammar
from nomoat.engine.model import install_llama_logging


def shapes(n: int) -> dict[str, tuple[dict, str]]:
    """Schemas of n alternatives each (but the last), and the JSON text the tokens come from."""
    return {
        "enum of strings": ({"enum": [f"value number {i}" for i in range(n)]}, '"value number 1'),
        "optional properties": ({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(n)}},
                                '{"p1": "a'),
        "anyOf objects": ({"anyOf": [{"type": "object", "properties": {f"k{i}": {"type": "integer"}},
                                      "required": [f"k{i}"]} for i in range(n)]}, '{"k1": 1'),
        "required properties": ({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(n)},
                                 "required": [f"p{i}" for i in range(n)]}, '{"p0": "a'),
    }


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [64, 128, 256, 512, 1024]
    install_llama_logging()  # llama.cpp's log into Python's, quiet below warnings
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(embedded_model_path()).encode(), params)
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    cand = (llama_cpp.llama_token_data * n_vocab)()
    cand_np = np.ctypeslib.as_array(cand)

    def tokens(text: str) -> list[int]:
        out = (llama_cpp.llama_token * 64)()
        n = llama_cpp.llama_tokenize(vocab, text.encode(), len(text.encode()), out, 64, False, False)
        return list(out[:n])

    def worst_token_ms(gbnf: str, start: str) -> float:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        worst = 0.0
        for token in tokens(start):
            best = float("inf")
            for _ in range(3):
                cand_np["id"], cand_np["logit"], cand_np["p"] = np.arange(n_vocab, dtype=np.int32), 0.0, 0.0
                arr = llama_cpp.llama_token_data_array(cand, n_vocab, -1, False)
                t = time.perf_counter()
                llama_cpp.llama_sampler_apply(sampler, ctypes.byref(arr))
                best = min(best, time.perf_counter() - t)
            t = time.perf_counter()
            llama_cpp.llama_sampler_accept(sampler, token)
            worst = max(worst, best + time.perf_counter() - t)
        llama_cpp.llama_sampler_free(sampler)
        return worst * 1000

    print("| shape | n | GBNF bytes | alternatives | worst token (ms) |")
    print("|---|---|---|---|---|")
    for n in sizes:
        for name, (schema, start) in shapes(n).items():
            g = Grammar("bench", max_bytes=10**9, max_alternatives=10**9)
            gbnf = g.text(g.schema_rule(schema, doc_id="s", path=""))
            print(f"| {name} | {n} | {g.size_bytes} | {g.alternatives} | {worst_token_ms(gbnf, start):.1f} |", flush=True)


if __name__ == "__main__":
    main()
